"""The cross sums of paper eq. 5 for co-firing pairs only: ``S_ij = sum_rows z_I,i z_T,j`` is non-zero
only when latents i and j fire on a common row, so with TopK codes it is kept as a sorted run of
pair keys ``i * m_T + j`` (int64) with their float64 sums and int32 co-firing counts, never as an
``[m_I, m_T]`` matrix.

Each batch's active codes are buffered (the codes, not their ``k_I x k_T`` products per row); when the
buffered rows hold ``buffer_pairs`` products (or a quarter of the run, whichever is larger, so a pair is
merged O(1) times on average) the chunk is reduced by two sparse matrix products, ``Z_I^T Z_T`` for the
sums and ``1[Z_I != 0]^T 1[Z_T != 0]`` for the counts (scipy's SMMP: one dense row accumulator, O(products),
no sort of the products), and merged into the run by binary search (keys present add in place, new keys
are inserted; the run is never re-sorted). Sums are exact float64 additions; only their order differs
from the dense accumulator's. Against the sort-and-unique reduction of buffered products that this
replaced (still :func:`reduce_entries`, which combines ranks' runs) it is about as fast (1.0-1.2x on
5e4 rows at 16,384 latents: the merge into the run dominates both) and holds 16 bytes per active code
instead of 24 per product (benchmarks/cofiring_reduce.py).

Memory: 20 bytes per distinct co-firing pair in the run (8 key + 8 sum + 4 count); a merge holds the
old and the new run (40 bytes a pair) plus the chunk's reduced pairs (at most a quarter of the run) and
its codes (16 bytes per active code). ``image_block = (lo, hi)`` keeps only the pairs of image latents in ``[lo, hi)``: a tile.
When all pairs do not fit, :func:`dualsae.alignment.coactivation.coactivation_correlation` accumulates
one tile at a time from codes it encoded once (exact; cost grows with the number of tiles' sums, memory
does not).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from scipy.sparse import csr_matrix

from dualsae.core.codes import SparseCodes
from dualsae.core.sorting import argsort_stable

# Products (k_I x k_T per row) whose codes are buffered before a chunk is reduced and merged.
BUFFER_PAIRS = 10_000_000
BYTES_PER_PAIR = 20


class CofiringSums:
    """S_ij and co-firing counts over pairs (i, j) that co-fire on some row.

    keys: [P] int64 sorted distinct ``i * m_text + j``; sums: [P] float64 S_ij; counts: [P] int32 rows
    on which both fire (``z_I,i != 0`` and ``z_T,j != 0``).
    """

    def __init__(self, m_image: int, m_text: int, image_block: tuple[int, int] | None = None,
                 buffer_pairs: int = BUFFER_PAIRS) -> None:
        self.m_image, self.m_text = int(m_image), int(m_text)
        self.image_block = None if image_block is None else (int(image_block[0]), int(image_block[1]))
        self.buffer_pairs = int(buffer_pairs)
        self._keys = torch.zeros(0, dtype=torch.long)
        self._sums = torch.zeros(0, dtype=torch.float64)
        self._counts = torch.zeros(0, dtype=torch.int32)
        self._buf: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # reduced entries waiting (merge)
        self._codes: list[tuple[torch.Tensor, ...]] = []  # buffered rows: (vi, ii, active_i, vt, it, active_t)
        self._buffered = 0
        self.peak_pairs = 0  # largest run + buffer held at a merge (for the memory statement)

    # ------------------------------------------------------------------ accumulation
    def add(self, vi: torch.Tensor, ii: torch.Tensor, vt: torch.Tensor, it: torch.Tensor) -> None:
        """Add the active-pair products of paired rows: ``vi, ii: [rows, k_I]`` (coalesced values,
        float64, and indices), ``vt, it: [rows, k_T]``. Zero values contribute nothing and are skipped."""
        ai = vi != 0
        at = vt != 0
        if self.image_block is not None:
            lo, hi = self.image_block
            ai &= (ii >= lo) & (ii < hi)
        products = int((ai.sum(1) * at.sum(1)).sum())
        if products == 0:
            return
        self._codes.append((vi.cpu(), ii.cpu(), ai.cpu(), vt.cpu(), it.cpu(), at.cpu()))
        self._buffered += products
        if self._buffered >= max(self.buffer_pairs, len(self._keys) // 4):
            self._flush()

    def _reduce_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The buffered rows' distinct co-firing pairs: (keys [U] int64 sorted, sums [U] float64, counts [U] int32)."""
        parts = [torch.cat([c[q] for c in self._codes]) for q in range(6)]
        self._codes = []
        return chunk_cross_sums(*parts, m_image=self.m_image, m_text=self.m_text)

    def _flush(self) -> None:
        """Reduce the buffer and merge it into the sorted run: keys already in the run add in place, new
        keys are placed by binary search (no re-sort of the run), so a merge holds the run twice at most."""
        if not self._buf and not self._codes:
            return
        parts = ([self._reduce_codes()] if self._codes else []) + self._buf
        # A chunk's product is already distinct and sorted; anything in _buf (a merged shard) is reduced with it.
        bk, bs, bc = _reduce(*(torch.cat([p[q] for p in parts]) for q in range(3))) if self._buf else parts[0]
        self._buf, self._buffered = [], 0
        run = len(self._keys)
        self.peak_pairs = max(self.peak_pairs, run + len(bk))
        if run == 0:
            self._keys, self._sums, self._counts = bk, bs, bc
            return
        pos = torch.searchsorted(self._keys, bk)
        hit = self._keys[pos.clamp_max(run - 1)] == bk
        self._sums.index_add_(0, pos[hit], bs[hit])
        self._counts.index_add_(0, pos[hit], bc[hit])
        new = ~hit
        if not bool(new.any()):
            return
        nk, ns, nc = bk[new], bs[new], bc[new]
        slots = pos[new] + torch.arange(len(nk))  # the t-th new key lands after the run keys below it and t new ones
        old = torch.ones(run + len(nk), dtype=torch.bool)
        old[slots] = False
        dest = old.nonzero().squeeze(1)  # the run's slots, in order (index_copy_ beats a boolean-mask assignment ~1.7x)
        out = []
        for run_t, new_t in ((self._keys, nk), (self._sums, ns), (self._counts, nc)):
            o = torch.empty(run + len(nk), dtype=run_t.dtype)
            o[slots] = new_t
            o.index_copy_(0, dest, run_t)
            out.append(o)
        self._keys, self._sums, self._counts = out

    def merge(self, other: "CofiringSums") -> "CofiringSums":
        """Add another shard's sums (in place); returns self."""
        self._flush()
        k, s, c = other.entries()
        self._buf.append((k, s, c))  # _flush reduces them into new tensors
        self._flush()
        return self

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys [P] int64 sorted, sums [P] float64, counts [P] int32) of every co-firing pair so far."""
        self._flush()
        return self._keys, self._sums, self._counts

    def set_entries(self, keys: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Replace the run by already reduced, sorted entries (e.g. gathered from all ranks and reduced)."""
        self._buf, self._codes, self._buffered = [], [], 0
        self._keys, self._sums, self._counts = keys, sums, counts

    def __len__(self) -> int:
        return len(self.entries()[0])

    @property
    def nbytes(self) -> int:
        k, s, c = self.entries()
        return k.numel() * 8 + s.numel() * 8 + c.numel() * 4


def csr_by_row(v: torch.Tensor, i: torch.Tensor, active: torch.Tensor, m: int) -> csr_matrix:
    """Coalesced codes [rows, k] (values float64, indices, active mask) as a scipy CSR [rows, m] of their active
    entries (int32 column indices)."""
    per_row = active.sum(1).numpy()
    indptr = np.zeros(len(per_row) + 1, dtype=np.int64)
    np.cumsum(per_row, out=indptr[1:])
    return csr_matrix((v[active].numpy(), i[active].to(torch.int32).numpy(), indptr), shape=(len(per_row), m))


def indicator(c: csr_matrix) -> csr_matrix:
    """1 (int32) at every stored entry of c (active codes are non-zero), sharing c's index arrays: its products
    count co-firing rows exactly."""
    return csr_matrix((np.ones(c.nnz, dtype=np.int32), c.indices, c.indptr), shape=c.shape)


def matched_sums(sums: csr_matrix, counts: csr_matrix) -> np.ndarray:
    """The values of ``sums`` on the pattern of ``counts`` (the co-firing pairs), in counts' storage order: the
    two products of the same operand patterns share one order, unless scipy dropped sums that cancelled to
    exactly 0 (signed codes); those are then placed by key and the cancelled pairs get 0, as the dense
    accumulator has them."""
    if sums.nnz == counts.nnz and np.array_equal(sums.indptr, counts.indptr) and np.array_equal(sums.indices, counts.indices):
        return sums.data
    width = counts.shape[1]
    ck, sk = _entries(counts, width), _entries(sums, width)
    order = argsort_stable(ck)
    out = np.zeros(len(ck))
    out[order[np.searchsorted(ck[order], sk)]] = sums.data
    return out


def _entries(c: csr_matrix, m_text: int) -> np.ndarray:
    """keys ``row * m_text + col`` [U] of a CSR product, in its storage order."""
    return np.repeat(np.arange(c.shape[0], dtype=np.int64), np.diff(c.indptr)) * m_text + c.indices.astype(np.int64)


def chunk_cross_sums(vi: torch.Tensor, ii: torch.Tensor, ai: torch.Tensor, vt: torch.Tensor, it: torch.Tensor, at: torch.Tensor,
                     m_image: int, m_text: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct co-firing pairs of a chunk of paired rows with their S_ij and counts.

    vi, ii, ai: [rows, k_I] float64 values, indices, active mask (coalesced: an index at most once per row
    among active entries); vt, it, at: [rows, k_T]. Returns (keys [U] int64 sorted ``i * m_text + j``,
    sums [U] float64, counts [U] int32). The pattern is the counts' (pairs that co-fire), so a pair whose
    signed products cancel to 0 is kept with S_ij = 0, as the dense accumulator has it.
    """
    zi_t = csr_by_row(vi, ii, ai, m_image).T.tocsr()  # [m_I, rows]
    zt = csr_by_row(vt, it, at, m_text)  # [rows, m_T]
    counts = indicator(zi_t) @ indicator(zt)  # [m_I, m_T]
    full = matched_sums(zi_t @ zt, counts)
    keys = _entries(counts, m_text)
    order = argsort_stable(keys)  # one parallel sort instead of scipy's per-row sort_indices
    return torch.from_numpy(keys[order]), torch.from_numpy(full[order]), torch.from_numpy(counts.data[order].astype(np.int32))


def coalesce_codes(codes: SparseCodes) -> tuple[torch.Tensor, torch.Tensor]:
    """Values (float64) and indices of ``codes`` with repeated indices in a row summed.

    TopK codes never repeat an index, but padded / concatenated codes may repeat one with a
    non-zero value; sums and cross products are bilinear and need no care, sums of *squares* do.
    Returns ``(values [batch, w], indices [batch, w])``; freed slots are (0.0, 0).
    """
    vals = codes.values.detach().to(torch.float64)
    idx = codes.indices
    if idx.shape[1] < 2:
        return vals, idx
    idx_sorted, order = idx.sort(dim=1)
    repeated = idx_sorted[:, 1:] == idx_sorted[:, :-1]
    if not bool(repeated.any()):
        return vals, idx
    vals_sorted = vals.gather(1, order)
    new_group = torch.ones_like(idx_sorted, dtype=torch.bool)
    new_group[:, 1:] = ~repeated
    pos = new_group.long().cumsum(1) - 1
    out_v = torch.zeros_like(vals_sorted).scatter_add_(1, pos, vals_sorted)
    out_i = torch.zeros_like(idx_sorted).scatter_(1, pos, idx_sorted)
    return out_v, out_i


def _reduce(keys: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted distinct keys with their values summed: ([U] int64, [U] float64, [U] int32)."""
    uniq, inv = torch.unique(keys, sorted=True, return_inverse=True)
    out_s = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, sums)
    out_c = torch.zeros(len(uniq), dtype=torch.int32).index_add_(0, inv, counts)
    return uniq, out_s, out_c


def reduce_entries(keys: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Public form of the sort-unique-sum step (used to combine the parts gathered from ranks)."""
    return _reduce(keys, sums, counts)


def gather_ragged(t: torch.Tensor, group: Any = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Concatenation over ranks of 1-D tensors of different lengths (padded to the longest for all_gather),
    communicated on ``device`` (the group's: CUDA under nccl) and returned on the CPU."""
    n = torch.tensor([len(t)], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, n, group=group)
    longest = max(int(x) for x in sizes)
    padded = torch.zeros(longest, dtype=t.dtype, device=device)
    padded[: len(t)] = t.to(device)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[: int(k)].cpu() for p, k in zip(parts, sizes)])


__all__ = ["BUFFER_PAIRS", "BYTES_PER_PAIR", "CofiringSums", "chunk_cross_sums", "coalesce_codes", "csr_by_row", "gather_ragged", "indicator",
           "matched_sums", "reduce_entries"]
