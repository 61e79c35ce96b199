"""Peak resident memory of training over a 1M x 512 float16 store (memory-mapped).

Writes a synthetic store of ``--rows`` x ``--dim`` float16 rows (1M x 512 = 1 GiB on disk) into a
temporary folder, trains one epoch of a specific-method SAE pair over it, and reports the process's
peak RSS next to the store's size and the model + optimizer state. Side by side, it reports the RSS
a plain ``np.load`` of the store would need (the reference: loading it whole).

    python benchmarks/train_memory.py [--rows 1000000] [--dim 512] [--latents 2048] [--epochs 1]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_big_store(folder: Path, rows: int, dim: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("image", "text"):
        arr = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float16, shape=(rows, dim))
        for start in range(0, rows, 65_536):
            stop = min(start + 65_536, rows)
            arr[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32) / dim**0.5
        arr.flush()
        del arr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--latents", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--dir", default=None, help="where to write the temporary store (default: a temp folder)")
    args = ap.parse_args()

    import torch

    from dualsae.store.paired import PairedEmbeddings
    from dualsae.training.config import TrainConfig
    from dualsae.training.trainer import train

    tmp = Path(args.dir or tempfile.mkdtemp(prefix="dualsae-mem-"))
    try:
        t0 = time.time()
        # Written by a child process so the writer's pages never count towards this process's peak.
        import subprocess
        import sys

        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from train_memory import write_big_store; "
                        "from pathlib import Path; write_big_store(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))",
                        str(Path(__file__).parent), str(tmp / "store"), str(args.rows), str(args.dim)], check=True)
        store_mib = sum((tmp / "store" / f"{m}.npy").stat().st_size for m in ("image", "text")) / 2**20
        print(f"store: {args.rows:,} x {args.dim} float16 per modality, {store_mib:,.0f} MiB on disk (written in {time.time() - t0:.0f} s)")
        # Drop the pages the writer left in our address space before measuring.
        base = rss_mib()
        store = PairedEmbeddings.open(tmp / "store", check_values=False)
        cfg = TrainConfig.from_preset("real", method="specific", latents=args.latents, k=args.k, epochs=args.epochs)
        state_mib = 2 * 4 * (2 * (args.latents // 2) * args.dim) * 3 / 2**20  # 2 SAEs x (weights + 2 Adam moments), fp32
        before_peak = peak_mib()
        t0 = time.time()
        peak_seen = [base]

        def watch(step: int, logs: dict) -> None:
            if step % 16 == 0:
                peak_seen[0] = max(peak_seen[0], rss_mib())

        train(store, cfg, None, progress=True, on_step=watch)
        secs = time.time() - t0
        peak = peak_mib()
        print(f"training {cfg.epochs} epoch(s), {args.rows // cfg.batch_size * cfg.epochs} steps in {secs:.0f} s")
        print(f"RSS before training          : {base:8.0f} MiB")
        print(f"peak RSS during training     : {peak:8.0f} MiB (process high-water mark; {before_peak:.0f} MiB before training; "
              f"largest RSS sampled every 16 steps {peak_seen[0]:.0f} MiB)")
        print(f"model + AdamW state (approx.): {state_mib:8.0f} MiB")
        print(f"peak - baseline - state      : {peak - base - state_mib:8.0f} MiB   vs store size {store_mib:,.0f} MiB "
              f"(ratio {(peak - base - state_mib) / store_mib:.2f})")
        # Reference: loading the store whole (what a non-streaming trainer does).
        ref = np.load(tmp / "store" / "image.npy")
        _ = np.load(tmp / "store" / "text.npy")
        print(f"reference np.load of both arrays: RSS now {rss_mib():8.0f} MiB (+{(ref.nbytes * 2) / 2**20:,.0f} MiB of arrays)")
        del torch
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
