"""Issue 17, pruned statistics: how many dropped co-firing pairs violate their bound min(row_bound, col_bound)
under the *optimal* duals of the full problem, at keep = 8, 32, 128, 512 (docs/benchmarks.md, "Pruned statistics").

Trains a pair briefly on an App. E.2 store (benchmarks/align_scale.py), builds the full sparse statistics, solves
them certified, and counts for each keep the dropped pairs with bound > u_i + v_j:

    PYTHONPATH=src .venv/bin/python benchmarks/prune_keep_probe.py 62500 4096 [OUT]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import align_scale as A  # noqa: E402  (the benchmarks folder's own module)

from dualsae.alignment import sparse_assignment as SA  # noqa: E402
from dualsae.alignment.coactivation import coactivation_correlation  # noqa: E402
from dualsae.store.paired import open_store  # noqa: E402

n, m = int(sys.argv[1]), int(sys.argv[2])
out = Path(sys.argv[3] if len(sys.argv) > 3 else "/tmp/prune_probe")
out.mkdir(exist_ok=True, parents=True)
args = argparse.Namespace(d=768, k=32, concepts=8192, active=40.0, eval_rows=1000, train_steps=200, batch=1024)
sd = out / f"store-N{n}"
sd.mkdir(exist_ok=True)
A.make_store(sd, n, args)
pair = A.trained_pair(sd, n, m, args, out)
store = open_store(sd).split("train")
t = time.time()
stats = coactivation_correlation(pair, store, batch_size=4096, progress=False, stats="sparse")
sc = stats.sparse_correlation()
print("stats", time.time() - t, "pairs", sc.nnz, "shape", sc.shape, flush=True)
cap = {}
orig = SA.check_all_pairs
def spy(s, u, v, **kw):
    cap["u"], cap["v"] = u.copy(), v.copy()
    return orig(s, u, v, **kw)
SA.check_all_pairs = spy
r, c, total, info = SA.solve_sparse(sc)
u, v = cap["u"], cap["v"]
print("total", total, info["certificate"], flush=True)
mv = sc.values[np.searchsorted(sc.keys, r * sc.shape[1] + c).clip(0, sc.nnz - 1)]
hit = sc.keys[np.searchsorted(sc.keys, r * sc.shape[1] + c).clip(0, sc.nnz - 1)] == r * sc.shape[1] + c
print("matched on co-firing pairs", hit.mean(), "matched value quartiles", np.quantile(np.where(hit, mv, 0), [.1, .25, .5, .75, .9]))
for K in (8, 32, 128, 512):
    sel_r = SA.top_per_group(sc.rows, sc.values, K, sc.shape[0])
    sel_c = SA.top_per_group(sc.cols, sc.values, K, sc.shape[1])
    keep = np.zeros(sc.nnz, bool)
    keep[sel_r] = True
    keep[sel_c] = True
    rb = np.full(sc.shape[0], -np.inf)
    np.maximum.at(rb, sc.rows[~keep], sc.values[~keep])
    cb = np.full(sc.shape[1], -np.inf)
    np.maximum.at(cb, sc.cols[~keep], sc.values[~keep])
    # pruned pairs violating with their bound, and with their exact value
    pr, pc = sc.rows[~keep], sc.cols[~keep]
    bnd = np.minimum(rb[pr], cb[pc])
    slack = u[pr] + v[pc]
    viol_b = (bnd > slack + 1e-9).sum()
    viol_e = (sc.values[~keep] > slack + 1e-9).sum()
    # all-pairs bound violations (any unstored pair, bound part only), per row: count rows with any
    rows_bad = np.zeros(sc.shape[0], bool)
    rows_bad[pr[bnd > slack + 1e-9]] = True
    print(f"K={K}: kept {keep.sum():,} of {sc.nnz:,}; pruned pairs whose bound violates {viol_b:,} (exact violates {viol_e}); "
          f"rows affected {rows_bad.sum():,}; rb median {np.median(rb[np.isfinite(rb)]):.4f}", flush=True)
