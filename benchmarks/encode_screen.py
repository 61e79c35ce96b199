"""Inference encoding of a wide TopK SAE: ``SAE.encode`` (the certified bfloat16 screen where it applies,
dualsae.core.screened_topk) against the plain float32 path (``activation.encode(pre_activations(x))``),
side by side on the same rows, interleaved rounds.

Each shape first checks that both paths choose the same latents (as sets per row) except in rows where the
k-th and (k+1)-th float32 pre-activations are within 1e-6 relative (counted), and that the values agree
within float32 rounding. With ``--model RUN --store STORE`` the SAE is a trained one
(the image SAE of a run folder) on that store's first rows; otherwise a freshly initialised SAE on
Gaussian rows at each width of ``--ms``.

    python benchmarks/encode_screen.py [--ms 4096 16384 65536] [--d 768] [--k 32] [--batch 4096] [--rounds 5]
    python benchmarks/encode_screen.py --model /tmp/run --store /tmp/store
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from dualsae.models.load import load_model
from dualsae.models.sae import SAE, SAEConfig
from dualsae.store.paired import open_store


def plain(sae: SAE, x: torch.Tensor):
    return sae.activation.encode(sae, sae.pre_activations(x))


def check(sae: SAE, x: torch.Tensor) -> tuple[float, int]:
    """(largest relative value difference, rows whose latent sets differ) between the two paths; asserts that
    every such row is a float32 near-tie: its k-th and (k+1)-th float32 pre-activations within 1e-6 relative
    (the screen recomputes the candidates' values with another summation order, so it may break such a tie
    the other way; the float32 product itself is not reproducible to that bit across batch shapes)."""
    a, b = sae.encode(x), plain(sae, x)
    differ = (a.indices.sort(dim=1).values != b.indices.sort(dim=1).values).any(dim=1)
    k = sae.config.k
    for r in differ.nonzero().flatten().tolist():
        top = sae.pre_activations(x[r : r + 1])[0].topk(k + 1).values
        assert float(top[k - 1] - top[k]) <= 1e-6 * abs(float(top[k - 1])), f"row {r}: the paths chose different latents"
    same = ~differ
    rel = (a.values[same] - b.values[same]).abs().max() / b.values.abs().max().clamp_min(1e-30)
    assert float(rel) < 1e-5, float(rel)
    return float(rel), int(differ.sum())


def timed(fn, reps: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def run(sae: SAE, x: torch.Tensor, rounds: int, label: str) -> None:
    with torch.no_grad():
        rel, differ = check(sae, x)
        fns = {"plain": lambda: plain(sae, x), "screen": lambda: sae.encode(x)}
        for fn in fns.values():
            timed(fn)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for r in range(rounds):
            for name in (("plain", "screen") if r % 2 == 0 else ("screen", "plain")):
                times[name].append(timed(fns[name]))
    p, s = times["plain"], times["screen"]
    rows = x.shape[0]
    print(f"{sae.m:>7} {sae.d:>4} {sae.config.k:>3} {rows:>6} | {1e3 * min(p):>8.1f} {1e3 * statistics.median(p):>8.1f} | "
          f"{1e3 * min(s):>8.1f} {1e3 * statistics.median(s):>8.1f} | {min(p) / min(s):>5.2f}x {statistics.median(p) / statistics.median(s):>5.2f}x "
          f"| {rel:.1e} {differ:>5}  {label}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", help="a run folder: time its image SAE (with --store)")
    ap.add_argument("--store", help="the store whose first --batch image rows are encoded (with --model)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds; ms per batch")
    print(f"{'m':>7} {'d':>4} {'k':>3} {'rows':>6} | {'plain min/med':>17} | {'screen min/med':>17} | {'ratio min/med':>13} | max rel diff")
    if args.model:
        sae = load_model(args.model).sae_for("image").eval()
        store = open_store(args.store, check_values=False)
        x = store.read("image", np.arange(min(args.batch, store.n)))
        run(sae, x, args.rounds, f"trained: {args.model}")
        return
    g = torch.Generator().manual_seed(0)
    for m in args.ms:
        sae = SAE(SAEConfig(d=args.d, m=m, k=args.k), generator=g).eval()
        x = torch.randn(args.batch, args.d, generator=g)
        run(sae, x, args.rounds, "initialised SAE, Gaussian rows")


if __name__ == "__main__":
    main()
