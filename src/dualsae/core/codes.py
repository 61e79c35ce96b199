"""Sparse latent codes: the common currency between the SAE, alignment and the metrics.

A TopK SAE activates at most ``k`` of its ``m`` latents per input, so a batch of codes is held as
two ``[batch, k]`` tensors (values and latent indices) rather than a dense ``[batch, m]`` matrix.

Convention: an entry whose value is 0 is *inactive* (padding, or a TopK pick whose pre-activation
was negative and was zeroed by the ReLU). Every consumer must therefore give zero-valued entries no
weight; sums, sums of squares and products do this automatically, counts must test ``value > 0``.
Indices of padding entries are valid latent ids (usually repeated), never out of range.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class SparseCodes(NamedTuple):
    """A batch of sparse latent codes.

    values:  [batch, k] float, activation of each selected latent (0 means inactive)
    indices: [batch, k] int64, latent id in [0, m)
    m:       number of latents of the SAE that produced them
    """

    values: torch.Tensor
    indices: torch.Tensor
    m: int

    @property
    def batch(self) -> int:
        return int(self.values.shape[0])

    def to_dense(self) -> torch.Tensor:
        """Dense codes ``[batch, m]`` (repeated indices are summed, padding adds 0)."""
        out = torch.zeros(self.values.shape[0], self.m, dtype=self.values.dtype, device=self.values.device)
        return out.scatter_add_(1, self.indices, self.values)

    def permute(self, new_index_of: torch.Tensor) -> "SparseCodes":
        """Relabel latents: latent ``j`` becomes latent ``new_index_of[j]`` (a permutation of [0, m))."""
        return SparseCodes(self.values, new_index_of.to(self.indices.device)[self.indices], self.m)

    def detach(self) -> "SparseCodes":
        return SparseCodes(self.values.detach(), self.indices, self.m)

    def to(self, device: torch.device | str) -> "SparseCodes":
        return SparseCodes(self.values.to(device), self.indices.to(device), self.m)

    @staticmethod
    def from_dense(dense: torch.Tensor) -> "SparseCodes":
        """Exact sparse form of a dense non-negative ``[batch, m]`` code matrix.

        The width is the largest number of non-zeros in any row (at least 1), so nothing is lost.
        """
        nnz = int((dense != 0).sum(dim=1).max().item()) if dense.numel() else 0
        width = max(nnz, 1)
        vals, idx = dense.topk(width, dim=1)
        return SparseCodes(vals, idx, int(dense.shape[1]))

    @staticmethod
    def cat(parts: list["SparseCodes"]) -> "SparseCodes":
        """Concatenate along the batch, padding narrower parts with inactive entries."""
        if not parts:
            raise ValueError("SparseCodes.cat needs at least one part")
        width = max(p.values.shape[1] for p in parts)
        vals, idxs = [], []
        for p in parts:
            pad = width - p.values.shape[1]
            vals.append(torch.nn.functional.pad(p.values, (0, pad)))
            idxs.append(torch.nn.functional.pad(p.indices, (0, pad)))
        return SparseCodes(torch.cat(vals), torch.cat(idxs), parts[0].m)
