"""JumpReLU activation (Rajamanoharan et al. 2024): z_j = ReLU(pre_j) * [pre_j > theta_j], one threshold
theta_j per latent (the SAE's ``threshold`` buffer, shape [m] for this activation).

This is the inference form SAELens (``jumprelu``) and dictionary_learning (``JumpReluAutoEncoder``)
write; it is here so SAEs trained there are encoded exactly (:mod:`dualsae.models.formats`). Training
one in dualsae keeps theta fixed (a buffer, 0 for a new SAE, so a fresh JumpReLU SAE trains as ReLU
with the L1 penalty): learning theta needs the straight-through estimator with a kernel bandwidth of
that paper, which dualsae does not implement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dualsae.core.codes import SparseCodes
from dualsae.core.losses import LossTerm, l1_penalty
from dualsae.models.activations.base import Activation, SAEOutput, SAEView


def jump(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """ReLU(pre) * [pre > theta]. pre: [batch, m]; threshold: [m] -> [batch, m] (dense)."""
    return pre.clamp_min(0) * (pre > threshold)


@dataclass(frozen=True)
class JumpReLU(Activation):
    """l1_coef: coefficient of ``sum_j |z_j|`` when a JumpReLU SAE is trained in dualsae (theta fixed)."""

    l1_coef: float = 1e-3
    name: ClassVar[str] = "jumprelu"
    #: The SAE's ``threshold`` buffer has one entry per latent ([m]) instead of BatchTopK's scalar.
    per_latent_threshold: ClassVar[bool] = True

    def forward(self, sae: SAEView, x: torch.Tensor) -> SAEOutput:
        """Dense: x: [batch, d] -> codes [batch, width], recon [batch, d], pre_acts [batch, m]; the
        gradient flows through the latents above their threshold (theta itself is not trained)."""
        with torch.no_grad():
            pre_all = sae.pre_activations(x)
        if sae.decoder_dots is not None:
            sae.decoder_dots.valid = False  # a dense decode: the projection measures its dots itself
        dense = jump(sae.pre_activations(x), sae.threshold)
        codes = SparseCodes.from_dense(dense)
        return SAEOutput(codes, dense @ sae.W_dec + sae.b_dec, pre_all)

    def encode(self, sae: SAEView, pre: torch.Tensor) -> SparseCodes:
        return SparseCodes.from_dense(jump(pre, sae.threshold))

    def auxiliary_terms(self, sae: SAEView, x: torch.Tensor, out: SAEOutput, modalities: int) -> dict[str, LossTerm]:
        """``l1_coef * sum_{mod} ||z||_1`` per pair, as for ReLU."""
        return {"l1": LossTerm(l1_penalty(out.codes), self.l1_coef * modalities)}
