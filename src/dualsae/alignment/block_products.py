"""The co-firing sums of one block of latents against every latent of the other modality, as one sparse
matrix product of codes already held (:mod:`dualsae.alignment.pruning`'s tiles).

The codes of all N paired rows are held as two scipy CSR matrices: ``T = Z_by^T`` ([m_by, N], the side
whose latents are blocked) and ``O = Z_other`` ([N, m_other]). A block of latents [lo, hi) is then a row
slice of T, and its cross sums of eq. 5 (``S_ij = sum_rows z_i z_j``) and co-firing counts are two sparse
products, ``T[lo:hi] O`` and ``1[T[lo:hi] != 0] 1[O != 0]`` (scipy's SMMP: O(products), no pass over the
rows and no sort). The two run in two threads (scipy releases the GIL).

Summation order: SMMP adds a pair's products in ascending row order, from either side's block (the
product of two floats is the same whichever is on the left), so a pair's S_ij is bitwise the same from
an image block and from a text block. Memory: 12 bytes per active code for each matrix plus 4 for its
indicator (~1 GB at 10^6 rows, k = 32 per side), and a block's product ~20 bytes per distinct pair.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import csr_matrix

from dualsae.alignment.cofiring import coalesce_codes, csr_by_row, indicator, matched_sums
from dualsae.core.codes import SparseCodes

# Rows of codes coalesced at a time while the matrices are built.
BUILD_ROWS = 65_536


@dataclass
class BlockProduct:
    """The distinct co-firing pairs of a block of latents [lo, hi), in CSR order (rows: the block's latents,
    columns within a row in no order): indptr [hi - lo + 1], cols [U] int32 latents of the other side,
    sums [U] float64 S_ij, counts [U] int32 rows on which both fire."""

    indptr: np.ndarray
    cols: np.ndarray
    sums: np.ndarray
    counts: np.ndarray

    def block_rows(self) -> np.ndarray:
        """[U] int64 row of each pair within the block (0 .. hi - lo - 1)."""
        return np.repeat(np.arange(len(self.indptr) - 1, dtype=np.int64), np.diff(self.indptr))


def codes_csr(codes: SparseCodes) -> csr_matrix:
    """Codes [N, k] as a CSR [N, m] float64 of their active entries (repeated indices in a row summed)."""
    parts = [coalesce_codes(SparseCodes(codes.values[s : s + BUILD_ROWS], codes.indices[s : s + BUILD_ROWS], codes.m))
             for s in range(0, codes.batch, BUILD_ROWS)]
    v = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, codes.indices.shape[1], dtype=torch.float64)
    i = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, codes.indices.shape[1], dtype=torch.long)
    return csr_by_row(v, i, v != 0, codes.m)


def latent_rows(z: csr_matrix) -> csr_matrix:
    """Z^T of a codes CSR [N, m]: [m, N], each latent's firing rows ascending (the product's summation order)."""
    return z.T.tocsr()


class BlockProducts:
    """Block products of one side's latents against the other's (module docstring). t: [m_by, N]
    (:func:`latent_rows` of the blocked side), o: [N, m_other] (:func:`codes_csr` of the other), same rows."""

    def __init__(self, t: csr_matrix, o: csr_matrix) -> None:
        self.t, self.o = t, o
        self.it, self.io = indicator(t), indicator(o)

    def product(self, lo: int, hi: int) -> BlockProduct:
        """The co-firing pairs of ``by``'s latents [lo, hi) with every latent of ``other``."""
        a, ia = self.t[lo:hi], self.it[lo:hi]
        with ThreadPoolExecutor(2) as pool:
            fs, fc = pool.submit(lambda: a @ self.o), pool.submit(lambda: ia @ self.io)
            sums, counts = fs.result(), fc.result()
        return BlockProduct(counts.indptr.astype(np.int64), counts.indices, matched_sums(sums, counts), counts.data)


def pair_sums(a: csr_matrix, b: csr_matrix, qa: np.ndarray, qb: np.ndarray, chunk: int = 1 << 23) -> tuple[np.ndarray, np.ndarray]:
    """S and co-firing counts of arbitrary pairs (qa[q], qb[q]) [Q]: a [m_a, N], b [m_b, N] (:func:`latent_rows`).

    Each pair intersects its two latents' sorted firing rows (all pairs of a chunk at once: keys
    ``pair * N + row``, one binary search of one side's keys in the other's), so a pair costs its latents'
    firing rows, not a pass over the codes. The products are summed in ascending row order, as
    :class:`BlockProducts` sums them. Returns (sums [Q] float64, counts [Q] int64)."""
    qa, qb = np.asarray(qa, dtype=np.int64), np.asarray(qb, dtype=np.int64)
    n = a.shape[1]
    la, lb = np.diff(a.indptr)[qa], np.diff(b.indptr)[qb]
    sums, counts = np.zeros(len(qa)), np.zeros(len(qa), dtype=np.int64)
    cum = np.cumsum(la + lb)
    s = 0
    while s < len(qa):
        e = max(s + 1, int(np.searchsorted(cum, (cum[s - 1] if s else 0) + chunk, side="right")))
        ka, va = _pair_entries(a, qa[s:e], la[s:e], n)
        kb, vb = _pair_entries(b, qb[s:e], lb[s:e], n)
        if len(ka) and len(kb):
            pos = np.minimum(np.searchsorted(kb, ka), len(kb) - 1)
            hit = kb[pos] == ka
            pair = ka[hit] // n
            sums[s:e] = np.bincount(pair, weights=va[hit] * vb[pos[hit]], minlength=e - s)
            counts[s:e] = np.bincount(pair, minlength=e - s)
        s = e
    return sums, counts


def _pair_entries(z: csr_matrix, q: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys ``pair * n + row`` (sorted) and values of the firing rows of latents q [P] (pair p: latent q[p])."""
    total = int(lengths.sum())
    offsets = np.repeat(z.indptr[q] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    at = offsets + np.arange(total)
    return np.repeat(np.arange(len(q), dtype=np.int64), lengths) * n + z.indices[at], z.data[at]


__all__ = ["BlockProduct", "BlockProducts", "codes_csr", "latent_rows", "pair_sums"]
