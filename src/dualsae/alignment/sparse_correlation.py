"""The coactivation correlation C of paper eq. 5 held sparsely: exact values on co-firing pairs plus a
rank-one closed form everywhere else.

For a pair (i, j) that never fires on a common row ``S_ij = 0``, so eq. 5 gives exactly
``c_ij = -mu_i mu_j / (sd_i sd_j) = -a_i b_j`` with ``a = mu / sd`` (image) and ``b = mu / sd``
(text). :class:`SparseCorrelation` keeps the live latents, ``a`` and ``b``, and the co-firing pairs
(live positions ``rows``, ``cols`` with their exact ``values`` and co-firing ``counts``): C of any
size is O(n_I + n_T + P) memory, and any entry, row block or (at small sizes) the dense block can be
rebuilt from it, equal to :meth:`dualsae.alignment.correlation.CoactivationStats.correlation` up to the
last bit of float64 rounding (the rank-one term is subtracted in another order).

``correlation.safetensors`` of format ``dualsae.correlation/2`` (:func:`save_sparse_correlation`) stores
exactly this, with the text latents in the shared index space (after eq. 7) beside their original
indices; :func:`dualsae.alignment.correlation.load_correlation` still reads ``/1`` (dense) files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualsae.core.errors import CheckpointError
from dualsae.core.sorting import argsort_stable
from dualsae.files.atomic import save_tensors

SPARSE_CORRELATION_FORMAT = "dualsae.correlation/2"
# The most entries densify() builds (float64: 2 GiB); larger C stays sparse.
DENSE_ENTRIES_LIMIT = 1 << 28


@dataclass
class SparseCorrelation:
    """The live block of C (eq. 5) as co-firing entries + rank-one remainder.

    live_image: [n_I] int64 image latents (row a <-> live_image[a]); live_text: [n_T] (column b);
    a: [n_I] float64 mu_i / sd_i; b: [n_T] float64 mu_j / sd_j (c = -a_i b_j off the co-firing pairs);
    rows, cols: [P] int64 live positions of the co-firing pairs, sorted by ``rows * n_T + cols``;
    values: [P] float64 their exact c; counts: [P] int32 rows on which both latents fire.
    row_bound: [n_I], col_bound: [n_T] float64, or None: a *pruned* C (:mod:`dualsae.alignment.pruning`)
    keeps only some co-firing pairs; every co-firing pair it dropped has c_ij <= min(row_bound_i,
    col_bound_j) (-inf where a row / column dropped none). An unlisted pair of a pruned C is then either
    rank-one (c = -a_i b_j) or below that bound: :meth:`lookup` is exact on listed pairs only.
    """

    live_image: np.ndarray
    live_text: np.ndarray
    a: np.ndarray
    b: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    counts: np.ndarray
    row_bound: np.ndarray | None = None
    col_bound: np.ndarray | None = None

    @property
    def pruned(self) -> bool:
        """Whether co-firing pairs were dropped (unlisted pairs are then bounded, not all rank-one)."""
        return self.row_bound is not None

    def listed(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """[Q] bool: whether each live-position pair is among the listed entries."""
        if not self.nnz:
            return np.zeros(len(rows), dtype=bool)
        keys = self.keys
        q = np.asarray(rows, dtype=np.int64) * self.shape[1] + np.asarray(cols, dtype=np.int64)
        return keys[np.minimum(np.searchsorted(keys, q), len(keys) - 1)] == q

    def with_entries(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, counts: np.ndarray) -> "SparseCorrelation":
        """A copy with exact entries added (pairs not yet listed; e.g. resolved from the codes), bounds kept."""
        keys = np.concatenate([self.keys, np.asarray(rows, dtype=np.int64) * self.shape[1] + np.asarray(cols, dtype=np.int64)])
        order = argsort_stable(keys)
        keys = keys[order]
        return SparseCorrelation(self.live_image, self.live_text, self.a, self.b, keys // self.shape[1], keys % self.shape[1],
                                 np.concatenate([self.values, values])[order], np.concatenate([self.counts, counts.astype(np.int32)])[order],
                                 self.row_bound, self.col_bound)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.live_image), len(self.live_text)

    @property
    def nnz(self) -> int:
        return len(self.values)

    @property
    def keys(self) -> np.ndarray:
        """[P] int64 ``rows * n_T + cols`` (sorted)."""
        return self.rows * self.shape[1] + self.cols

    def lookup(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Exact c of arbitrary live-position pairs ``rows, cols: [Q]`` -> [Q] float64."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        out = -(self.a[rows] * self.b[cols])
        if self.nnz:
            keys = self.keys
            q = rows * self.shape[1] + cols
            pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
            hit = keys[pos] == q
            out[hit] = self.values[pos[hit]]
        return out

    def row_starts(self) -> np.ndarray:
        """[n_I + 1] CSR offsets of the co-firing entries by row."""
        return np.searchsorted(self.rows, np.arange(self.shape[0] + 1))

    def block(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` of C, dense: [hi - lo, n_T] float64."""
        out = -np.outer(self.a[lo:hi], self.b)
        s, e = np.searchsorted(self.rows, [lo, hi])
        out[self.rows[s:e] - lo, self.cols[s:e]] = self.values[s:e]
        return out

    def dense(self, limit: int = DENSE_ENTRIES_LIMIT) -> torch.Tensor:
        """The whole live block [n_I, n_T] float64 (refused above ``limit`` entries: use the sparse form; refused
        for a pruned C, whose dropped pairs are not known)."""
        n_i, n_t = self.shape
        if self.pruned:
            raise CheckpointError("this correlation is pruned (only each latent's strongest co-firing pairs are listed): "
                                  "it has no dense form; recompute C with sparse statistics for every entry")
        if n_i * n_t > limit:
            raise CheckpointError(f"the {n_i:,} x {n_t:,} correlation has {n_i * n_t:,} entries, more than the "
                                  f"{limit:,} this densifies; use its sparse form (SparseCorrelation) instead")
        return torch.from_numpy(self.block(0, n_i))

    def transposed(self) -> "SparseCorrelation":
        """C^T as a SparseCorrelation (image and text roles swapped)."""
        order = argsort_stable(self.cols * self.shape[0] + self.rows)
        return SparseCorrelation(self.live_text, self.live_image, self.b, self.a, self.cols[order], self.rows[order],
                                 self.values[order], self.counts[order], self.col_bound, self.row_bound)

    @classmethod
    def from_dense(cls, c: torch.Tensor | np.ndarray, live_image: Any, live_text: Any) -> "SparseCorrelation":
        """Every entry of a dense block as an explicit entry (a = b = 0): a /1 file in the sparse form."""
        c = np.asarray(c.detach().cpu().numpy() if isinstance(c, torch.Tensor) else c, dtype=np.float64)
        rows, cols = np.divmod(np.arange(c.size, dtype=np.int64), c.shape[1])
        return cls(np.asarray(live_image, dtype=np.int64), np.asarray(live_text, dtype=np.int64), np.zeros(c.shape[0]),
                   np.zeros(c.shape[1]), rows, cols, c.reshape(-1), np.zeros(c.size, dtype=np.int32))


def save_sparse_correlation(folder: str | Path, sc: SparseCorrelation, live_text_shared: Any) -> Path:
    """Write ``folder/correlation.safetensors`` in format /2: the live latents (``live_text`` in the shared
    index space after eq. 7, ``live_text_original`` before it), ``a``, ``b`` and the co-firing entries."""
    path = Path(folder) / "correlation.safetensors"
    t = {"live_image": torch.tensor(np.asarray(sc.live_image), dtype=torch.long), "live_text": torch.tensor(np.asarray(live_text_shared), dtype=torch.long),
         "live_text_original": torch.tensor(np.asarray(sc.live_text), dtype=torch.long), "a": torch.tensor(sc.a), "b": torch.tensor(sc.b),
         "pair_rows": torch.from_numpy(sc.rows.astype(np.int32)), "pair_cols": torch.from_numpy(sc.cols.astype(np.int32)),
         "pair_values": torch.from_numpy(sc.values), "pair_counts": torch.from_numpy(sc.counts.astype(np.int32))}
    if sc.pruned:
        t["pruned_row_bound"], t["pruned_col_bound"] = torch.from_numpy(sc.row_bound), torch.from_numpy(sc.col_bound)
    save_tensors(path, t, metadata={"format": SPARSE_CORRELATION_FORMAT})
    return path


def sparse_from_tensors(path: Path, t: dict) -> SparseCorrelation:
    """The SparseCorrelation of a /2 file's tensors (text latents in the shared index space)."""
    need = {"live_image", "live_text", "a", "b", "pair_rows", "pair_cols", "pair_values", "pair_counts"}
    missing = sorted(need - set(t))
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {missing} of format {SPARSE_CORRELATION_FORMAT}")
    li, lt = t["live_image"].long().numpy(), t["live_text"].long().numpy()
    a, b = t["a"].double().numpy(), t["b"].double().numpy()
    rows, cols = t["pair_rows"].long().numpy(), t["pair_cols"].long().numpy()
    del t["pair_rows"], t["pair_cols"]  # the int32 copies are not kept beside the int64 ones
    vals, counts = t["pair_values"].double().numpy(), t["pair_counts"].int().numpy()
    if len(a) != len(li) or len(b) != len(lt):
        raise CheckpointError(f"{path}: 'a' has {len(a)} entries for {len(li)} live image latents, 'b' {len(b)} for {len(lt)} live text latents")
    if not (len(rows) == len(cols) == len(vals) == len(counts)):
        raise CheckpointError(f"{path}: pair_rows/pair_cols/pair_values/pair_counts have lengths {len(rows)}/{len(cols)}/{len(vals)}/{len(counts)}, expected equal")
    if len(rows) and (rows.min() < 0 or rows.max() >= len(li) or cols.min() < 0 or cols.max() >= len(lt)):
        raise CheckpointError(f"{path}: pair_rows / pair_cols hold positions outside [0, {len(li)}) x [0, {len(lt)})")
    rb = t["pruned_row_bound"].double().numpy() if "pruned_row_bound" in t else None
    cb = t["pruned_col_bound"].double().numpy() if "pruned_col_bound" in t else None
    if (rb is None) != (cb is None) or (rb is not None and (len(rb) != len(li) or len(cb) != len(lt))):
        raise CheckpointError(f"{path}: pruned_row_bound / pruned_col_bound must both be present with {len(li)} / {len(lt)} entries")
    return SparseCorrelation(li, lt, a, b, rows, cols, vals, counts, rb, cb)


__all__ = ["DENSE_ENTRIES_LIMIT", "SPARSE_CORRELATION_FORMAT", "SparseCorrelation", "save_sparse_correlation", "sparse_from_tensors"]
