"""Units per hour of `reproduce synthetic`: one process using every core against one worker per core.

Both sides run the same small plan at the paper's model sizes (d = 256, shared m = 8,192, specific
2 x 4,096, K = 16, batch 256) on fewer rows, each into its own temporary folder, one after the other
on an otherwise idle machine: first `workers=1` (torch's default thread count, i.e. all usable
cores), then `workers=N` with one thread each. Prints the wall times, the ratio, and the largest
relative difference of any metric between the two runs (they differ only in float summation order).

    python benchmarks/parallel_units.py [--workers N] [--n-train 25600] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from dualsae.experiments.synthetic.job import run_plan
from dualsae.experiments.synthetic.plan import SyntheticPlan
from dualsae.files.unit_job import usable_cores as _usable_cores


def unit_metrics(folder: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for path in sorted((folder / "units").glob("*.json")):
        for row in json.loads(path.read_text()):
            out[f"{path.stem}/{row['method']}"] = {k: v for k, v in row.items()
                                                   if isinstance(v, float) and not k.endswith("_seconds")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=_usable_cores())
    ap.add_argument("--n-train", type=int, default=25_600)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    # Two distances x two methods x two seeds = 8 trainings (shared and specific alternate).
    plan = SyntheticPlan.from_settings(distances=(0.3, 0.5), group_sparse_multipliers=(), iso_energy_multipliers=(), seeds=(0, 1), n_train=args.n_train,
                         n_eval=2_048, epochs=(args.epochs,))
    print(f"torch {torch.__version__}, {_usable_cores()} usable cores; 8 trainings of {args.n_train // 256 * args.epochs} steps")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_plan(plan, Path(tmp) / "one", progress=False)
        t_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_plan(plan, Path(tmp) / "many", progress=False, workers=args.workers, threads_per_worker=1)
        t_many = time.perf_counter() - t0
        a, b = unit_metrics(Path(tmp) / "one"), unit_metrics(Path(tmp) / "many")
    assert a.keys() == b.keys(), "the two runs finished different units"
    worst = max(abs(a[u][k] - b[u][k]) / max(abs(a[u][k]), 1e-12) for u in a for k in a[u])
    print(f"1 process x {torch.get_num_threads()} threads : {t_one:7.1f} s")
    print(f"{args.workers} workers x 1 thread   : {t_many:7.1f} s")
    print(f"ratio (units per hour)    : {t_one / t_many:7.2f}x   largest relative metric difference {worst:.1e}")


if __name__ == "__main__":
    main()
