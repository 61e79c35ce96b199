"""ReLU activation: z = ReLU(pre), every positive pre-activation; sparsity from an L1 penalty."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from dualsae.core.codes import SparseCodes
from dualsae.core.losses import LossTerm, l1_penalty
from dualsae.models.activations.base import Activation, SAEOutput, SAEView


@dataclass(frozen=True)
class ReLU(Activation):
    """l1_coef: coefficient of ``sum_j |z_j|`` (decoder columns are unit norm)."""

    l1_coef: float = 1e-3
    name: ClassVar[str] = "relu"

    def forward(self, sae: SAEView, x: torch.Tensor) -> SAEOutput:
        """Dense: x: [batch, d] -> codes [batch, width], recon [batch, d], pre_acts [batch, m]."""
        with torch.no_grad():
            pre_all = sae.pre_activations(x)
        if sae.decoder_dots is not None:
            sae.decoder_dots.valid = False  # a dense decode: the projection measures its dots itself
        dense = F.relu(sae.pre_activations(x))
        codes = SparseCodes.from_dense(dense)
        return SAEOutput(codes, dense @ sae.W_dec + sae.b_dec, pre_all)

    def encode(self, sae: SAEView, pre: torch.Tensor) -> SparseCodes:
        return SparseCodes.from_dense(pre.clamp_min(0))

    def auxiliary_terms(self, sae: SAEView, x: torch.Tensor, out: SAEOutput, modalities: int) -> dict[str, LossTerm]:
        """``l1_coef * sum_{mod} ||z||_1`` per pair (the penalty averages over the rows)."""
        return {"l1": LossTerm(l1_penalty(out.codes), self.l1_coef * modalities)}
