"""Cost of checking a model folder's files against its manifest's SHA-256 on every load (issue 20).

Builds a run folder of two random-weight TopK SAEs of ``--latents`` latents each on ``--d``-dim inputs
(the size of a large real run: 65,536 latents, d = 768 is 2 x 403 MB of weights), commits it with a
manifest as ``dualsae train`` does, then times, interleaved over ``--repeats`` rounds with a warm page
cache, ``load_model`` (which verifies) against the same load with the check left out (the plain
reference), and the check alone. Prints each median and the ratio.

    python benchmarks/verify_on_load.py [--latents 65536] [--d 768] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dualsae.files.atomic import write_json
from dualsae.files.outdir import MANIFEST, MANIFEST_FORMAT, check_finished, commit_output, verify_files
from dualsae.models import load
from dualsae.models.sae import SAE, SAEConfig


def build_run(root: Path, latents: int, d: int) -> None:
    torch.manual_seed(0)
    for name in ("image", "text"):
        SAE(SAEConfig(d=d, m=latents, k=32)).save(root / name)
    write_json(root / "config.json", {"format": "dualsae.run/1", "train": {"method": "specific"}, "data": {}})
    write_json(root / "summary.json", {"steps": 0})
    write_json(root / MANIFEST, {"format": MANIFEST_FORMAT, "command": "train", "job": {}, "complete": False})
    commit_output(root)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latents", type=int, default=65_536)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "run"
        build_run(root, args.latents, args.d)
        size = sum(p.stat().st_size for p in root.rglob("*.safetensors"))
        load.load_model(root)  # warm the page cache
        times: dict[str, list[float]] = {"verified": [], "plain": [], "check": []}
        for _ in range(args.repeats):
            t = time.perf_counter()
            load.load_model(root)
            times["verified"].append(time.perf_counter() - t)
            t = time.perf_counter()
            load._load_model(root)  # the plain reference: the same load, no manifest check
            times["plain"].append(time.perf_counter() - t)
            t = time.perf_counter()
            verify_files(root, check_finished(root))
            times["check"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model: 2 SAEs x {args.latents:,} latents x d={args.d}, {size / 1e6:,.0f} MB of safetensors; "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats}")
    print(f"load without check {med['plain']:.3f}s | load_model (with SHA-256 check) {med['verified']:.3f}s | "
          f"check alone {med['check']:.3f}s ({size / 1e6 / med['check']:,.0f} MB/s) | ratio verified/plain {med['verified'] / med['plain']:.2f}x")


if __name__ == "__main__":
    main()
