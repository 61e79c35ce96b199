"""Pruned coactivation statistics: eq. 5 for every co-firing pair, but only each latent's strongest kept, so
alignment at N k_I k_T >> memory (10^6 rows at 65,536 latents: ~10^9 co-firing pairs) holds O((n_I + n_T) keep)
pairs, and the optimum of eq. 6 is still exact and certified over all pairs.

1. Tiles (:func:`pruned_correlation`): the image latents are cut into blocks whose co-firing products
   (counted from the codes) fit ``tile_pairs``; each block's pairs are accumulated exactly (float64, as
   :class:`dualsae.alignment.cofiring.CofiringSums` does for all of them), turned into c (eq. 5, with
   the marginals of all rows), and pruned at once; only the kept pairs outlive the block.
2. Pruning (:func:`prune_entries`): a pair is kept when it is among its image latent's ``keep`` largest
   c or its text latent's ``keep`` largest; every dropped pair raises its row's and its column's bound
   (``row_bound_i`` / ``col_bound_j``: the largest dropped c), so every dropped pair has
   ``c_ij <= min(row_bound_i, col_bound_j)`` and every unlisted pair that never co-fires is rank-one
   (:class:`dualsae.alignment.sparse_correlation.SparseCorrelation`). A block holds each of its rows
   whole, so rows are pruned exactly per block; columns again over the survivors held so far whenever they
   pass ``COMPACT_FACTOR`` (n_I + n_T) keep pairs, and once more at the end (a column's keep best over all
   blocks are among the blocks' keep best: the result equals pruning the full C at once).
3. Exactness (:func:`dualsae.alignment.sparse_assignment.solve_pruned`): the certificate also demands
   ``u_i + v_j >= min(row_bound_i, col_bound_j)`` of unlisted pairs; the pairs that fail it, and every
   unlisted candidate, are resolved to their exact c from the held codes (:class:`CodeResolver`, one pass
   over the codes restricted to their latents) before the next solve round.

``keep`` = 128 by default: on a briefly trained 4,096-latent pair at 488 firing rows per latent (the ratio of
10^6 rows at 65,536 latents, k = 32), the optimal duals already satisfy every dropped pair's bound at 128
(1,972 bound violations in 262 rows at 32, 238,704 at 8), while 3.4% of the 1.6e7 co-firing pairs are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dualsae.alignment.coactivation import stats_from_codes
from dualsae.alignment.cofiring import chunk_cross_sums, coalesce_codes
from dualsae.alignment.sparse_assignment import top_per_group
from dualsae.alignment.sparse_correlation import SparseCorrelation
from dualsae.core.codes import SparseCodes
from dualsae.core.errors import ConfigError, DataError
from dualsae.core.progress import tqdm

KEEP = 128
# Co-firing products one tile may hold (its distinct pairs are at most these): ~20 bytes each in the
# run, twice while merging, plus the tile's C (28 bytes): ~1.7 GB at the peak.
TILE_PAIRS = 25_000_000
# Held pruned pairs, in units of (n_I + n_T) keep (what one compaction leaves at most), that trigger a
# compaction: larger compacts less often (each is a top-keep selection over what is held), smaller holds less.
COMPACT_FACTOR = 2
# Rows of codes per step when resolving pairs (products among the queried latents only).
RESOLVE_ROWS = 32_768


@dataclass(frozen=True)
class PruneOptions:
    """keep: co-firing pairs kept per latent (each side; the rest bounded); tile_pairs: co-firing products per
    tile of image latents (sets the statistics' memory: ~68 bytes each at the tile's peak)."""

    keep: int = KEEP
    tile_pairs: int = TILE_PAIRS

    def __post_init__(self) -> None:
        if self.keep < 1 or self.tile_pairs < 1:
            raise ConfigError(f"pruned statistics: keep >= 1 and tile_pairs >= 1, found keep={self.keep}, tile_pairs={self.tile_pairs}")


@dataclass
class PrunedCorrelation:
    """What :func:`pruned_correlation` returns: the pruned C, the resolver of its dropped pairs, and a record
    for alignment.json (keep, tiles, co-firing pairs seen and kept)."""

    correlation: SparseCorrelation
    resolver: "CodeResolver"
    n: int
    info: dict = field(default_factory=dict)


def _segment_max(groups: np.ndarray, values: np.ndarray, n: int, into: np.ndarray) -> None:
    """into[g] = max(into[g], max of values in group g), in place (torch's scatter amax: one pass)."""
    if len(values):
        t = torch.from_numpy(into)
        t.scatter_reduce_(0, torch.from_numpy(groups), torch.from_numpy(values), reduce="amax", include_self=True)


def prune_entries(sc: SparseCorrelation, keep: int) -> SparseCorrelation:
    """``sc`` with only each row's and each column's ``keep`` largest listed values, and bounds raised to
    the largest dropped value of each row / column (any existing bounds are kept: bounds only grow)."""
    if keep < 1:
        raise ConfigError(f"keep must be >= 1, found {keep}")
    n_i, n_t = sc.shape
    rb = np.full(n_i, -np.inf) if sc.row_bound is None else sc.row_bound.copy()
    cb = np.full(n_t, -np.inf) if sc.col_bound is None else sc.col_bound.copy()
    mask = np.zeros(sc.nnz, dtype=bool)
    if sc.nnz:
        mask[top_per_group(sc.rows, sc.values, keep, n_i)] = True
        mask[top_per_group(sc.cols, sc.values, keep, n_t)] = True
    drop = ~mask
    _segment_max(sc.rows[drop], sc.values[drop], n_i, rb)
    _segment_max(sc.cols[drop], sc.values[drop], n_t, cb)
    return SparseCorrelation(sc.live_image, sc.live_text, sc.a, sc.b, sc.rows[mask], sc.cols[mask], sc.values[mask],
                             sc.counts[mask], rb, cb)


class CodeResolver:
    """Exact c (eq. 5) and co-firing counts of any live-position pairs, from the held codes of all N rows.

    codes_i: [N, k_I], codes_t: [N, k_T]; live_image / live_text: [n_I] / [n_T] latent ids of the live
    positions; scale_i / scale_t: 1 / (sd sqrt(N)); a, b: mu / sd (c = S_ij scale_i scale_j - a_i b_j, as
    :meth:`dualsae.alignment.correlation.CoactivationStats.sparse_correlation` computes it)."""

    def __init__(self, codes_i: SparseCodes, codes_t: SparseCodes, live_image: np.ndarray, live_text: np.ndarray,
                 scale_i: np.ndarray, scale_t: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        self.codes_i, self.codes_t = codes_i, codes_t
        self.live_image, self.live_text = live_image, live_text
        self.scale_i, self.scale_t, self.a, self.b = scale_i, scale_t, a, b
        self.calls = 0
        self.pairs = 0

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """rows, cols: [Q] live positions -> (c [Q] float64, counts [Q] int32). One pass over the codes;
        only products among the queried image and text latents are formed."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        self.calls += 1
        self.pairs += len(rows)
        m_i, m_t = self.codes_i.m, self.codes_t.m
        qi, qt = self.live_image[rows], self.live_text[cols]
        uq, inv = np.unique(qi * m_t + qt, return_inverse=True)
        sums, counts = np.zeros(len(uq)), np.zeros(len(uq), dtype=np.int64)
        sel_i, sel_t = torch.zeros(m_i, dtype=torch.bool), torch.zeros(m_t, dtype=torch.bool)
        sel_i[torch.from_numpy(qi)] = True
        sel_t[torch.from_numpy(qt)] = True
        for s in range(0, self.codes_i.batch, RESOLVE_ROWS):
            ci = SparseCodes(self.codes_i.values[s : s + RESOLVE_ROWS], self.codes_i.indices[s : s + RESOLVE_ROWS], m_i)
            ct = SparseCodes(self.codes_t.values[s : s + RESOLVE_ROWS], self.codes_t.indices[s : s + RESOLVE_ROWS], m_t)
            vi, ii = coalesce_codes(ci)
            vt, it = coalesce_codes(ct)
            ai, at = (vi != 0) & sel_i[ii], (vt != 0) & sel_t[it]
            if not (bool(ai.any()) and bool(at.any())):
                continue
            keys, s_, c_ = (x.numpy() for x in chunk_cross_sums(vi, ii, ai, vt, it, at, m_image=m_i, m_text=m_t))
            pos = np.minimum(np.searchsorted(uq, keys), len(uq) - 1)
            hit = uq[pos] == keys
            np.add.at(sums, pos[hit], s_[hit])  # distinct keys per chunk: no repeated index within one call
            np.add.at(counts, pos[hit], c_[hit])
        vals = sums[inv] * self.scale_i[rows] * self.scale_t[cols] - self.a[rows] * self.b[cols]
        return vals, counts[inv].astype(np.int32)


def image_tiles(codes_i: SparseCodes, codes_t: SparseCodes, tile_pairs: int) -> list[tuple[int, int]]:
    """Blocks [lo, hi) of image latents, each with at most ``tile_pairs`` co-firing products (a latent with
    more gets a block of its own), from the codes: a latent's products are the text codes active on its rows."""
    active_t = (codes_t.values != 0).sum(1).to(torch.float64)  # [N]
    act_i = codes_i.values != 0
    per = torch.zeros(codes_i.m, dtype=torch.float64)
    per.index_add_(0, codes_i.indices[act_i], active_t.unsqueeze(1).expand_as(act_i)[act_i])
    cum = np.concatenate([[0.0], np.cumsum(per.numpy())])
    bounds, lo = [], 0
    while lo < codes_i.m:
        hi = int(np.searchsorted(cum, cum[lo] + tile_pairs, side="right")) - 1
        hi = min(max(hi, lo + 1), codes_i.m)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def _join(parts: list[SparseCorrelation]) -> SparseCorrelation:
    """One SparseCorrelation of the pruned ``parts`` (same live latents and marginals; disjoint image-latent
    blocks in ascending order, so the keys stay sorted), bounds the largest of the parts'."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    rb = np.max(np.stack([p.row_bound for p in parts]), axis=0)
    cb = np.max(np.stack([p.col_bound for p in parts]), axis=0)
    return SparseCorrelation(first.live_image, first.live_text, first.a, first.b,
                             *(np.concatenate([getattr(p, f) for p in parts]) for f in ("rows", "cols", "values", "counts")), rb, cb)


def pruned_correlation(codes_i: SparseCodes, codes_t: SparseCodes, keep: int = KEEP, tile_pairs: int = TILE_PAIRS,
                       batch_size: int = 4096, progress: bool = False) -> PrunedCorrelation:
    """The pruned C of paired codes (codes_i [N, k_I], codes_t [N, k_T], row r of each one pair), by tiles of
    image latents (module docstring). Equal, on the pairs it lists, to the full sparse statistics' C."""
    if codes_i.batch != codes_t.batch:
        raise ConfigError(f"paired codes must have the same rows: image {codes_i.batch}, text {codes_t.batch}")
    if keep < 1 or tile_pairs < 1:
        raise ConfigError(f"keep and tile_pairs must be >= 1, found keep={keep}, tile_pairs={tile_pairs}")
    tiles = image_tiles(codes_i, codes_t, tile_pairs)
    held: list[SparseCorrelation] = []  # pruned tiles not yet compacted, then the compacted survivors first
    seen, held_pairs, compactions = 0, 0, 0
    marg = None
    for lo, hi in tqdm(tiles, desc="coactivation tiles", unit="tile", disable=not progress, leave=False):
        # The marginals (eq. 5's means and sds over all rows) are summed once, by the first tile; the later
        # tiles share them and accumulate only their own pairs. consume=True drops only the pairs, so the
        # first tile's marginals outlive it.
        stats = stats_from_codes(codes_i, codes_t, batch_size=batch_size, sparse=True, image_block=(lo, hi), marginals_of=marg)
        marg = stats if marg is None else marg
        tile = stats.sparse_correlation(consume=True)
        seen += tile.nnz
        held.append(prune_entries(tile, keep))
        held_pairs += held[-1].nnz
        del stats, tile
        # Each pruned tile keeps every column's keep best *within the tile*: up to n_T keep pairs a tile, so the
        # survivors of all tiles would grow with the number of tiles (~8.6e6 pairs, 0.24 GB, each at 10^6 rows
        # and 65,536 latents: killed at 23 GiB in all). Compacting re-prunes the columns over what is held (rows
        # are whole in their tile: their keep best are already final); it leaves at most (n_I + n_T) keep pairs.
        n_i, n_t = held[-1].shape
        if held_pairs > COMPACT_FACTOR * keep * (n_i + n_t):
            held = [prune_entries(_join(held), keep)]
            held_pairs, compactions = held[0].nnz, compactions + 1
    if marg is None:
        raise DataError("no latents to correlate")
    # The columns' keep largest over all blocks; one held part is final already (the only tile, whose
    # columns were pruned over every pair, or the compaction just made).
    sc = held[0] if len(held) == 1 else prune_entries(_join(held), keep)
    scales = marg.scales().cpu()
    resolver = CodeResolver(codes_i, codes_t, sc.live_image, sc.live_text, scales.u_i.numpy(), scales.u_t.numpy(), sc.a, sc.b)
    info = {"keep": int(keep), "tiles": len(tiles), "tile_pairs": int(tile_pairs), "cofiring_pairs": int(seen),
            "kept_pairs": int(sc.nnz), "compactions": compactions}
    return PrunedCorrelation(sc, resolver, marg.n, info)


__all__ = ["KEEP", "TILE_PAIRS", "CodeResolver", "PruneOptions", "PrunedCorrelation", "image_tiles", "prune_entries", "pruned_correlation"]
