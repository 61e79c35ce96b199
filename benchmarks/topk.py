"""Per-row top-k of a [batch, m] pre-activation matrix: dualsae.core.block_topk (two small top-k's over column
blocks) against torch.topk, side by side on the same random rows, interleaved rounds.

Shapes: the training step's selection at the library comparison's two settings, the inference batch
of ``encode``, AuxK's pick of aux_k = d / 2 dead latents, and a few others around them; the block
column says which path ``dualsae.core.block_topk`` takes (0: it calls torch.topk itself). Each row checks that
the chosen values equal torch.topk's.

    python benchmarks/topk.py [--rounds 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dualsae.core.block_topk import block_size, topk_indices

SHAPES = [
    # (batch, m, k, what)
    (256, 8192, 16, "train step, setting (256, 8192, 16, 256)"),
    (1024, 8192, 32, "train step, setting (512, 8192, 32, 1024)"),
    (4096, 8192, 32, "encode, its 4096-row chunks"),
    (256, 8192, 128, "AuxK pick at d 256"),
    (1024, 8192, 256, "AuxK pick at d 512"),
    (128, 2048, 32, "emoji Table 1 SAE (m 2048)"),
    (256, 4096, 32, "specific SAE of a shared m 8192"),
    (64, 8192, 32, "few rows (plain path)"),
    (256, 1024, 16, "short rows (plain path)"),
]


def timed(fn, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds; ms per call")
    print(f"{'batch':>6} {'m':>6} {'k':>4} {'block':>5} | {'torch.topk min/med':>19} | {'dualsae min/med':>16} | {'ratio min':>9} {'med':>5}  shape")
    for batch, m, k, what in SHAPES:
        pre = torch.randn(batch, m, generator=torch.Generator().manual_seed(batch + m + k))
        got = pre.gather(1, topk_indices(pre, k)).sort(dim=1, descending=True).values
        assert torch.equal(got, pre.topk(k, dim=1).values), (batch, m, k)
        reps = max(1, int(2e7 // (batch * m)))
        fns = {"torch": lambda: pre.topk(k, dim=1, sorted=False), "dualsae": lambda: topk_indices(pre, k)}
        times: dict[str, list[float]] = {name: [] for name in fns}
        for name, fn in fns.items():  # warm-up
            timed(fn, 2)
        for r in range(args.rounds):
            for name in (("torch", "dualsae") if r % 2 == 0 else ("dualsae", "torch")):
                times[name].append(timed(fns[name], reps))
        t, dl = times["torch"], times["dualsae"]
        print(f"{batch:>6} {m:>6} {k:>4} {block_size(batch, m, k, pre.device):>5} | "
              f"{1e3 * min(t):>8.3f} {1e3 * statistics.median(t):>9.3f} | {1e3 * min(dl):>7.3f} {1e3 * statistics.median(dl):>8.3f} | "
              f"{min(t) / min(dl):>8.2f}x {statistics.median(t) / statistics.median(dl):>4.2f}x  {what}", flush=True)


if __name__ == "__main__":
    main()
