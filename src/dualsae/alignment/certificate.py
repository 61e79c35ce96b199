"""An optimality certificate for the assignment of paper eq. 6 over *all* pairs of a sparse C.

Eq. 6 with n_I <= n_T live latents (transpose otherwise) is the LP ``max sum c_ij x_ij`` with every
row matched once and every column at most once. Its dual: ``min sum_i u_i + sum_j v_j`` subject to
``u_i + v_j >= c_ij`` for all (i, j) and ``v_j >= 0``. A matching M and duals (u, v) with

* every reduced cost ``r_ij = u_i + v_j - c_ij >= -tol`` (all n_I x n_T pairs) and ``v >= 0``,
* ``r_ij = 0`` on M and ``v_j = 0`` on unmatched columns (so the duality gap is 0),

prove M optimal: any matching's total is at most ``sum u + sum v = total(M)`` up to ``n_I * tol``.

Duals (:func:`dual_potentials`): for an optimal matching of the candidate graph, ``v`` is the
shortest-path distance in its residual graph over column nodes (arc ``j -> M(i)`` of length
``c_{i,M(i)} - c_ij`` for every candidate (i, j); a reference node z with ``j -> z`` and
``z -> free column`` arcs of length 0 encodes ``v >= 0 = v_free``), by vectorised Bellman-Ford
relaxation from all nodes at 0 (or a warm start), each round relaxing only the arcs of the nodes whose
label moved since their arcs were last relaxed. An improving alternating path would be a negative cycle,
so the relaxation converges exactly when M is optimal on the candidates; ``u_i = c_{i,M(i)} - v_{M(i)}``.

Check (:func:`check_all_pairs`): co-firing pairs by their exact c; every other pair has
``c_ij = -a_i b_j`` (rank one), so per row ``min_j r_ij >= u_i + min_j (v_j + a_i b_j)``, a lower
envelope of the lines ``y = b_j x + v_j`` evaluated at ``x = a_i``: O((n_I + n_T) log n_T) for all rows
(:func:`lower_envelope`). Only rows whose envelope bound fails are scanned exactly (O(n_T) each), and
their violating pairs returned for the next solve round. :func:`blocked_rank_one_min` is the O(n_I n_T)
blocked reference of the same minimum.

Pruned C (``sc.row_bound`` / ``sc.col_bound``, :mod:`dualsae.alignment.pruning`): an unlisted pair may
also be a dropped co-firing pair with ``c_ij <= min(rb_i, cb_j)``, so it must satisfy
``u_i + v_j >= min(rb_i, cb_j)`` too. Per row, ``min_j (v_j - min(rb_i, cb_j))`` splits at rb_i over the
columns sorted by cb: ``v_j - cb_j`` below it (a prefix minimum), ``v_j - rb_i`` above (a suffix
minimum): O((n_I + n_T) log n_T) for all rows (:func:`pruned_bound_min`; listed pairs are included
there, which only makes it conservative). Failing rows are scanned exactly; their violating pairs are
unlisted, so the solver resolves their exact c from the codes before it uses them.
"""

from __future__ import annotations

import numpy as np
import torch

from dualsae.alignment.sparse_correlation import SparseCorrelation
from dualsae.core.errors import DataError
from dualsae.core.sorting import argsort_stable, rank_in_runs

# Reduced costs are sums of O(1) float64 terms along alternating paths: 1e-9 is far above their rounding.
CERTIFICATE_TOL = 1e-9
# dual_potentials' convergence slack: float64 rounding of the solver's weights (2 - c) can leave cycles of length ~-1e-16.
RELAX_EPS = 1e-13


def dual_potentials(n_t: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, match: np.ndarray,
                    max_rounds: int | None = None, init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Duals (u [n_I], v [n_T]) of a matching optimal on the candidate edges.

    rows, cols, vals: [E] candidate edges (live positions, exact c); match: [n_I] column of each row
    (every row matched, n_I <= n_T; the matched edges must be among the candidates). Returns
    ``(u, v, rounds)``; raises DataError when the relaxation does not converge (M not optimal on the
    candidates: a negative cycle). init: [n_T] starting labels (e.g. the previous round's v, >= 0): the
    relaxation only lowers labels and stops at *a* fixed point, which satisfies every arc, so any finite
    start gives valid duals; a near-feasible one needs fewer rounds.
    """
    n_i = len(match)
    matched_val = np.full(n_i, np.nan)
    on_match = cols == match[rows]
    matched_val[rows[on_match]] = vals[on_match]
    if np.isnan(matched_val).any():
        raise DataError("dual potentials: a matched pair is not among the candidate edges")
    off = ~on_match
    src, dst = cols[off], match[rows[off]]
    length = matched_val[rows[off]] - vals[off]
    by_src = argsort_stable(src)  # arcs grouped by source: a round relaxes only the arcs of nodes that moved
    src_t, dst_t, len_t = (torch.from_numpy(np.ascontiguousarray(x[by_src])) for x in (src, dst, length))
    starts = torch.from_numpy(np.searchsorted(src[by_src], np.arange(n_t + 1)))
    free = np.ones(n_t, dtype=bool)
    free[match] = False
    free_t = torch.from_numpy(np.flatnonzero(free))
    dist = torch.zeros(n_t, dtype=torch.float64) if init is None else torch.from_numpy(np.array(init, dtype=np.float64))
    z = float(dist.min()) if init is not None and n_t else 0.0
    # pushed[j]: the label j's arcs were last relaxed from. A node is relaxed again only once its label has
    # dropped more than RELAX_EPS below it, so at the end every arc j -> k has
    # d_k <= pushed_j + len <= d_j + RELAX_EPS + len: reduced costs >= -RELAX_EPS (<< CERTIFICATE_TOL), as a
    # full Jacobi round would leave them, at the cost of the arcs of the moving nodes only (most settle early).
    pushed = torch.full((n_t,), float("inf"), dtype=torch.float64)
    limit = max_rounds if max_rounds is not None else n_t + 2
    for rounds in range(1, limit + 1):
        act = torch.nonzero(pushed - dist > RELAX_EPS).flatten()
        if len(act) == 0:
            break
        pushed[act] = dist[act]
        s0, cnt = starts[act], starts[act + 1] - starts[act]
        total = int(cnt.sum())
        if total:
            # the arcs of the active nodes: arange(total) shifted, per node, from its run to its CSR start
            arc = torch.arange(total) + torch.repeat_interleave(s0 - (torch.cumsum(cnt, 0) - cnt), cnt)
            dist.scatter_reduce_(0, dst_t[arc], dist[src_t[arc]] + len_t[arc], reduce="amin", include_self=True)
        z = min(z, float(dist.min()))  # the reference node: j -> z (length 0) for every j
        if len(free_t):
            dist[free_t] = dist[free_t].clamp_max(z)  # z -> free column (length 0): v_free = 0 is the floor
    else:
        raise DataError(f"dual potentials did not converge in {limit} relaxation rounds: the matching is not optimal on its candidates")
    v = dist.numpy() - z
    u = matched_val - v[match]
    return u, v, rounds


def lower_envelope(slopes: np.ndarray, intercepts: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``min_j (slopes[j] * x_q + intercepts[j])`` for every query ``x: [Q]`` -> [Q], in
    O((J + Q) log J): the lower hull of the lines (convex hull trick) and a binary search per query."""
    order = np.lexsort((intercepts, -slopes))  # slope descending, then intercept ascending
    s, c = slopes[order], intercepts[order]
    keep = np.ones(len(s), dtype=bool)
    keep[1:] = s[1:] != s[:-1]  # equal slopes: the lowest intercept (first) only
    s, c = s[keep].tolist(), c[keep].tolist()
    hs: list[float] = []
    hc: list[float] = []
    for sj, cj in zip(s, c):
        # The last hull line is useless if the new line crosses the one before it no later than it does.
        while len(hs) >= 2 and (cj - hc[-2]) * (hs[-2] - hs[-1]) <= (hc[-1] - hc[-2]) * (hs[-2] - sj):
            hs.pop()
            hc.pop()
        hs.append(sj)
        hc.append(cj)
    hs_a, hc_a = np.asarray(hs), np.asarray(hc)
    if len(hs_a) == 1:
        return hs_a[0] * x + hc_a[0]
    # Line h is minimal on [x_{h-1,h}, x_{h,h+1}]; breakpoints increase along the hull.
    bx = (hc_a[1:] - hc_a[:-1]) / (hs_a[:-1] - hs_a[1:])
    h = np.searchsorted(bx, x)
    out = hs_a[h] * x + hc_a[h]
    # Guard against rounding at a breakpoint: the neighbouring lines are candidates too.
    for dh in (-1, 1):
        nb = np.clip(h + dh, 0, len(hs_a) - 1)
        out = np.minimum(out, hs_a[nb] * x + hc_a[nb])
    return out


def blocked_rank_one_min(a: np.ndarray, b: np.ndarray, u: np.ndarray, v: np.ndarray, block: int = 256) -> np.ndarray:
    """The reference of the envelope check: ``min_j (u_i + v_j + a_i b_j)`` per row by dense blocks,
    O(n_I n_T) time, O(block n_T) memory. Returns [n_I]."""
    out = np.empty(len(a))
    for s in range(0, len(a), block):
        out[s : s + block] = (u[s : s + block, None] + v[None, :] + a[s : s + block, None] * b[None, :]).min(1)
    return out


def pruned_bound_min(rb: np.ndarray, cb: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``u_i + min_j (v_j - min(rb_i, cb_j))`` per row (the bound part of a pruned C's check), [n_I], in
    O((n_I + n_T) log n_T); -inf bounds (nothing dropped) give +inf."""
    order = np.argsort(cb, kind="stable")
    cb_s, v_s = cb[order], v[order]
    n = len(cb_s)
    below = np.full(n + 1, np.inf)  # below[p] = min over sorted positions < p of (v - cb)
    with np.errstate(invalid="ignore"):
        np.minimum.accumulate(np.where(np.isneginf(cb_s), np.inf, v_s - cb_s), out=below[1:])
    above = np.full(n + 1, np.inf)  # above[p] = min over sorted positions >= p of v
    if n:
        above[:n] = np.minimum.accumulate(v_s[::-1])[::-1]
    p = np.searchsorted(cb_s, rb, side="left")  # columns with cb_j < rb_i take their own bound
    with np.errstate(invalid="ignore"):
        part_above = np.where(np.isneginf(rb), np.inf, above[p] - rb)
    return u + np.minimum(below[p], part_above)


def blocked_pruned_min(rb: np.ndarray, cb: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The O(n_I n_T) reference of :func:`pruned_bound_min`. Returns [n_I]."""
    with np.errstate(invalid="ignore"):
        r = u[:, None] + v[None, :] - np.minimum(rb[:, None], cb[None, :])
    return np.where(np.isnan(r), np.inf, r).min(1) if r.size else np.full(len(rb), np.inf)


def check_all_pairs(sc: SparseCorrelation, u: np.ndarray, v: np.ndarray, tol: float = CERTIFICATE_TOL,
                    max_per_row: int = 8, rank_one: str = "envelope") -> tuple[float, np.ndarray, np.ndarray]:
    """Largest dual violation over all n_I x n_T pairs, and violating pairs to add as candidates.

    sc: the correlation (n_I <= n_T); u: [n_I], v: [n_T]. Returns ``(violation, rows, cols)``:
    violation = max(0, max over pairs of -r_ij, max_j -v_j), exact for co-firing pairs and for scanned
    rows, an upper bound (the envelope's) for rows that pass; rows/cols: up to ``max_per_row``
    most-violating pairs (r < -tol) per row. rank_one: ``envelope`` or ``blocked`` (reference).
    """
    n_i, n_t = sc.shape
    worst = max(0.0, float(-v.min()) if n_t else 0.0)
    add_r, add_c = [], []
    if sc.nnz:
        r = u[sc.rows] + v[sc.cols] - sc.values
        worst = max(worst, float(-r.min()))
        bad = np.flatnonzero(r < -tol)
        if len(bad):
            sel = _most_violating(sc.rows[bad], r[bad], max_per_row)
            add_r.append(sc.rows[bad][sel])
            add_c.append(sc.cols[bad][sel])
    if rank_one == "envelope":
        bound = u + lower_envelope(sc.b, v, sc.a)
    else:
        bound = blocked_rank_one_min(sc.a, sc.b, u, v)
    starts = sc.row_starts()
    # the bound may be set by a co-firing column: scan the failing rows exactly
    _scan_failing(sc, starts, bound, tol, max_per_row, add_r, add_c,
                  lambda rows: u[rows, None] + v[None, :] + sc.a[rows, None] * sc.b[None, :])
    if n_i:
        worst = max(worst, float(-bound.min()))
    if sc.pruned and n_i:
        worst = max(worst, _check_pruned(sc, u, v, tol, max_per_row, starts, add_r, add_c))
    return worst, _cat(add_r), _cat(add_c)


def _check_pruned(sc: SparseCorrelation, u: np.ndarray, v: np.ndarray, tol: float, max_per_row: int, starts: np.ndarray,
                  add_r: list, add_c: list) -> float:
    """The dropped co-firing pairs' part of :func:`check_all_pairs`: the largest violation of
    ``u_i + v_j >= min(rb_i, cb_j)`` over unlisted pairs (an upper bound of the true one), with the
    most violating unlisted pairs of each failing row appended to ``add_r`` / ``add_c``."""
    bound = pruned_bound_min(sc.row_bound, sc.col_bound, u, v)

    def costs(rows: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # inf - inf where nothing was dropped: no constraint
            r_blk = u[rows, None] + v[None, :] - np.minimum(sc.row_bound[rows, None], sc.col_bound[None, :])
        r_blk[np.isnan(r_blk)] = np.inf
        return r_blk

    _scan_failing(sc, starts, bound, tol, max_per_row, add_r, add_c, costs)
    return max(0.0, float(-bound.min()))


def _scan_failing(sc: SparseCorrelation, starts: np.ndarray, bound: np.ndarray, tol: float, max_per_row: int,
                  add_r: list, add_c: list, costs) -> None:
    """Rows whose per-row ``bound`` is below -tol, scanned exactly in blocks: ``costs(rows) -> [block, n_T]``
    reduced costs of the unlisted pairs' form; listed pairs (checked by their exact value) are skipped.
    ``bound`` of those rows becomes the exact minimum; each row's most violating pairs go to add_r / add_c."""
    failing = np.flatnonzero(bound < -tol)
    block = max(1, (1 << 24) // max(sc.shape[1], 1))
    for s in range(0, len(failing), block):
        rows = failing[s : s + block]
        r_blk = costs(rows)
        for q, i in enumerate(rows):
            r_blk[q, sc.cols[starts[i] : starts[i + 1]]] = np.inf
        bound[rows] = r_blk.min(1)
        bq, bc = np.nonzero(r_blk < -tol)
        if len(bq):
            sel = _most_violating(bq, r_blk[bq, bc], max_per_row)
            add_r.append(rows[bq[sel]])
            add_c.append(bc[sel])


def _cat(xs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, dtype=np.int64)


def _most_violating(rows: np.ndarray, r: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` most negative ``r`` of each row (rows: [Q] row of each entry)."""
    by_r = argsort_stable(r)
    order = by_r[argsort_stable(rows[by_r])]
    return order[rank_in_runs(rows[order]) < k]


__all__ = ["CERTIFICATE_TOL", "blocked_pruned_min", "blocked_rank_one_min", "pruned_bound_min", "check_all_pairs", "dual_potentials", "lower_envelope"]
