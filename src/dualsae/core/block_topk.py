"""Exact per-row top-k of a TopK SAE's pre-activations, faster than ``torch.topk`` on a CPU.

``torch.topk`` on a CPU visits every one of a row's m entries in a scalar loop (about 1.6 ns an
entry a thread here, 1.7 ms for [256, 8192]), which in a training step at (d 256, m 8,192, k 16,
batch 256) costs half as much as the selection product itself. This module reaches the same
answer through two small top-k's:

1. split each row's m columns into nb = m / s blocks (block j holds columns j, j + nb, j + 2 nb, ...,
   so the block maxima are one vectorised ``amax`` over a [batch, s, nb] view) and take the k blocks
   with the largest maxima;
2. take the k largest of those k blocks' k * s entries.

Why it is exact: let v be a row's k-th largest value. If at least k blocks have a maximum >= v, the
chosen blocks all have one; they hold every entry > v (each lies in a block whose maximum is > v, and
fewer than k blocks have that) and, beside those, at least one entry equal to v per chosen block
whose maximum is v, so their k largest values are the row's. If fewer than k blocks have a maximum
>= v, all of them are chosen and hold every entry >= v. So the k values are always the row's k
largest; where values tie, the index chosen among equal values may differ from ``torch.topk``'s
(which leaves that order unspecified too). NaN sorts above every number in both.

It pays when rows are many and long (measured in ``benchmarks/topk.py``: 1.5-1.9x at the training steps'
and AuxK's shapes); elsewhere, and on GPUs (whose ``topk`` is a radix select), ``torch.topk`` runs.
"""

from __future__ import annotations

import torch

# Below these the extra kernels' fixed costs outweigh the saving (benchmarks/topk.py, 2 CPU threads).
MIN_ROWS = 128
MIN_WIDTH = 2048
MIN_ENTRIES = 1 << 20


def block_size(batch: int, m: int, k: int, device: torch.device) -> int:
    """Columns per block for :func:`topk_indices`, or 0 where ``torch.topk`` itself is faster."""
    if device.type != "cpu" or batch < MIN_ROWS or m < MIN_WIDTH or batch * m < MIN_ENTRIES:
        return 0
    # Fewer, longer blocks when k is a larger share of m: stage 2 reads k * s entries per row.
    s = 8 if m // k <= 128 else 16
    return s if m % s == 0 and m // s >= 2 * k else 0


def topk_indices(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of the k largest entries of each row, in no particular order.

    pre: [batch, m] -> [batch, k] (int64). Equals ``pre.topk(k, dim=1).indices`` as a set per row,
    up to the choice among tied values.
    """
    batch, m = pre.shape
    s = block_size(batch, m, k, pre.device)
    if s == 0:
        return pre.topk(k, dim=1, sorted=False).indices
    nb = m // s
    blocks = pre.contiguous().view(batch, s, nb)  # blocks[b, i, j] = pre[b, i * nb + j]: block j
    best = blocks.amax(dim=1).topk(k, dim=1, sorted=False).indices  # [batch, k] block numbers
    cand = blocks.gather(2, best.unsqueeze(1).expand(batch, s, k)).view(batch, s * k)
    pos = cand.topk(k, dim=1, sorted=False).indices  # [batch, k] into the [s, k] candidates
    return (pos // k) * nb + best.gather(1, pos % k)


def topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest entries of each row, largest first, as ``torch.topk``.

    pre: [batch, m] -> two [batch, k] tensors.
    """
    if block_size(*pre.shape, k, pre.device) == 0:
        return pre.topk(k, dim=1)
    idx = topk_indices(pre, k)
    vals, order = pre.gather(1, idx).sort(dim=1, descending=True)
    return vals, idx.gather(1, order)


__all__ = ["topk", "topk_indices", "block_size"]
