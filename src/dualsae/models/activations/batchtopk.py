"""BatchTopK activation (Bussmann et al. 2024): the k * batch largest pre-activations of the whole
batch, so the active count varies per row (k on average); at inference, pre-activations above a
threshold estimated during training (an EMA of the smallest selected value)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from dualsae.core.codes import SparseCodes
from dualsae.core.distributed import all_min, batch_topk, current
from dualsae.core.losses import LossTerm
from dualsae.core.screened_topk import certified_batch_topk
from dualsae.core.sparse_ops import Pattern, sort_rows
from dualsae.models.activations.base import Activation, SAEOutput, SAEView, aux_k_terms
from dualsae.models.activations.topk import check_k, topk_codes


def flat_topk_to_padded(flat_idx: torch.Tensor, batch: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn flat indices into a ``[batch, m]`` matrix into padded per-row index lists.

    Returns ``(indices [batch, width], mask [batch, width])``; ``width`` is the largest row count.
    Padding entries point at latent 0 and have ``mask`` False.
    """
    flat_idx, _ = flat_idx.sort()
    rows = flat_idx // m
    cols = flat_idx % m
    counts = torch.bincount(rows, minlength=batch)
    width = max(int(counts.max().item()) if counts.numel() else 0, 1)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(flat_idx.numel(), device=flat_idx.device) - starts[rows]
    idx = torch.zeros(batch, width, dtype=torch.long, device=flat_idx.device)
    mask = torch.zeros(batch, width, dtype=torch.bool, device=flat_idx.device)
    idx[rows, pos] = cols
    mask[rows, pos] = True
    return idx, mask


@dataclass(frozen=True)
class BatchTopK(Activation):
    """k: mean active latents per input (k * batch over the batch); threshold_momentum: EMA
    momentum of the inference threshold (the SAE's ``threshold`` buffer, negative until trained)."""

    k: int = 32
    threshold_momentum: float = 0.99
    name: ClassVar[str] = "batchtopk"

    def validate(self, m: int | None) -> None:
        check_k(self.k, m)

    def forward(self, sae: SAEView, x: torch.Tensor) -> SAEOutput:
        """x: [batch, d] -> codes [batch, width] (padding masked to 0), recon [batch, d], pre_acts [batch, m].
        In training mode the threshold's EMA takes this batch's smallest selected value."""
        batch = x.shape[0]
        flat = None
        with torch.no_grad():
            # Under torchrun the selection is over the global batch: the screen (one process) is not used.
            selection = None if current() is not None else sae.selection_screen(x)
            if selection is not None:  # wide SAE on a CPU: the same selection from the certified screen
                flat = certified_batch_topk(selection.screen, self.k * batch, selection.exact, selection.dense)
            if flat is None:
                selection = None
                pre_all = sae.selection_pre_activations(x)
                # Under torchrun the k * batch selection is over the global batch (dualsae.core.distributed).
                flat = batch_topk(F.relu(pre_all).flatten(), self.k * batch)
            else:
                pre_all = selection.screen.approx
        idx, mask = sort_rows(*flat_topk_to_padded(flat, batch, sae.m))
        pattern = Pattern(idx, sae.m)
        if selection is None:
            vals = F.relu(sae.gather_pre(x, idx, pre_all, pattern)) * mask
        else:
            with torch.no_grad():
                exact = selection.exact(None, idx)
            vals = F.relu(sae.gather_pre_exact(x, idx, exact, pattern)) * mask
        if sae.training:
            self.update_threshold(sae, vals.detach(), mask)
        codes = SparseCodes(vals, idx, sae.m)
        return SAEOutput(codes, sae.decode_sparse(vals, idx, pattern) + sae.b_dec, pre_all, selection)

    @torch.no_grad()
    def update_threshold(self, sae: SAEView, vals: torch.Tensor, mask: torch.Tensor) -> None:
        """threshold <- mu * threshold + (1 - mu) * min(selected positive values). vals, mask: [batch, width]."""
        positive = vals[mask & (vals > 0)]
        # The minimum over the global batch (every rank's share under torchrun); +inf: none fired.
        batch_min = all_min(positive.min() if positive.numel() else vals.new_tensor(float("inf")))
        if not torch.isfinite(batch_min):
            return
        if sae.threshold.item() < 0:
            sae.threshold.copy_(batch_min)
        else:
            mu = self.threshold_momentum
            sae.threshold.mul_(mu).add_((1 - mu) * batch_min)

    def encode(self, sae: SAEView, pre: torch.Tensor) -> SparseCodes:
        """Pre-activations above the threshold; before any training step (threshold < 0) per-row
        TopK, so an untrained model still works."""
        thr = float(sae.threshold.item())
        if thr < 0:
            return topk_codes(pre, self.k, sae.m)
        return SparseCodes.from_dense(pre * (pre > thr))

    def auxiliary_terms(self, sae: SAEView, x: torch.Tensor, out: SAEOutput, modalities: int) -> dict[str, LossTerm]:
        return aux_k_terms(sae, x, out, modalities)
