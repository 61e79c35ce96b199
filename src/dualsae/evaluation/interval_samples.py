"""Rows from each quantile bin of a latent's nonzero activations (as Neuronpedia's "activation
intervals"), so a reader sees the middle and the low end of a latent's range, not only its top rows.

For latent j with c active rows, sort its nonzero activations increasingly and cut the ranks into
``bins`` equal-count bins (bin b holds ranks [floor(b c / bins), floor((b + 1) c / bins))): the bins
of the activation's empirical quantiles, q_{b/bins} to q_{(b+1)/bins}. From each bin ``per_bin`` rows
at evenly spaced ranks are shown (the first rank of each of ``per_bin`` equal sub-bins: deterministic,
spread over the bin). A latent active on fewer than ``bins`` rows gets fewer, non-empty bins.

Computed from the sparse codes' active entries (``[E]`` = N k values), one sort for all latents:
no [N, m] matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dualsae.core.codes import SparseCodes
from dualsae.evaluation.top_rows import Entries, active_entries


@dataclass
class IntervalSamples:
    """Flat arrays over all latents (what :meth:`of` slices): latent j's bins are ``bin_start[j]:bin_start[j + 1]``
    [m + 1]; bin b has its smallest and largest activation ``low[b]`` / ``high[b]`` and its chosen rows
    ``rows[pick_start[b]:pick_start[b + 1]]`` (positions of the codes' rows) with ``values`` (increasing)."""

    bin_start: np.ndarray
    low: np.ndarray
    high: np.ndarray
    pick_start: np.ndarray
    rows: np.ndarray
    values: np.ndarray

    def of(self, j: int) -> list[tuple[float, float, np.ndarray, np.ndarray]]:
        """Latent j's bins, lowest first: ``(low, high, rows, values)``."""
        out = []
        for b in range(int(self.bin_start[j]), int(self.bin_start[j + 1])):
            sl = slice(int(self.pick_start[b]), int(self.pick_start[b + 1]))
            out.append((float(self.low[b]), float(self.high[b]), self.rows[sl], self.values[sl]))
        return out


def interval_samples(codes: SparseCodes | Entries, m: int | None = None, bins: int = 5, per_bin: int = 3) -> IntervalSamples:
    """Quantile-bin samples of every latent of ``codes`` [N, width] (or its active entries and ``m``)."""
    entries = codes if isinstance(codes, Entries) else active_entries(codes)
    m = codes.m if isinstance(codes, SparseCodes) else int(m)
    order = np.lexsort((entries.row, entries.value, entries.slot))  # by latent, then increasing activation
    slot, row, val = entries.slot[order], entries.row[order], entries.value[order]
    count = np.bincount(slot, minlength=m)
    first = np.concatenate([[0], np.cumsum(count)])
    rank = np.arange(len(slot)) - first[slot]
    c = count[slot]
    nb = np.minimum(bins, c)  # fewer rows than bins: one bin per row
    b = rank * nb // c  # the equal-count bin of each rank
    lo = (b * c + nb - 1) // nb  # first rank of bin b = ceil(b c / nb)
    size = ((b + 1) * c + nb - 1) // nb - lo
    r_in = rank - lo
    s = np.minimum(per_bin, size)
    pick = ((r_in * s // size) != ((r_in - 1) * s // size)) | (r_in == 0)
    # Entries are sorted by (latent, bin): each bin starts where r_in == 0 and ends where r_in == size - 1.
    starts, ends = np.flatnonzero(r_in == 0), np.flatnonzero(r_in == size - 1)
    bin_id = np.cumsum(r_in == 0) - 1
    chosen = np.flatnonzero(pick)
    n_bins = len(starts)
    return IntervalSamples(
        bin_start=np.concatenate([[0], np.cumsum(np.bincount(slot[starts], minlength=m))]),
        low=val[starts], high=val[ends],
        pick_start=np.concatenate([[0], np.cumsum(np.bincount(bin_id[chosen], minlength=n_bins))]),
        rows=row[chosen], values=val[chosen],
    )


__all__ = ["IntervalSamples", "interval_samples"]
