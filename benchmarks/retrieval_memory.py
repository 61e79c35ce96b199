"""Memory per gallery row of ``eval``'s sparse retrieval, and the largest gallery one machine holds.

Runs the Table-1 retrieval (``cross_modal_retrieval``: encode both modalities to sparse codes,
rank every query against the whole gallery in chunks) on stores of two sizes, each in a fresh
process, and reads the peak resident size. The slope between the two sizes is the memory per
pair (codes of both modalities, normalised copies, protocol keys, meta rows); the intercept the
fixed part (torch, the model, the 128 MB score chunk). The largest gallery a machine of
``--ram-gib`` holds is then ``(ram - fixed) / slope``. Nothing near that size is allocated.

    python benchmarks/retrieval_memory.py [--sizes 8000 32000] [--ram-gib 24]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from dualsae.data import PairedEmbeddings, write_store
from dualsae.metrics.retrieval import cross_modal_retrieval
from dualsae.pair import SAEPair
from dualsae.sae import SAE, SAEConfig
n, d, m, k, folder = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rng = np.random.default_rng(0)
x = rng.standard_normal((n, d)).astype(np.float16)
write_store(folder, x, x, [{"caption": f"caption {i}", "group": i} for i in range(n)], dtype=np.float16)
del x
store = PairedEmbeddings.open(folder, check_values=False)
sae_i, sae_t = SAE(SAEConfig(d=d, m=m, k=k)), SAE(SAEConfig(d=d, m=m, k=k))
pair = SAEPair("specific", sae_i, sae_t)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
res = cross_modal_retrieval(pair, store, positives="group")
print(json.dumps({"n": n, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "before_kib": before,
                  "seconds": time.perf_counter() - t, "r1": res["image_to_text"]["R@1"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs=2, default=[8000, 32000])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--m", type=int, default=8192)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--ram-gib", type=float, default=24.0)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            out = subprocess.run([sys.executable, "-c", _CHILD, str(n), str(args.d), str(args.m), str(args.k), str(Path(tmp) / f"s{n}")],
                                 check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"gallery {n:>9,} pairs: peak RSS {r['peak_kib'] / 1024:8.1f} MiB, retrieval {r['seconds']:.1f} s", flush=True)
    (a, b) = rows
    slope = (b["peak_kib"] - a["peak_kib"]) * 1024 / (b["n"] - a["n"])
    fixed = a["peak_kib"] * 1024 - slope * a["n"]
    largest = (args.ram_gib * 2**30 - fixed) / slope
    q_time = b["seconds"] / b["n"] ** 2  # the ranking is O(Q G k): time grows with the square
    print(f"memory per pair {slope:,.0f} bytes, fixed {fixed / 2**20:,.0f} MiB -> largest gallery in {args.ram_gib:g} GiB: "
          f"{largest / 1e6:,.1f}M pairs; all-vs-all ranking of that gallery here would take ~{q_time * largest ** 2 / 86400:,.0f} days "
          f"(measured {b['seconds']:.1f} s at {b['n']:,})")


if __name__ == "__main__":
    main()
