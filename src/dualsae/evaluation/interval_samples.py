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
    """Per latent j: ``bins[j]`` = a list of ``(low, high, rows, values)``, lowest bin first: the bin's
    smallest and largest activation, and the chosen rows (positions of the codes' rows) with their
    activations, increasing."""

    bins: list[list[tuple[float, float, np.ndarray, np.ndarray]]]


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
    pick = (r_in * s // size) != ((r_in - 1) * s // size)
    pick |= r_in == 0
    out: list[list[tuple[float, float, np.ndarray, np.ndarray]]] = [[] for _ in range(m)]
    # Bin edges: the values at each bin's first and last rank.
    edge_lo = np.flatnonzero(r_in == 0)
    edge_hi = np.flatnonzero(r_in == size - 1)
    chosen = np.flatnonzero(pick)
    ck = slot[chosen] * (bins + 1) + b[chosen]
    for a, z in zip(edge_lo.tolist(), edge_hi.tolist()):
        j, bb = int(slot[a]), int(b[a])
        key = j * (bins + 1) + bb
        sel = chosen[np.searchsorted(ck, key):np.searchsorted(ck, key, side="right")]
        out[j].append((float(val[a]), float(val[z]), row[sel], val[sel]))
    return IntervalSamples(out)


__all__ = ["IntervalSamples", "interval_samples"]
