"""Assignment (eq. 6): lapx's Jonker-Volgenant ``lapjvr`` against ``scipy.optimize.linear_sum_assignment``
on the same correlation-like matrices. Prints both timings, the ratio, and the difference of the
optimal totals (both solvers are exact, so it must be ~0).

Matrix kinds (both by default): ``planted`` looks like a real C: small negative noise (latents that do not
coactivate have c slightly below 0), one strong partner per row under a hidden permutation, and a
few extra positive entries; ``uniform`` is i.i.d. uniform on [-0.1, 1].

    python benchmarks/assignment.py [--m 2048 8192] [--kind planted uniform]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dualsae.alignment.assignment import solve_assignment


def make_matrix(m: int, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.uniform(-0.1, 1.0, size=(m, m))
    c = rng.normal(-0.01, 0.02, size=(m, m))
    c[np.arange(m), rng.permutation(m)] += rng.beta(2, 2, size=m)
    extra = rng.integers(0, m, size=(4 * m, 2))
    c[extra[:, 0], extra[:, 1]] += rng.uniform(0, 0.5, size=4 * m)
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, nargs="+", default=[2048, 8192], help="matrix sizes (live latents)")
    ap.add_argument("--kind", choices=("planted", "uniform"), nargs="+", default=["planted", "uniform"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for solver in ("lapjv", "scipy"):  # warm-up: imports and native libraries load outside the timing
        solve_assignment(make_matrix(8, "uniform", 0), solver)
    print(f"{'m':>6} {'kind':>8} {'lapjv (s)':>10} {'scipy (s)':>10} {'scipy/lapjv':>12} {'|total diff|':>13}")
    for m, kind in ((m, kind) for m in args.m for kind in args.kind):
        c = make_matrix(m, kind, args.seed)
        t = time.perf_counter()
        _, _, tot_l = solve_assignment(c, "lapjv")
        t_l = time.perf_counter() - t
        t = time.perf_counter()
        _, _, tot_s = solve_assignment(c, "scipy")
        t_s = time.perf_counter() - t
        print(f"{m:>6} {kind:>8} {t_l:>10.2f} {t_s:>10.2f} {t_s / t_l:>11.1f}x {abs(tot_l - tot_s):>13.2e}", flush=True)


if __name__ == "__main__":
    main()
