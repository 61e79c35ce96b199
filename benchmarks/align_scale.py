"""Post-hoc alignment at research scale (issue 17, point 5): stage by stage, against m and N.

For every store size N (App. E.2 generator at d 768, written streaming into memory-mapped .npy files)
and every width m per modality, this script

1. trains a pair of specific TopK SAEs briefly (``--train-steps`` steps of ``--batch`` pairs on the first
   rows of the store: the correlations must come from *trained* SAEs, whose correlation matrices are much
   harder for assignment solvers than random codes' are), kept in ``OUT/train-N<N>-m<m>/`` and reused;
2. aligns them through the public API, one stage at a time, printing each stage's wall time and peak RSS:
   statistics (eq. 5 over all N rows: ``coactivation_correlation``), assignment (eq. 6:
   ``dualsae.align(pair, stats=...)``, which also builds the permutation of eq. 7 in memory), permutation
   and save (``AlignmentResult.save``), and the certificate ``alignment.json`` records;
3. beside it, where the dense [m, m] path fits (``--dense-max-m``), today's dense statistics and dense
   solver on the same SAEs, and whether both reach the same total of eq. 6.

The sparse statistics / certified solver come from the ``sparse-align`` work (issue 17 points 1-2). The
script asks the installed ``dualsae.align`` which options it has (``stats_mode``, ``solver`` names) and
runs what there is; where the certificate field is absent it prints ``-``.

Peak RSS per stage: a thread samples the process's resident set every 20 ms and keeps the largest value
since the stage began (the process's own ru_maxrss never comes down, so it cannot tell stages apart).

The full grid is long (hours; the 2.8M store is 17 GB on disk): ``--ns`` / ``--ms`` pick cells. The
smallest cell, to check that it runs:

    PYTHONPATH=src .venv/bin/python benchmarks/align_scale.py --ns 100000 --ms 4096 --out /tmp/align_scale

The full grid (docs/benchmarks.md):

    PYTHONPATH=src .venv/bin/python benchmarks/align_scale.py --out /work/align_scale
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from dualsae import align, load
from dualsae.alignment import assignment as assignment_module
from dualsae.alignment.coactivation import coactivation_correlation
from dualsae.store.generator import SynthConfig, write_synthetic
from dualsae.store.paired import open_store
from dualsae.training.config import TrainConfig
from dualsae.training.trainer import train

NS = (100_000, 1_000_000, 2_800_000)
MS = (4096, 16_384, 65_536, 262_144)


class PeakRSS:
    """The largest resident set (MiB) seen since :meth:`reset`, sampled by a daemon thread, and the largest
    *anonymous* part of it (resident minus file-backed pages): the memory-mapped store's pages that encoding
    read count in the resident set (6 GB at 10^6 rows of d 768) but are page cache the kernel can drop."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.peak, self.peak_anon = every, 0.0, 0.0
        self.history: list[tuple[float, float, float]] = []  # (perf_counter, MiB, anonymous MiB) since reset
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def sample() -> tuple[float, float]:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        page = os.sysconf("SC_PAGE_SIZE") / 2**20
        return int(fields[1]) * page, (int(fields[1]) - int(fields[2])) * page

    @classmethod
    def now(cls) -> float:
        return cls.sample()[0]

    def _run(self) -> None:
        while True:
            total, anon = self.sample()
            self.peak, self.peak_anon = max(self.peak, total), max(self.peak_anon, anon)
            self.history.append((time.perf_counter(), total, anon))
            time.sleep(self.every)

    def reset(self) -> None:
        self.peak, self.peak_anon = self.sample()
        self.history = []

    def peak_between(self, start: float, end: float) -> tuple[float, float]:
        """(MiB, anonymous MiB): the largest samples taken in [start, end] (perf_counter times), for stages that
        run inside one call and are told apart afterwards by the times it records."""
        inside = [(t, a) for when, t, a in self.history if start <= when <= end] or [self.sample()]
        return max(t for t, _ in inside), max(a for _, a in inside)

    def read(self) -> float:
        return max(self.peak, self.now())

    def read_anon(self) -> float:
        return max(self.peak_anon, self.sample()[1])


def make_store(folder: Path, n: int, args: argparse.Namespace) -> Path | None:
    """The App. E.2 store of n training pairs at d = args.d (written once), or None when the disk is short."""
    if (folder / "synth.json").exists():
        return folder
    need = 2 * (n + args.eval_rows) * args.d * 4 * 1.05 + 2**30
    free = shutil.disk_usage(folder.parent).free
    if free < need:
        print(f"skip N={n:,}: the store needs {need / 2**30:.1f} GiB on disk, {folder.parent} has {free / 2**30:.1f} GiB free")
        return None
    cfg = SynthConfig(d=args.d, n_shared=args.concepts // 2, n_image=args.concepts // 4, n_text=args.concepts // 4,
                      sparsity=1.0 - args.active / args.concepts, n_train=n, n_eval=args.eval_rows, seed=0)
    t0 = time.perf_counter()
    write_synthetic(cfg, folder, progress=False)
    print(f"store N={n:,} d={args.d}: written in {time.perf_counter() - t0:.0f} s ({folder})", flush=True)
    return folder


def trained_pair(store_dir: Path, n: int, m: int, args: argparse.Namespace, out: Path):
    """A specific pair of m latents trained for ``args.train_steps`` steps (reused when already there)."""
    run = out / f"train-N{n}-m{m}"
    if (run / "summary.json").exists():
        pair = load(run)  # an SAEPair
        if pair.sae_for("image").m == m:
            return pair
        raise SystemExit(f"{run}: holds SAEs of {pair.sae_for('image').m:,} latents, not {m:,}; remove it to retrain")
    store = open_store(store_dir).split("train")
    rows = min(store.n, args.train_steps * args.batch)
    # "latents" is the shared SAE's m; each specific SAE gets half of it.
    config = TrainConfig.from_preset("real", method="specific", latents=2 * m, k=args.k, batch_size=args.batch,
                                     epochs=max(1, math.ceil(args.train_steps * args.batch / rows)),
                                     checkpoint_every=10**9, log_every=50)
    t0 = time.perf_counter()
    pair = train(store.subset(np.arange(rows)), config, out_dir=run, progress=False)
    steps = config.epochs * math.ceil(rows / args.batch)
    print(f"  trained m={m:,}: {steps} steps of {args.batch} over {rows:,} rows in {time.perf_counter() - t0:.0f} s", flush=True)
    return pair


def _supported(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def align_stages(pair, store, stats_mode: str, solver: str, folder: Path, rss: PeakRSS, batch: int) -> dict:
    """The three stages of one alignment; {stage: (seconds, peak MiB, peak anonymous MiB)}, the certificate and the total."""
    out: dict = {}
    kwargs = {"stats": stats_mode} if _supported(coactivation_correlation, "stats") else {}
    rss.reset()
    t0 = time.perf_counter()
    stats = coactivation_correlation(pair, store, batch_size=batch, progress=False, **kwargs)
    out["statistics"] = (time.perf_counter() - t0, rss.read(), rss.read_anon())
    rss.reset()
    t0 = time.perf_counter()
    extra = {"release_stats": True} if _supported(align, "release_stats") else {}
    result = align(pair, stats=stats, solver=solver, progress=False, **extra)
    del stats
    out["assignment"] = (time.perf_counter() - t0, rss.read(), rss.read_anon())
    rss.reset()
    t0 = time.perf_counter()
    result.save(folder)
    out["permutation+save"] = (time.perf_counter() - t0, rss.read(), rss.read_anon())
    del result
    return _summary(out, folder)


def align_pruned(pair, store, folder: Path, rss: PeakRSS, batch: int) -> dict:
    """Statistics and assignment in one ``align(stats_mode="pruned")`` call (the pruned statistics re-read the
    held codes during the solve, so the two cannot run as separate calls), told apart by alignment.json's
    timing; then the permutation and save. Same fields as :func:`align_stages`."""
    rss.reset()
    t0 = time.perf_counter()
    result = align(pair, store, stats_mode="pruned", solver="sparse", batch_size=batch, progress=False)
    t1 = time.perf_counter()
    timing = result.report["timing"]
    t_split = t0 + timing["correlation_s"]
    out: dict = {"statistics": (timing["correlation_s"], *rss.peak_between(t0, t_split)),
                 "assignment": (t1 - t_split, *rss.peak_between(t_split, t1))}
    rss.reset()
    t0 = time.perf_counter()
    result.save(folder)
    out["permutation+save"] = (time.perf_counter() - t0, rss.read(), rss.read_anon())
    return _summary(out, folder)


def _summary(out: dict, folder: Path) -> dict:
    """``out`` with the solver, certificate, total and solver breakdown of ``folder``'s alignment.json."""
    report = json.loads((folder / "alignment.json").read_text())
    details = report.get("solver_details") or {}
    cert = details.get("certificate")
    out["solver"] = details.get("solver", report.get("solver", "?"))
    out["certificate"] = "-" if cert is None else cert.get("max_dual_violation", cert)
    out["total"] = report.get("total_matched_correlation")
    out["live"] = report.get("live")
    out["statistics_kind"] = report.get("statistics", "dense")
    keys = ("rounds", "candidates_initial", "candidates_final", "timing", "round_solvers", "relaxation_rounds",
            "relaxation_rounds_by_round", "pruning")
    out["solver_breakdown"] = {k: details[k] for k in keys if k in details}
    return out


def _solver_names() -> tuple[str, str]:
    """(the scalable solver, the dense one) among those the installed dualsae offers."""
    names = getattr(assignment_module, "ALIGN_SOLVERS", None) or getattr(assignment_module, "SOLVERS", ("auto",))
    return ("sparse" if "sparse" in names else "auto"), ("dense" if "dense" in names else "auto")


def print_cell(n: int, m: int, path: str, res: dict) -> None:
    cert = res["certificate"]
    cert_s = f"{cert:.2e}" if isinstance(cert, float) else str(cert)
    stages = "  ".join(f"{name} {t:7.1f} s {p / 1024:5.2f} GiB (anon {a / 1024:5.2f})" for name, (t, p, a) in
                       ((k, res[k]) for k in ("statistics", "assignment", "permutation+save")))
    print(f"  N={n:>9,} m={m:>7,} {path:<6} [{res['statistics_kind']} stats, solver {res['solver']}] {stages}  "
          f"certificate {cert_s}  total {res['total']:.4f}  live {res['live']}", flush=True)
    if res.get("solver_breakdown"):
        print(f"    sparse solver: {json.dumps(res['solver_breakdown'])}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default=",".join(str(n) for n in NS), help="store sizes N (training pairs), comma-separated")
    ap.add_argument("--ms", default=",".join(str(m) for m in MS), help="latents per modality, comma-separated")
    ap.add_argument("--out", required=True, help="working folder: stores, trained pairs, aligned folders")
    ap.add_argument("--d", type=int, default=768, help="embedding dimension (default 768)")
    ap.add_argument("--k", type=int, default=32, help="TopK's k (default 32)")
    ap.add_argument("--concepts", type=int, default=8192, help="generator concepts n (half shared; default 8,192)")
    ap.add_argument("--active", type=float, default=40.0, help="mean active concepts per pair (sets the sparsity s)")
    ap.add_argument("--eval-rows", type=int, default=1000, help="rows of the generator's test split")
    ap.add_argument("--train-steps", type=int, default=200, help="training steps per pair (default 200)")
    ap.add_argument("--batch", type=int, default=1024, help="training batch (default 1,024)")
    ap.add_argument("--stats-batch", type=int, default=4096, help="rows per statistics batch")
    ap.add_argument("--dense-max-m", type=int, default=16_384, help="largest m that also runs the dense path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale-stats", choices=("sparse", "pruned"), default="sparse",
                    help="statistics of the scalable path: all co-firing pairs (sparse) or each latent's strongest "
                         "pairs per tile (pruned: memory bounded by the held codes, not by the pairs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rss = PeakRSS()
    scalable, dense_solver = _solver_names()
    print(f"torch {torch.__version__}, {args.threads} threads; solvers: scalable '{scalable}', dense '{dense_solver}'; "
          f"stats modes: {'dense / sparse' if _supported(coactivation_correlation, 'stats') else 'dense only (this dualsae)'}")
    for n in (int(float(v)) for v in args.ns.split(",")):
        store_dir = make_store(out / f"store-N{n}", n, args)
        if store_dir is None:
            continue
        store = open_store(store_dir).split("train")
        for m in (int(float(v)) for v in args.ms.split(",")):
            try:
                pair = trained_pair(store_dir, n, m, args, out)
            except (MemoryError, RuntimeError) as e:
                print(f"  N={n:,} m={m:,}: training stops here ({type(e).__name__}: {e})")
                break
            paths = [("scale", "sparse" if scalable == "sparse" else "auto", scalable)]
            if scalable == "auto" and not _supported(coactivation_correlation, "stats"):
                paths = [("dense", "dense", dense_solver)]  # this dualsae has the dense path only
            elif m <= args.dense_max_m:
                paths.append(("dense", "dense", dense_solver))
            for name, stats_mode, solver in paths:
                folder = out / f"aligned-N{n}-m{m}-{name}"
                try:
                    if name == "scale" and args.scale_stats == "pruned":
                        res = align_pruned(pair, store, folder, rss, args.stats_batch)
                    else:
                        res = align_stages(pair, store, stats_mode, solver, folder, rss, args.stats_batch)
                except (MemoryError, RuntimeError) as e:
                    print(f"  N={n:,} m={m:,} {name}: stops here ({type(e).__name__}: {e})", flush=True)
                    continue
                print_cell(n, m, name, res)
            del pair


if __name__ == "__main__":
    sys.exit(main())
