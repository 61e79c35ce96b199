"""The exact optimum of paper eq. 6 on a sparse C, certified against every pair.

1. Candidates: each live image latent's ``top_k`` co-firing correlations, each text latent's
   ``top_k``, the ``rank_one_cols`` best columns of the rank-one remainder for every row (c = -a_i b_j
   is largest at the smallest b_j when a_i >= 0, at the largest when a_i < 0), and the pairs (a, a)
   so that a full matching of the smaller side always exists among the candidates.
2. Solve: :func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching` (LAPJVsp), or lapx's
   ``lapmod`` on square problems, on the candidates with weights ``max(c) + 1 - c_ij`` (>= 1; a constant
   shift leaves the optimal full matching unchanged); later rounds on the previous duals' reduced costs
   (:func:`_solve_candidates`).
3. Certify (:mod:`dualsae.alignment.certificate`): dual potentials of the candidate optimum, then
   every one of the n_I x n_T reduced costs checked (co-firing pairs exactly, the rank-one rest by a
   lower envelope); violating pairs become candidates and the solve repeats until the largest dual
   violation is at most ``tol``. The result is then optimal over all pairs, not only the candidates.

Rectangular problems (n_I != n_T) are solved with the smaller side as rows; the larger side's
unmatched latents carry dual 0 and every other dual is >= 0, so they are covered by the certificate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from dualsae.alignment.certificate import CERTIFICATE_TOL, check_all_pairs, dual_potentials
from dualsae.alignment.sparse_correlation import SparseCorrelation
from dualsae.core.errors import ConfigError, DataError
from dualsae.core.sorting import argsort_stable, rank_in_runs, unique_sorted


@dataclass(frozen=True)
class SparseSolveOptions:
    """top_k: co-firing candidates per latent (each side); rank_one_cols: rank-one candidates per row;
    tol: the largest dual violation accepted; max_rounds: solve-certify rounds before giving up
    (the result is then reported uncertified); rank_one_check: ``envelope`` or ``blocked``; backend: the
    candidate solve, ``scipy`` (LAPJVsp), ``lapmod`` (lapx's sparse Jonker-Volgenant, square problems
    only) or ``auto`` (lapmod when lapx is installed and n_I = n_T, else scipy)."""

    top_k: int = 8
    rank_one_cols: int = 4
    tol: float = CERTIFICATE_TOL
    max_rounds: int = 50
    rank_one_check: str = "envelope"
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.rank_one_cols < 0 or self.max_rounds < 1 or self.tol <= 0:
            raise ConfigError(f"sparse solver options: top_k >= 1, rank_one_cols >= 0, max_rounds >= 1, tol > 0; found {self}")
        if self.backend not in ("auto", "scipy", "lapmod"):
            raise ConfigError(f"sparse solver backend must be auto, scipy or lapmod, found {self.backend!r}")
        if self.rank_one_check not in ("envelope", "blocked"):
            raise ConfigError(f"rank_one_check must be envelope or blocked, found {self.rank_one_check!r}")


def _top_per_group(groups: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``values`` within each group.

    One integer sort on ``group << 40 | (1 - value) quantised to 40 bits`` (|c| <= 1; torch's stable sort,
    :mod:`dualsae.core.sorting`), which never interleaves groups. Values closer than 2^-39 may swap ranks, which only
    changes which of two near-equal pairs is a candidate, never the certified result."""
    q = np.rint((1.0 - np.clip(values, -1.0, 1.0)) * float((1 << 39) - 1)).astype(np.int64)
    order = argsort_stable((groups.astype(np.int64) << 40) | q)
    return order[rank_in_runs(groups[order]) < k]


def top_per_group(groups: np.ndarray, values: np.ndarray, k: int, n_groups: int, oversample: int = 4,
                  order_keys: np.ndarray | None = None) -> np.ndarray:
    """The same entries as :func:`_top_per_group` (each group's ``k`` largest values), sorting only a
    prefiltered part: the entries at or above the global value tau that about ``oversample * k * n_groups``
    entries reach (one selection over a strided sample). A group with >= k of them has its top k among them; the groups
    with fewer take all their entries. On the 8.5e7 co-firing pairs of 16,384 latents this sorts ~1e6
    entries instead of 8.5e7 twice. groups: [P] in [0, n_groups); ``order_keys`` [P] (distinct): break
    ties among equal values by these instead of by position (entries given in any order then select as
    if sorted by them)."""
    p, target = len(values), oversample * k * n_groups
    cand = np.arange(p)
    if p > 2 * target:
        # tau from an evenly strided sample (any tau is exact: short groups are redone below); the sample
        # keeps >= max(4 target, 2^20) entries, so about ``target`` entries still reach it.
        stride = max(1, p // max(4 * target, 1 << 20))
        sample = values[::stride]
        tau = np.partition(sample, len(sample) - max(1, target // stride))[len(sample) - max(1, target // stride)]
        cand = np.flatnonzero(values >= tau)
        short = np.bincount(groups[cand], minlength=n_groups) < k
        if short.any():
            cand = np.union1d(cand, np.flatnonzero(short[groups]))
    if order_keys is not None:
        cand = cand[argsort_stable(order_keys[cand])]
    return cand[_top_per_group(groups[cand], values[cand], k)]


def initial_candidates(sc: SparseCorrelation, opt: SparseSolveOptions) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (rows [E], cols [E], live positions, distinct) of step 1 (n_I <= n_T)."""
    n_i, n_t = sc.shape
    parts_r, parts_c = [np.arange(n_i)], [np.arange(n_i)]  # (a, a): a full matching exists
    if sc.nnz:
        for sel in (top_per_group(sc.rows, sc.values, opt.top_k, n_i), top_per_group(sc.cols, sc.values, opt.top_k, n_t)):
            parts_r.append(sc.rows[sel])
            parts_c.append(sc.cols[sel])
    r1 = min(opt.rank_one_cols, n_t)
    if r1:
        order = argsort_stable(sc.b)
        low, high = order[:r1], order[::-1][:r1]
        best = np.where((sc.a >= 0)[:, None], low[None, :], high[None, :])  # [n_I, r1]
        parts_r.append(np.repeat(np.arange(n_i), r1))
        parts_c.append(best.reshape(-1))
    keys = unique_sorted(np.concatenate(parts_r).astype(np.int64) * n_t + np.concatenate(parts_c))
    return keys // n_t, keys % n_t


# A lapmod matching whose duals need more Bellman-Ford rounds than lapmod_guard_rounds(n_T) is re-solved by
# scipy: a non-optimal matching (a negative cycle) never converges. Rounds grow slowly with m (145-507 at
# 16,384-65,536 latents, 732-1,214 per solve round at 262,144), so the guard is LAPMOD_GUARD_ROUNDS or n_T / 16,
# whichever is larger: far above what an optimal matching needs, and since a round relaxes only the arcs
# of nodes that moved, a bounded cost when lapmod errs.
LAPMOD_GUARD_ROUNDS = 4096


def lapmod_guard_rounds(n_t: int) -> int:
    return max(LAPMOD_GUARD_ROUNDS, n_t // 16)


def _lapmod_available() -> bool:
    try:
        import lap
    except ImportError:
        return False
    return hasattr(lap, "lapmod")


# A problem with n_I < n_T is made square by n_T - n_I dummy rows joined to every column at one cost
# (they take the columns left free) when those edges are at most this share of the candidates, or this few.
SQUARE_PAD_SHARE = 0.5
SQUARE_PAD_EDGES = 1 << 16


def _solve_candidates(cr: np.ndarray, cc: np.ndarray, vals: np.ndarray, n_i: int, n_t: int, u: np.ndarray | None,
                      v: np.ndarray | None, backend: str) -> tuple[np.ndarray, str]:
    """An optimal full matching of the rows on the candidate edges (cr, cc: [E], exact c ``vals``).

    Returns ``(match [n_I] column of each row, solver used)``. Weights are ``max(c) + 1 - c`` (>= 1) in the
    first round. Later rounds start from the previous round's duals (u, v): the weights are the reduced costs
    ``u_i + v_j - c_ij``, shifted per row to a minimum of 1 (> 0: csgraph drops zeros). Per-row and
    per-column constants add the same amount to every full matching of a square problem, so the optimum
    is unchanged, and the previous optimum's edges now cost the minimum: the solver's initialisation
    starts near it (15.9 s against 23.4 s for scipy, 7.0 s against 18.4 s for lapmod, on a second round
    at 65,536 x 65,536 with 1.2e6 candidates).

    n_I < n_T (dead latents on one side) is made square when cheap (``SQUARE_PAD_SHARE``): dummy rows
    joined to every column at one cost (1 cold; ``v_j + 1`` warm, the dual of a dummy row being 0) take
    the columns the real rows leave, which changes no real row's optimum. Otherwise the rectangular
    problem is solved cold by scipy (a column constant is not invariant when some columns stay free)."""
    pad = n_t - n_i
    square = pad == 0 or pad * n_t <= max(SQUARE_PAD_SHARE * len(cr), SQUARE_PAD_EDGES)
    warm = u is not None and square
    if warm:
        w = u[cr] + v[cc] - vals
        w = w - np.minimum.reduceat(w, np.searchsorted(cr, np.arange(n_i)))[cr] + 1.0  # cr sorted, every row present
    else:
        w = (float(vals.max()) + 1.0) - vals  # >= 1 (a constant shift: same optimum); lapmod needs w >= 0
    if square and pad:
        cr = np.concatenate([cr, np.repeat(np.arange(n_i, n_t), n_t)])
        cc = np.concatenate([cc, np.tile(np.arange(n_t), pad)])
        w = np.concatenate([w, np.tile(v + 1.0 if warm else np.ones(n_t), pad)])
    rows = n_t if square else n_i
    use_lapmod = square and (backend == "lapmod" or (backend == "auto" and _lapmod_available()))
    if backend == "lapmod" and not use_lapmod:
        raise ConfigError("sparse solver backend 'lapmod' needs lapx (pip install lapx) and a square problem "
                          f"(n_I = n_T, or n_T - n_I dummy rows whose n_T edges each are within {SQUARE_PAD_SHARE:.0%} of the candidates)")
    graph = csr_matrix((w, (cr, cc)), shape=(rows, n_t))
    if use_lapmod:
        import lap

        graph.sort_indices()
        _, x, _ = lap.lapmod(rows, graph.data, graph.indptr, graph.indices, fast=True, return_cost=True)
        return np.asarray(x[:n_i], dtype=np.int64), "lapmod"
    row_ind, col_ind = min_weight_full_bipartite_matching(graph)
    match = np.empty(rows, dtype=np.int64)
    match[row_ind] = col_ind
    return match[:n_i], "scipy"


def solve_sparse(sc: SparseCorrelation, opt: SparseSolveOptions = SparseSolveOptions()) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Maximum-total assignment of eq. 6 over all n_I x n_T pairs of ``sc``, certified.

    Returns ``(rows [K], cols [K], total, info)``: live positions (rows increasing), K = min(n_I, n_T),
    the exact total, and ``info`` (candidate counts, rounds, timings, and ``certificate``: the largest
    dual violation, the tolerance, the duality gap and whether it is certified). A pruned ``sc`` needs
    :func:`solve_pruned`.
    """
    if sc.pruned:
        raise ConfigError("a pruned correlation lists only some co-firing pairs: solve it with solve_pruned and its resolver")
    return solve_pruned(sc, None, opt)[:4]


Resolver = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def solve_pruned(sc: SparseCorrelation, resolve: Resolver | None, opt: SparseSolveOptions = SparseSolveOptions()
                 ) -> tuple[np.ndarray, np.ndarray, float, dict, SparseCorrelation]:
    """:func:`solve_sparse` on a pruned C (``sc.row_bound`` set): every candidate pair the solve uses that
    ``sc`` does not list is resolved first, ``resolve(rows [Q], cols [Q]) -> (values [Q], counts [Q])`` (its
    exact c from the codes: :class:`dualsae.alignment.pruning.CodeResolver`), and the certificate also
    bounds the dropped pairs (:func:`dualsae.alignment.certificate.check_all_pairs`), so the optimum is
    certified over all pairs. Returns solve_sparse's four values and ``sc`` with the resolved pairs listed
    (``info["resolved_pairs"]`` counts them)."""
    if sc.pruned and resolve is None:
        raise ConfigError("a pruned correlation needs a resolver of the pairs it dropped")
    flip = sc.shape[0] > sc.shape[1]
    work = sc.transposed() if flip else sc
    if flip and resolve is not None:
        inner = resolve
        resolve = lambda r, c: inner(c, r)  # noqa: E731  (the transposed problem's rows are text latents)
    resolved = 0
    n_i, n_t = work.shape
    info: dict = {"solver": "sparse", "rank_one_check": opt.rank_one_check}
    if n_i == 0:
        empty = np.zeros(0, dtype=np.int64)
        info.update(candidates_initial=0, candidates_final=0, rounds=0,
                    certificate={"max_dual_violation": 0.0, "tolerance": opt.tol, "duality_gap": 0.0, "certified": True})
        return empty, empty, 0.0, info, sc
    t0 = time.perf_counter()
    cr, cc = initial_candidates(work, opt)
    info["candidates_initial"] = int(len(cr))
    # resolve_s: exact c of candidates a pruned C does not list (the resolver); solve_s: the matchings themselves.
    timing = {"candidates_s": time.perf_counter() - t0, "resolve_s": 0.0, "solve_s": 0.0, "duals_s": 0.0, "check_s": 0.0}
    violation, u, v = np.inf, None, None
    relax: list[int] = []
    solvers: list[str] = []
    for rounds in range(1, opt.max_rounds + 1):
        t = time.perf_counter()
        if work.pruned:  # candidates the pruned C does not list get their exact c before the solve uses them
            missing = np.flatnonzero(~work.listed(cr, cc))
            if len(missing):
                mv, mc = resolve(cr[missing], cc[missing])
                work = work.with_entries(cr[missing], cc[missing], mv, mc)
                resolved += len(missing)
        vals = work.lookup(cr, cc)
        t_solve = time.perf_counter()
        timing["resolve_s"] += t_solve - t
        match, used = _solve_candidates(cr, cc, vals, n_i, n_t, u, v, opt.backend)
        t1 = time.perf_counter()
        timing["solve_s"] += t1 - t_solve
        try:
            u, v, r = dual_potentials(n_t, cr, cc, vals, match, init=v, max_rounds=None if used == "scipy" else lapmod_guard_rounds(n_t))
        except DataError:  # lapmod's matching not optimal on the candidates: scipy's is
            match, used = _solve_candidates(cr, cc, vals, n_i, n_t, u, v, "scipy")
            u, v, r = dual_potentials(n_t, cr, cc, vals, match, init=v)
            used = "scipy (after lapmod)"
        solvers.append(used)
        relax.append(r)
        t2 = time.perf_counter()
        timing["duals_s"] += t2 - t1
        violation, add_r, add_c = check_all_pairs(work, u, v, tol=opt.tol, rank_one=opt.rank_one_check)
        timing["check_s"] += time.perf_counter() - t2
        if violation <= opt.tol or len(add_r) == 0:
            break
        keys = unique_sorted(np.concatenate([cr * n_t + cc, add_r * n_t + add_c]))
        cr, cc = keys // n_t, keys % n_t
    info["round_solvers"] = solvers
    total_vals = work.lookup(np.arange(n_i), match)
    total = float(total_vals.sum())
    gap = float(u.sum() + v.sum() - total)
    if work.pruned:
        info["resolved_pairs"] = resolved
    info.update(candidates_final=int(len(cr)), rounds=rounds, relaxation_rounds=int(sum(relax)), relaxation_rounds_by_round=relax,
                timing={k: round(x, 3) for k, x in timing.items()},
                certificate={"max_dual_violation": float(violation), "tolerance": opt.tol, "duality_gap": gap,
                             "certified": bool(violation <= opt.tol and abs(gap) <= opt.tol * max(n_i, 1))})
    rows, cols = np.arange(n_i), match
    if flip:
        rows, cols = cols, rows
        order = np.argsort(rows, kind="stable")
        rows, cols = rows[order], cols[order]
        work = work.transposed()
    return rows.astype(np.int64), cols.astype(np.int64), total, info, work


__all__ = ["Resolver", "SparseSolveOptions", "initial_candidates", "solve_pruned", "solve_sparse"]
