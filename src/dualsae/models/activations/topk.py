"""TopK activation (Gao et al. 2024; the paper's footnote 1): z = ReLU(TopK_k(pre)), k latents per row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from dualsae.core.block_topk import topk, topk_indices
from dualsae.core.codes import SparseCodes
from dualsae.core.errors import ConfigError
from dualsae.core.losses import LossTerm
from dualsae.core.screened_topk import Selection, certified_topk
from dualsae.core.sparse_ops import Pattern
from dualsae.models.activations.base import Activation, SAEOutput, SAEView, aux_k_terms


def check_k(k: int, m: int | None) -> None:
    """1 <= k < m (the SAE config's message); nothing to check before m is known."""
    if m is not None and not (1 <= k < m):
        raise ConfigError(f"SAE config field 'k' must satisfy 1 <= k < m (m={m}), found k={k}")


def topk_codes(pre: torch.Tensor, k: int, m: int) -> SparseCodes:
    """The k largest pre-activations of each row, ReLU'd. pre: [batch, m] -> SparseCodes [batch, k]."""
    vals, idx = topk(pre, k)
    return SparseCodes(vals.clamp_min(0), idx, m)


@dataclass(frozen=True)
class TopK(Activation):
    """k: active latents per input."""

    k: int = 32
    name: ClassVar[str] = "topk"

    def validate(self, m: int | None) -> None:
        check_k(self.k, m)

    def forward(self, sae: SAEView, x: torch.Tensor) -> SAEOutput:
        """The dense selection product runs without autograd; the k picked pre-activations are
        recomputed with autograd from k gathered encoder rows; decoding is an ``embedding_bag``.
        x: [batch, d] -> codes [batch, k], recon [batch, d], pre_acts [batch, m]."""
        with torch.no_grad():
            selection = sae.selection_screen(x)
        if selection is None:
            with torch.no_grad():
                pre_all = sae.selection_pre_activations(x)
            idx = topk_indices(pre_all, self.k).sort(dim=1).values
            pattern = Pattern(idx, sae.m)
            vals = F.relu(sae.gather_pre(x, idx, pre_all, pattern))
        else:  # wide SAE on a CPU: the same selection from the certified bfloat16 screen
            with torch.no_grad():
                idx, exact = certified_topk(selection.screen, self.k, selection.exact, selection.dense)
            pre_all = selection.screen.approx
            pattern = Pattern(idx, sae.m)
            vals = F.relu(sae.gather_pre_exact(x, idx, exact, pattern))
        codes = SparseCodes(vals, idx, sae.m)
        return SAEOutput(codes, sae.decode_sparse(vals, idx, pattern) + sae.b_dec, pre_all, selection)

    def encode(self, sae: SAEView, pre: torch.Tensor) -> SparseCodes:
        return topk_codes(pre, self.k, sae.m)

    def encode_screened(self, sae: SAEView, selection: Selection) -> SparseCodes:
        """:func:`topk_codes` of the float32 product, from the screen: the same k latents per row, their
        float32 values largest first as ``topk`` returns them. The candidates' values are accumulated in
        another order than the dense product's, so they agree within float32 rounding, and a row whose k-th
        and (k+1)-th values tie within that rounding may take the other one (9 of 131,072 rows of a trained
        65,536-latent pair: benchmarks/encode_screen.py counts them)."""
        idx, exact = certified_topk(selection.screen, self.k, selection.exact, selection.dense)
        vals, order = exact.sort(dim=1, descending=True)
        return SparseCodes(vals.clamp_min(0), idx.gather(1, order), sae.m)

    def auxiliary_terms(self, sae: SAEView, x: torch.Tensor, out: SAEOutput, modalities: int) -> dict[str, LossTerm]:
        return aux_k_terms(sae, x, out, modalities)
