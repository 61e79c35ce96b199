"""Pruned coactivation statistics: eq. 5 for every co-firing pair, but only each latent's strongest kept, so
alignment at N k_I k_T >> memory (10^6 rows at 65,536 latents: ~10^9 co-firing pairs) holds O((n_I + n_T) keep)
pairs, and the optimum of eq. 6 is still exact and certified over all pairs.

1. Tiles (:func:`pruned_correlation`): the latents are cut into blocks whose co-firing products (counted from
   the codes) fit ``tile_pairs``; a block's pairs with every latent of the other modality are one sparse product
   of the held codes (:mod:`dualsae.alignment.block_products`: exact float64 sums), turned into c (eq. 5, with
   the marginals of all rows) and pruned at once; only the kept pairs outlive the block.
2. Pruning (:func:`prune_entries`): a pair is kept when it is among its image latent's ``keep`` largest
   c or its text latent's ``keep`` largest; every dropped pair raises its row's and its column's bound
   (``row_bound_i`` / ``col_bound_j``: the largest dropped c), so every dropped pair has
   ``c_ij <= min(row_bound_i, col_bound_j)`` and every unlisted pair that never co-fires is rank-one
   (:class:`dualsae.alignment.sparse_correlation.SparseCorrelation`). Two passes make that exact with
   nothing but the kept pairs held between blocks: blocks of whole image latents pick each row's keep best;
   then blocks of whole text latents pick each column's keep best, and every pair picked by neither
   (pass 1's picks are looked up by key) raises both bounds. The result equals pruning the full C at once;
   each co-firing pair's sum is formed twice (once per pass).
3. Exactness (:func:`dualsae.alignment.sparse_assignment.solve_pruned`): the certificate also demands
   ``u_i + v_j >= min(row_bound_i, col_bound_j)`` of unlisted pairs; the pairs that fail it, and every
   unlisted candidate, are resolved to their exact c from the held codes (:class:`CodeResolver`: each pair
   intersects its two latents' firing rows) before the next solve round.

``keep`` = 128 by default: on a briefly trained 4,096-latent pair at 488 firing rows per latent (the ratio of
10^6 rows at 65,536 latents, k = 32), the optimal duals already satisfy every dropped pair's bound at 128
(1,972 bound violations in 262 rows at 32, 238,704 at 8), while 3.4% of the 1.6e7 co-firing pairs are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse import csr_matrix

from dualsae.alignment.block_products import BlockProduct, BlockProducts, codes_csr, latent_rows, pair_sums
from dualsae.alignment.coactivation import stats_from_codes
from dualsae.alignment.sparse_assignment import top_per_group
from dualsae.alignment.sparse_correlation import SparseCorrelation
from dualsae.core.codes import SparseCodes
from dualsae.core.errors import ConfigError, DataError
from dualsae.core.progress import tqdm
from dualsae.core.sorting import argsort_stable

KEEP = 128
# Co-firing products one tile may hold (its distinct pairs are at most these): the block's two products
# (20 bytes a pair) and its per-pair arrays (~60 bytes): ~2 GB at the peak.
TILE_PAIRS = 25_000_000


@dataclass(frozen=True)
class PruneOptions:
    """keep: co-firing pairs kept per latent (each side; the rest bounded); tile_pairs: co-firing products per
    tile of image (pass 1) or text (pass 2) latents (sets the statistics' memory: ~80 bytes each at a tile's peak)."""

    keep: int = KEEP
    tile_pairs: int = TILE_PAIRS

    def __post_init__(self) -> None:
        if self.keep < 1 or self.tile_pairs < 1:
            raise ConfigError(f"pruned statistics: keep >= 1 and tile_pairs >= 1, found keep={self.keep}, tile_pairs={self.tile_pairs}")


@dataclass
class PrunedCorrelation:
    """What :func:`pruned_correlation` returns: the pruned C, the resolver of its dropped pairs, and a record
    for alignment.json (keep, tiles and text_tiles of the two passes, co-firing pairs seen and kept)."""

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
    """Exact c (eq. 5) and co-firing counts of any live-position pairs, from the codes of all N rows.

    rows_i: [m_I, N], rows_t: [m_T, N] each latent's firing rows (:func:`dualsae.alignment.block_products.latent_rows`
    of the held codes); live_image / live_text: [n_I] / [n_T] latent ids of the live positions; scale_i /
    scale_t: 1 / (sd sqrt(N)); a, b: mu / sd (c = S_ij scale_i scale_j - a_i b_j, as
    :meth:`dualsae.alignment.correlation.CoactivationStats.sparse_correlation` computes it)."""

    def __init__(self, rows_i: csr_matrix, rows_t: csr_matrix, live_image: np.ndarray, live_text: np.ndarray,
                 scale_i: np.ndarray, scale_t: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        self.rows_i, self.rows_t = rows_i, rows_t
        self.live_image, self.live_text = live_image, live_text
        self.scale_i, self.scale_t, self.a, self.b = scale_i, scale_t, a, b
        self.calls = 0
        self.pairs = 0

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """rows, cols: [Q] live positions -> (c [Q] float64, counts [Q] int32). Each pair costs its two latents'
        firing rows (:func:`dualsae.alignment.block_products.pair_sums`)."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        self.calls += 1
        self.pairs += len(rows)
        sums, counts = pair_sums(self.rows_i, self.rows_t, self.live_image[rows], self.live_text[cols])
        vals = sums * self.scale_i[rows] * self.scale_t[cols] - self.a[rows] * self.b[cols]
        return vals, counts.astype(np.int32)


def image_tiles(codes_i: SparseCodes, codes_t: SparseCodes, tile_pairs: int) -> list[tuple[int, int]]:
    """Blocks [lo, hi) of codes_i's latents (image latents; text latents with the arguments swapped), each with
    at most ``tile_pairs`` co-firing products (a latent with more gets a block of its own), from the codes: a
    latent's products are the other side's codes active on its rows."""
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


def _block_pairs(bp: BlockProduct, lo: int, hi: int, by_image: bool, pos_by: torch.Tensor, pos_other: torch.Tensor,
                 scales: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, ...]:
    """A block's pairs of live latents: (row in the block [P], live position of the blocked side [P], of the
    other side [P], c [P] float64, counts [P] int32). c = S_ij u_i u_j - a_i b_j, the image factors first
    whichever side is blocked, in the order :meth:`CoactivationStats.sparse_correlation` computes it (the same
    bits from either pass). The elementwise work runs in torch (all threads)."""
    local = torch.from_numpy(bp.block_rows())
    pb = pos_by[lo:hi].index_select(0, local)
    po = pos_other.index_select(0, torch.from_numpy(bp.cols).long())
    sums, counts = torch.from_numpy(bp.sums), torch.from_numpy(bp.counts)
    if bool((pb < 0).any()) or bool((po < 0).any()):  # pairs of dead latents (constant values) are left out
        live = (pb >= 0) & (po >= 0)
        local, pb, po, sums, counts = local[live], pb[live], po[live], sums[live], counts[live]
    u_i, u_t, a, b = scales
    pi, pt = (pb, po) if by_image else (po, pb)
    c = sums * u_i.index_select(0, pi) * u_t.index_select(0, pt) - a.index_select(0, pi) * b.index_select(0, pt)
    return local.numpy(), pb.numpy(), po.numpy(), c.numpy(), counts.numpy()


Picks = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # rows, cols (live positions), c, counts [P] each


def _row_picks(products: BlockProducts, tiles: list[tuple[int, int]], keep: int, pos_i: torch.Tensor, pos_t: torch.Tensor,
               factors: tuple[torch.Tensor, ...], progress: bool) -> tuple[Picks, int]:
    """Pass 1: blocks of whole image latents -> each image latent's keep best (final: its row is whole in its
    block), sorted by key; and the number of co-firing pairs of live latents seen."""
    parts, seen = [], 0
    n_t = int((pos_t >= 0).sum())
    for lo, hi in tqdm(tiles, desc="coactivation tiles (image)", unit="tile", disable=not progress, leave=False):
        local, pr, pc, c, counts = _block_pairs(products.product(lo, hi), lo, hi, True, pos_i, pos_t, factors)
        seen += len(c)
        if len(c):
            sel = top_per_group(local, c, keep, hi - lo, order_keys=pr * n_t + pc)
            parts.append((pr[sel], pc[sel], c[sel], counts[sel]))
    if not parts:
        return (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int32)), seen
    r, c, v, n = (np.concatenate([p[q] for p in parts]) for q in range(4))
    order = argsort_stable(r * n_t + c)
    return (r[order], c[order], v[order], n[order]), seen


def _column_picks(products: BlockProducts, tiles: list[tuple[int, int]], keep: int, pos_t: torch.Tensor, pos_i: torch.Tensor,
                  factors: tuple[torch.Tensor, ...], rows: Picks, progress: bool) -> tuple[np.ndarray, ...]:
    """Pass 2: blocks of whole text latents -> each text latent's keep best, and the bounds of every pair picked
    by neither pass. Returns SparseCorrelation's (rows, cols, values, counts, row_bound, col_bound)."""
    n_i, n_t = int((pos_i >= 0).sum()), int((pos_t >= 0).sum())
    r1, c1, v1, n1 = rows
    keys1 = r1 * n_t + c1
    # The smallest pick of each image latent: a pair below it is not one of that latent's keep best.
    floor = np.full(n_i, np.inf)
    np.minimum.at(floor, r1, v1)
    rb, cb = np.full(n_i, -np.inf), np.full(n_t, -np.inf)
    parts = [rows]
    for lo, hi in tqdm(tiles, desc="coactivation tiles (text)", unit="tile", disable=not progress, leave=False):
        local, pc, pr, c, counts = _block_pairs(products.product(lo, hi), lo, hi, False, pos_t, pos_i, factors)
        if not len(c):
            continue
        kept = np.zeros(len(c), dtype=bool)
        kept[top_per_group(local, c, keep, hi - lo, order_keys=pc * n_i + pr)] = True
        # Pass 1's picks, looked up by key among the pairs at or above their row's floor (the margin is for a
        # summation order other than SMMP's, which gives both passes the same bits).
        maybe = np.flatnonzero(c >= floor[pr] - 1e-9)
        in_rows = np.zeros(len(c), dtype=bool)
        if len(maybe) and len(keys1):
            mk = pr[maybe] * n_t + pc[maybe]
            by_key = argsort_stable(mk)  # sorted queries search the sorted picks far faster than random ones
            at = np.minimum(np.searchsorted(keys1, mk[by_key]), len(keys1) - 1)
            in_rows[maybe[by_key]] = keys1[at] == mk[by_key]
        new = kept & ~in_rows
        parts.append((pr[new], pc[new], c[new], counts[new]))
        drop = ~(kept | in_rows)
        _segment_max(pr[drop], c[drop], n_i, rb)
        _segment_max(pc[drop], c[drop], n_t, cb)
    r, c, v, n = (np.concatenate([p[q] for p in parts]) for q in range(4))
    order = argsort_stable(r * n_t + c)
    return r[order], c[order], v[order], n[order], rb, cb


def pruned_correlation(codes_i: SparseCodes, codes_t: SparseCodes, keep: int = KEEP, tile_pairs: int = TILE_PAIRS,
                       batch_size: int = 4096, progress: bool = False) -> PrunedCorrelation:
    """The pruned C of paired codes (codes_i [N, k_I], codes_t [N, k_T], row r of each one pair) in two passes
    of tiles (module docstring): each image latent's keep best from blocks of whole image latents, then each
    text latent's keep best and every bound from blocks of whole text latents. Equal, on the pairs it lists,
    to the full sparse statistics' C pruned at once (:func:`prune_entries`)."""
    if codes_i.batch != codes_t.batch:
        raise ConfigError(f"paired codes must have the same rows: image {codes_i.batch}, text {codes_t.batch}")
    if keep < 1 or tile_pairs < 1:
        raise ConfigError(f"keep and tile_pairs must be >= 1, found keep={keep}, tile_pairs={tile_pairs}")
    # eq. 5's marginals (means and sds over all rows) once; no pairs are summed there (an empty image block).
    marg = stats_from_codes(codes_i, codes_t, batch_size=batch_size, sparse=True, image_block=(0, 0))
    if marg.n < 2:
        raise DataError(f"the coactivation correlation needs at least 2 paired rows, found {marg.n}")
    scales = marg.scales().cpu()
    li, lt = scales.live_image.numpy(), scales.live_text.numpy()
    u_i, u_t, a, b = (t.numpy() for t in (scales.u_i, scales.u_t, scales.a, scales.b))
    n_i, n_t = len(li), len(lt)
    if n_i == 0 or n_t == 0:
        raise DataError("no latents to correlate")
    pos_i, pos_t = torch.full((codes_i.m,), -1, dtype=torch.long), torch.full((codes_t.m,), -1, dtype=torch.long)
    pos_i[scales.live_image], pos_t[scales.live_text] = torch.arange(n_i), torch.arange(n_t)
    factors = (scales.u_i, scales.u_t, scales.a, scales.b)

    # Each latent's firing rows, both sides, are kept for the resolver; the row-major codes of one side at a
    # time (what the other side's blocks multiply), so three of the four matrices are held at once.
    z_t = codes_csr(codes_t)
    rows_i, rows_t = latent_rows(codes_csr(codes_i)), latent_rows(z_t)
    tiles_i = image_tiles(codes_i, codes_t, tile_pairs)
    picks, seen = _row_picks(BlockProducts(rows_i, z_t), tiles_i, keep, pos_i, pos_t, factors, progress)
    del z_t
    tiles_t = image_tiles(codes_t, codes_i, tile_pairs)
    sc = _column_picks(BlockProducts(rows_t, codes_csr(codes_i)), tiles_t, keep, pos_t, pos_i, factors, picks, progress)
    sc = SparseCorrelation(li, lt, a, b, *sc)
    resolver = CodeResolver(rows_i, rows_t, li, lt, u_i, u_t, a, b)
    info = {"keep": int(keep), "tiles": len(tiles_i), "text_tiles": len(tiles_t), "tile_pairs": int(tile_pairs),
            "cofiring_pairs": int(seen), "kept_pairs": int(sc.nnz)}
    return PrunedCorrelation(sc, resolver, marg.n, info)


__all__ = ["KEEP", "TILE_PAIRS", "CodeResolver", "PruneOptions", "PrunedCorrelation", "image_tiles", "prune_entries", "pruned_correlation"]
