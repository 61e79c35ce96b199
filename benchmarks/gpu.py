"""The GPU path: training steps per second at the paper's sizes, and a CC-3M-sized epoch.

1. One TopK training step (forward, backward, AdamW, decoder renormalisation) at d 512, m 8,192,
   k 32, batch 1,024: the library's sparse step with a float32 and with a bfloat16 selection
   product, against the plain dense PyTorch step of ``benchmarks/train_step.py`` on the same
   weights, side by side, interleaved rounds. Each is also put against the step's matmul FLOPs at
   the device's peak: the dense step does 6 products of B x m x d (12 B m d FLOPs), the sparse step
   one (the selection, 2 B m d) plus O(B k d) work.
2. One epoch of ``dualsae train`` (the paper's method: two modality SAEs, preset ``real``) over a
   synthetic store of ``--pairs`` pairs (2.8M = CC-3M by default on CUDA), float16 on disk,
   memory-mapped, with the pinned-memory prefetch of the next batch.

    python benchmarks/gpu.py                      # CUDA: full sizes
    python benchmarks/gpu.py --device cpu --pairs 20000 --rounds 3   # the small CPU run of docs/benchmarks.md

``--peak-tflops`` sets the device peak used for the FLOP ratio (default: a table of common GPUs,
their dense float32 / TF32 / bfloat16 tensor-core peaks; on CPU no ratio is printed unless given).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import dense_step, sparse_step  # noqa: E402

from dualsae.models.sae import SAE, SAEConfig  # noqa: E402
from dualsae.training.config import TrainConfig
from dualsae.training.step import make_adamw
from dualsae.training.trainer import train  # noqa: E402

# Dense peaks in TFLOP/s (vendor data sheets, SXM parts): (float32 CUDA cores, TF32 tensor, bfloat16 tensor).
PEAKS = {
    "H200": (67.0, 494.7, 989.4),
    "H100": (67.0, 494.7, 989.4),
    "A100": (19.5, 156.0, 312.0),
    "L40S": (91.6, 183.0, 362.0),
    "A10": (31.2, 62.5, 125.0),
    "4090": (82.6, 82.6, 165.2),
}


def device_peak(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "given"
    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    for key, (fp32, tf32, bf16) in PEAKS.items():
        if key in name:
            tf32_on = torch.backends.cuda.matmul.allow_tf32
            return (tf32 if tf32_on else fp32), f"{name} ({'TF32' if tf32_on else 'FP32'} peak)"
    return None, name


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_bench(args: argparse.Namespace, device: torch.device) -> None:
    d, m, k, B = args.d, args.m, args.k, args.batch
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d=d, m=m, k=k), generator=torch.Generator().manual_seed(0)).to(device)
    sae_bf = SAE(SAEConfig(d=d, m=m, k=k), generator=torch.Generator().manual_seed(0)).to(device)
    sae_bf.selection_dtype = torch.bfloat16
    ref = {n: p.detach().clone().requires_grad_() for n, p in sae.named_parameters()}
    cfg = TrainConfig.from_preset("real", latents=m, k=k)
    opts = {"sparse": make_adamw(sae.parameters(), cfg), "sparse-bf16": make_adamw(sae_bf.parameters(), cfg),
            "dense": make_adamw(ref.values(), cfg)}
    x = torch.nn.functional.normalize(torch.randn(B, d, device=device), dim=1)
    runs = {"sparse": lambda: sparse_step(sae, opts["sparse"], x), "sparse-bf16": lambda: sparse_step(sae_bf, opts["sparse-bf16"], x),
            "dense": lambda: dense_step(ref, opts["dense"], x, k)}
    for fn in runs.values():  # warm-up (kernels, allocator)
        fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():  # interleaved
            sync(device)
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - t) / args.steps)
    peak, peak_name = device_peak(device, args.peak_tflops)
    flops = {"dense": 12.0 * B * m * d, "sparse": 2.0 * B * m * d, "sparse-bf16": 2.0 * B * m * d}
    print(f"one TopK step, d {d}, m {m}, k {k}, batch {B}; {args.rounds} rounds x {args.steps} steps; device {peak_name}")
    for name, ts in times.items():
        best, med = min(ts), statistics.median(ts)
        line = f"  {name:12s} min {best * 1e3:8.2f} ms  median {med * 1e3:8.2f} ms  = {1 / med:8.1f} steps/s"
        line += f"  ({flops[name] / best / 1e9:,.1f} GFLOP/s of matmul work"
        line += f", {100 * flops[name] / best / 1e12 / peak:.1f}% of peak)" if peak else ")"
        print(line)
    dense = statistics.median(times["dense"])
    print(f"  speed-up over dense: sparse {dense / statistics.median(times['sparse']):.2f}x, "
          f"sparse-bf16 {dense / statistics.median(times['sparse-bf16']):.2f}x")


def synthetic_store(folder: Path, n: int, d: int, chunk: int = 262_144) -> Path:
    """[n, d] float16 image.npy / text.npy written in chunks (never all in memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {m: np.lib.format.open_memmap(folder / f"{m}.npy", mode="w+", dtype=np.float16, shape=(n, d)) for m in ("image", "text")}
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), d)).astype(np.float32)
        y = x + 0.5 * rng.standard_normal(x.shape).astype(np.float32)
        arrays["image"][s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        arrays["text"][s:s + len(y)] = y / np.linalg.norm(y, axis=1, keepdims=True)
    for a in arrays.values():
        a.flush()
    return folder


def epoch_bench(args: argparse.Namespace, device: torch.device) -> None:
    from dualsae.store.paired import PairedEmbeddings

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t = time.perf_counter()
        store = PairedEmbeddings.open(synthetic_store(Path(tmp) / "store", args.pairs, args.d), check_values=False)
        made = time.perf_counter() - t
        cfg = TrainConfig.from_preset("real", method="specific", latents=args.m, k=args.k, batch_size=args.batch, epochs=1,
                                      selection_dtype=args.selection_dtype)
        t = time.perf_counter()
        train(store, cfg, progress=False, device=device)
        sync(device)
        secs = time.perf_counter() - t
    steps = args.pairs // args.batch
    print(f"one epoch of the paper's method (2 SAEs of {args.m // 2} latents, k {args.k}, batch {args.batch}, "
          f"selection {args.selection_dtype}) over {args.pairs:,} pairs (float16 store, written in {made:.0f} s): "
          f"{secs:.1f} s, {steps / secs:.1f} steps/s; 30 epochs ~ {30 * secs / 60:.1f} min")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--m", type=int, default=8192)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="steps timed per round and side")
    ap.add_argument("--pairs", type=int, default=2_800_000, help="store size of the epoch benchmark (0 = skip it)")
    ap.add_argument("--selection-dtype", default="bfloat16", choices=["float32", "bfloat16"], help="for the epoch run")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--tmp", default=None, help="folder for the synthetic store (needs 2 x pairs x d x 2 bytes)")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                                          f", {torch.get_num_threads()} threads"))
    step_bench(args, device)
    if args.pairs:
        epoch_bench(args, device)


if __name__ == "__main__":
    main()
