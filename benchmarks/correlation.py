"""Coactivation correlation C (eq. 5): the library's sparse streaming accumulation against a plain
dense reference, side by side on the same random TopK codes.

Sparse (``CoactivationStats``): per batch, scatter-add the k x k active-pair products of each row
into an [m, m] float64 matrix. Dense reference: per batch, build the [batch, m] code matrices and
accumulate A^T B with one GEMM in the chosen dtype (float32 by default; float64 with
``--dense-dtype float64`` is ~2x slower). Both then form C from the same formula; the printed max
abs difference is over the live block.

Latent frequencies follow a power law (real SAE latents fire at very different rates), and text
codes share about half of their latents with the paired image code under a fixed permutation, so C
has real structure.

    python benchmarks/correlation.py [--n 20000] [--m 8192] [--k 32] [--batch 4096] [--dense-dtype float32]
"""

from __future__ import annotations

import argparse
import time

import torch

from dualsae.alignment.correlation import CoactivationStats
from dualsae.core.codes import SparseCodes


def make_codes(n: int, m: int, k: int, batch: int, seed: int) -> list[tuple[SparseCodes, SparseCodes]]:
    gen = torch.Generator().manual_seed(seed)
    freq = 1.0 / torch.arange(1, m + 1, dtype=torch.float64) ** 0.7
    freq = freq[torch.randperm(m, generator=gen)]
    sigma = torch.randperm(m, generator=gen)
    out = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        idx_i = torch.multinomial(freq.expand(b, m), k, replacement=False, generator=gen)
        idx_t = torch.multinomial(freq.expand(b, m), k, replacement=False, generator=gen)
        shared = k // 2
        idx_t[:, :shared] = sigma[idx_i[:, :shared]]
        # Keep the shared half unique within the row: replace clashes with their own latents.
        clash = (idx_t[:, shared:].unsqueeze(2) == idx_t[:, :shared].unsqueeze(1)).any(2)
        idx_t[:, shared:][clash] = sigma[idx_i[:, shared:][clash]]
        vals_i = torch.rand(b, k, generator=gen) * 2
        vals_t = vals_i * (0.5 + torch.rand(b, k, generator=gen))
        out.append((SparseCodes(vals_i, idx_i, m), SparseCodes(vals_t, idx_t, m)))
    return out


def dense_correlation(batches: list[tuple[SparseCodes, SparseCodes]], m: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    g = torch.zeros(m, m, dtype=dtype)
    s_i = torch.zeros(m, dtype=torch.float64)
    s_t = torch.zeros(m, dtype=torch.float64)
    q_i = torch.zeros(m, dtype=torch.float64)
    q_t = torch.zeros(m, dtype=torch.float64)
    n = 0
    for ci, ct in batches:
        a = ci.to_dense().to(dtype)
        b = ct.to_dense().to(dtype)
        g.addmm_(a.T, b)
        s_i += a.sum(0, dtype=torch.float64)
        s_t += b.sum(0, dtype=torch.float64)
        q_i += a.double().pow(2).sum(0)
        q_t += b.double().pow(2).sum(0)
        n += a.shape[0]
    mu_i, mu_t = s_i / n, s_t / n
    sd_i = (q_i / n - mu_i**2).clamp_min(0).sqrt()
    sd_t = (q_t / n - mu_t**2).clamp_min(0).sqrt()
    c = (g.double() / n - mu_i[:, None] * mu_t[None, :]) / (sd_i[:, None] * sd_t[None, :])
    return c, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="paired rows")
    ap.add_argument("--m", type=int, default=8192, help="latents per SAE")
    ap.add_argument("--k", type=int, default=32, help="active latents per row")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dense-dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"n={args.n:,} m={args.m:,} k={args.k} batch={args.batch} threads={torch.get_num_threads()}")
    batches = make_codes(args.n, args.m, args.k, args.batch, args.seed)

    t = time.perf_counter()
    stats = CoactivationStats(args.m, args.m)
    for ci, ct in batches:
        stats.update(ci, ct)
    c_sparse, li, lt = stats.correlation()
    t_sparse = time.perf_counter() - t

    dtype = getattr(torch, args.dense_dtype)
    t = time.perf_counter()
    c_dense, _ = dense_correlation(batches, args.m, dtype)
    t_dense = time.perf_counter() - t
    c_dense = c_dense[li][:, lt]

    diff = (c_sparse - c_dense).abs().max().item()
    dense_codes_gb = 2 * args.n * args.m * dtype.itemsize / 1e9
    state_gb = args.m * args.m * 8 / 1e9
    print(f"live latents: image {len(li):,}, text {len(lt):,}")
    print(f"{'':<28}{'sparse (library)':>18}{'dense ' + args.dense_dtype:>18}")
    print(f"{'time (s)':<28}{t_sparse:>18.2f}{t_dense:>18.2f}")
    print(f"{'rows / s':<28}{args.n / t_sparse:>18,.0f}{args.n / t_dense:>18,.0f}")
    print(f"speed-up (dense / sparse): {t_dense / t_sparse:.1f}x")
    print(f"max |C_sparse - C_dense| over the live block: {diff:.2e}")
    print(f"memory: sparse state {state_gb:.2f} GB whatever n; a one-shot dense product would hold {dense_codes_gb:.2f} GB of codes at this n")


if __name__ == "__main__":
    main()
