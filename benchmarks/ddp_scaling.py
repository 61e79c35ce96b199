"""Training steps per second of 1 process against N torchrun ranks (gloo on CPU, nccl on CUDA).

Runs ``dualsae train`` on one synthetic store, alternately as one process and as N ranks started
with ``python -m torch.distributed.run`` (torchrun), ``--rounds`` times each, interleaved, and
reports the training loop's steps per second (``summary.json``: the loop alone, without process
start-up). On CPU one process gets all ``--threads`` torch threads and each of the N ranks gets
threads / N, so both sides use the same cores.

    python benchmarks/ddp_scaling.py [--ranks 2] [--rounds 2] [--steps 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def make_store(folder: Path, n: int, d: int) -> Path:
    from dualsae.store.paired import write_store

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (x + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return write_store(folder, x, y)


def run(store: Path, out: Path, ranks: int, threads: int, args: argparse.Namespace) -> float:
    train = ["-m", "dualsae", "train", "--data", str(store), "--out", str(out), "--split", "all", "--no-progress",
             "--method", args.method, "--latents", str(args.latents), "--k", str(args.k), "--batch-size", str(args.batch),
             "--epochs", "1", "--device", args.device, "--checkpoint-every", "100000"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(threads // ranks, 1))}
    if ranks == 1:
        cmd = [sys.executable, *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port", str(args.port), *train]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    return summary["steps"] / summary["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="steps per run (one epoch of steps x batch pairs)")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--latents", type=int, default=8192)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--method", default="specific")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--port", type=int, default=29517)
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp) / "store", args.steps * args.batch, args.d)
        rates: dict[int, list[float]] = {1: [], args.ranks: []}
        for r in range(args.rounds):
            for n in (1, args.ranks):  # interleaved: a slow phase of a shared machine hits both sides
                rate = run(store, Path(tmp) / f"run-{r}-{n}", n, args.threads, args)
                rates[n].append(rate)
                print(f"round {r}: {n} rank(s): {rate:.3f} steps/s", flush=True)
    one, many = rates[1], rates[args.ranks]
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}; {args.method}, d {args.d}, "
          f"latents {args.latents}, k {args.k}, batch {args.batch}, {args.steps} steps per run")
    print(f"1 process        : median {statistics.median(one):.3f} steps/s  (max {max(one):.3f})")
    print(f"{args.ranks} ranks          : median {statistics.median(many):.3f} steps/s  (max {max(many):.3f})")
    print(f"speed-up (median): {statistics.median(many) / statistics.median(one):.2f}x")


if __name__ == "__main__":
    main()
