"""Memory per gallery row of ``eval``'s sparse retrieval, and the largest gallery one machine holds.

Runs the steps of the Table-1 retrieval (``cross_modal_retrieval``: open the store with its meta,
encode both modalities to sparse codes, normalise them, rank queries against the whole gallery in
chunks) on stores of two sizes, each in a fresh process, and reads the peak resident size. Only
the first ``--queries`` queries are ranked: the ranking's memory is one chunk of at most 2**25
scores whatever the number of queries, and its time grows as queries x gallery. The slope between the two sizes is the memory per
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
from pathlib import Path

import numpy as np

from dualsae.store.paired import write_store

_CHILD = r"""
import json, resource, sys, time
import numpy as np
from dualsae.core.codes import SparseCodes
from dualsae.store.paired import PairedEmbeddings
from dualsae.evaluation.metrics.retrieval import build_protocol, first_positive_ranks, normalize_codes, sparse_scores
from dualsae.models.encoding import encode_rows
from dualsae.models.pair import SAEPair
from dualsae.models.sae import SAE, SAEConfig
n, d, m, k, queries = (int(a) for a in sys.argv[1:6])
folder = sys.argv[6]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
# the steps of metrics.retrieval.cross_modal_retrieval, with the ranking cut to the first queries
store = PairedEmbeddings.open(folder, check_values=False)
pair = SAEPair("specific", SAE(SAEConfig(d=d, m=m, k=k)), SAE(SAEConfig(d=d, m=m, k=k)))
proto = build_protocol(store.meta_rows(), "group")
img = normalize_codes(encode_rows(pair, store.subset(proto.image_rows), "image"))
txt = normalize_codes(encode_rows(pair, store.subset(proto.text_rows), "text"))
encoded = time.perf_counter() - t
t = time.perf_counter()
sl = lambda c, a, b: SparseCodes(c.values[a:b], c.indices[a:b], c.m)
ranks = first_positive_ranks(lambda a, b: sparse_scores(sl(img, a, b), txt), queries, proto.image_keys, proto.text_keys)
print(json.dumps({"n": n, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "before_kib": before,
                  "encode_s": encoded, "rank_s": time.perf_counter() - t, "queries": queries}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Both sizes above 2**25 / 1024 = 32,768 rows: below it the score chunk (capped at 1,024 queries)
    # grows with the gallery, which would count the chunk as per-row memory.
    ap.add_argument("--sizes", type=int, nargs=2, default=[34000, 68000])
    ap.add_argument("--queries", type=int, default=200, help="queries ranked against the whole gallery (one direction)")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--m", type=int, default=8192)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--ram-gib", type=float, default=24.0)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            # the store is written here, so the child's peak holds only what the retrieval needs
            x = np.random.default_rng(0).standard_normal((n, args.d), dtype=np.float32).astype(np.float16)
            write_store(Path(tmp) / f"s{n}", x, x, [{"caption": f"caption {i}", "group": i} for i in range(n)], dtype=np.float16)
            del x
            out = subprocess.run([sys.executable, "-c", _CHILD, str(n), str(args.d), str(args.m), str(args.k), str(args.queries), str(Path(tmp) / f"s{n}")],
                                 check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"gallery {n:>9,} pairs: peak RSS {r['peak_kib'] / 1024:8.1f} MiB; encoding {r['encode_s']:.1f} s, "
                  f"ranking {r['queries']:,} queries {r['rank_s']:.1f} s", flush=True)
    (a, b) = rows
    slope = (b["peak_kib"] - a["peak_kib"]) * 1024 / (b["n"] - a["n"])
    fixed = a["peak_kib"] * 1024 - slope * a["n"]
    largest = (args.ram_gib * 2**30 - fixed) / slope
    per_query = b["rank_s"] / b["queries"] / b["n"]  # ranking is O(Q G k): seconds per query per gallery row
    print(f"memory per pair {slope:,.0f} bytes, fixed {fixed / 2**20:,.0f} MiB -> largest gallery in {args.ram_gib:g} GiB: "
          f"{largest / 1e6:,.1f}M pairs; ranking all of its queries both ways here would take "
          f"~{2 * per_query * largest ** 2 / 86400:,.0f} days on this machine")

if __name__ == "__main__":
    main()
