"""The dual potentials of the certified sparse solver (issue 17): frontier relaxation against full rounds.

``alignment.certificate.dual_potentials`` finds the duals of a matching optimal on its candidates as
shortest-path labels of the residual graph (Bellman-Ford). It used to relax *every* arc each round; it
now relaxes only the arcs of the nodes whose label moved by more than RELAX_EPS since their arcs were
last relaxed. This runs both, interleaved, on the rounds of one certified solve of uniform random TopK
codes (the hard case), cold (first round, labels from 0) and warm (later rounds, from the previous v),
and checks that both leave every arc's reduced cost >= -RELAX_EPS and pass the same certificate.

    PYTHONPATH=src python benchmarks/dual_relaxation.py --m 16384 --n 50000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sparse_align_codes import make_codes

from dualsae.alignment.certificate import RELAX_EPS, check_all_pairs, dual_potentials
from dualsae.alignment.correlation import CoactivationStats
from dualsae.alignment.sparse_assignment import SparseSolveOptions, _solve_candidates, initial_candidates
from dualsae.core.errors import DataError
from dualsae.core.sorting import unique_sorted


def full_rounds(n_t: int, rows, cols, vals, match, init=None, max_rounds=None):
    """The plain reference: every arc relaxed every round (the code before the frontier version)."""
    n_i = len(match)
    matched_val = np.full(n_i, np.nan)
    on_match = cols == match[rows]
    matched_val[rows[on_match]] = vals[on_match]
    off = ~on_match
    src, dst = torch.from_numpy(cols[off]), torch.from_numpy(match[rows[off]])
    length = torch.from_numpy(matched_val[rows[off]] - vals[off])
    free = np.ones(n_t, dtype=bool)
    free[match] = False
    free_t = torch.from_numpy(free)
    dist = torch.zeros(n_t, dtype=torch.float64) if init is None else torch.from_numpy(np.array(init, dtype=np.float64))
    z = float(dist.min()) if init is not None else 0.0
    for rounds in range(1, (max_rounds or n_t + 2) + 1):
        new = dist.scatter_reduce(0, dst, dist[src] + length, reduce="amin", include_self=True)
        z_new = min(z, float(new.min()))
        new[free_t] = new[free_t].clamp_max(z_new)
        if z - z_new <= RELAX_EPS and float((dist - new).max()) <= RELAX_EPS:
            break
        dist, z = new, z_new
    else:
        raise DataError("not converged")
    v = dist.numpy() - z
    return matched_val - v[match], v, rounds


def worst_arc(rows, cols, vals, u, v) -> float:
    """Most negative reduced cost u_i + v_j - c_ij over the candidate arcs."""
    return float((u[rows] + v[cols] - vals).min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=16384)
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    stats = CoactivationStats(a.m, a.m, sparse=True)
    for ci, ct in make_codes(a.n, a.m, a.k, a.k, 1, a.seed, 4096):
        stats.update(ci, ct)
    sc = stats.sparse_correlation()
    del stats
    n_i, n_t = sc.shape
    print(f"m {a.m:,}, N {a.n:,}, k {a.k}: {n_i:,} x {n_t:,} live, {sc.nnz:,} co-firing pairs")
    opt = SparseSolveOptions()
    cr, cc = initial_candidates(sc, opt)
    u = v = None
    print("| round | start | candidates | full rounds: s (rounds) | frontier: s (rounds) | ratio | worst arc full / frontier | certificate full / frontier |")
    print("|---|---|---|---|---|---|---|---|")
    for rnd in range(1, 8):
        vals = sc.lookup(cr, cc)
        match, _ = _solve_candidates(cr, cc, vals, n_i, n_t, u, v, "auto")  # lapmod when installed
        init = v
        times = {"full": [], "frontier": []}
        out = {}
        for _ in range(a.repeats):
            for name, fn in (("full", full_rounds), ("frontier", dual_potentials)):
                t = time.perf_counter()
                out[name] = fn(n_t, cr, cc, vals, match, init=init)
                times[name].append(time.perf_counter() - t)
        tf, tn = min(times["full"]), min(times["frontier"])
        cert = {name: check_all_pairs(sc, o[0], o[1])[0] for name, o in out.items()}
        print(f"| {rnd} | {'cold' if init is None else 'warm'} | {len(cr):,} | {tf:.2f} s ({out['full'][2]}) | {tn:.2f} s ({out['frontier'][2]}) "
              f"| {tf / tn:.1f}x | {worst_arc(cr, cc, vals, *out['full'][:2]):.1e} / {worst_arc(cr, cc, vals, *out['frontier'][:2]):.1e} "
              f"| {cert['full']:.1e} / {cert['frontier']:.1e} |", flush=True)
        u, v = out["frontier"][0], out["frontier"][1]
        violation, add_r, add_c = check_all_pairs(sc, u, v)
        if violation <= opt.tol or len(add_r) == 0:
            break
        keys = unique_sorted(np.concatenate([cr * n_t + cc, add_r * n_t + add_c]))
        cr, cc = keys // n_t, keys % n_t


if __name__ == "__main__":
    main()
