"""One full TopK training step: the library's sparse path against a plain dense PyTorch reference.

Both sides run forward, backward, AdamW step and decoder renormalisation on identical weights and
batches, side by side in one process. The reference is the straightforward implementation: dense
pre-activations with autograd, a dense z of [B, m] (TopK mask), x_hat = z @ W_dec.

    python benchmarks/train_step.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from dualsae.models.sae import SAE, SAEConfig
from dualsae.training.config import TrainConfig
from dualsae.training.step import make_adamw

SETTINGS = [dict(d=512, m=8192, k=32, B=1024), dict(d=256, m=8192, k=16, B=256)]


def dense_step(params: dict[str, torch.Tensor], opt: torch.optim.Optimizer, x: torch.Tensor, k: int) -> float:
    W_enc, b_enc, W_dec, b_dec = params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"]
    opt.zero_grad(set_to_none=True)
    pre = F.linear(x - b_dec, W_enc, b_enc)
    vals, idx = pre.topk(k, dim=1)
    z = torch.zeros_like(pre).scatter(1, idx, F.relu(vals))
    recon = z @ W_dec + b_dec
    loss = (x - recon).pow(2).sum(1).mean()
    loss.backward()
    with torch.no_grad():
        g = W_dec.grad
        g.sub_((g * W_dec).sum(1, keepdim=True) * W_dec)
    opt.step()
    with torch.no_grad():
        W_dec.div_(W_dec.norm(dim=1, keepdim=True))
    return loss.item()


def sparse_step(sae: SAE, opt: torch.optim.Optimizer, x: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    out = sae(x)
    loss = (x - out.recon).pow(2).sum(1).mean()
    loss.backward()
    sae.remove_parallel_grad()
    opt.step()
    sae.normalize_decoder()
    return loss.item()


def bench(d: int, m: int, k: int, B: int, repeats: int) -> dict:
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d=d, m=m, k=k), generator=torch.Generator().manual_seed(0))
    ref = {n: p.detach().clone().requires_grad_() for n, p in sae.named_parameters()}
    # Both sides use the trainer's optimizer (fused AdamW where available): the comparison is
    # about the SAE's forward/backward, not about the optimizer.
    cfg = TrainConfig.from_preset("real", latents=m, k=k)
    opt_s = make_adamw(sae.parameters(), cfg)
    opt_d = make_adamw(ref.values(), cfg)
    xs = [torch.randn(B, d) / d**0.5 for _ in range(repeats + 1)]
    # Warm-up step (allocations, thread pools) not timed; also checks both losses agree.
    ls, ld = sparse_step(sae, opt_s, xs[0]), dense_step(ref, opt_d, xs[0], k)
    t_s = t_d = 0.0
    max_rel = abs(ls - ld) / abs(ld)
    for x in xs[1:]:
        t0 = time.perf_counter()
        ld = dense_step(ref, opt_d, x, k)
        t_d += time.perf_counter() - t0
        t0 = time.perf_counter()
        ls = sparse_step(sae, opt_s, x)
        t_s += time.perf_counter() - t0
        max_rel = max(max_rel, abs(ls - ld) / abs(ld))
    wdiff = (sae.W_dec.detach() - ref["W_dec"].detach()).abs().max().item()
    return dict(d=d, m=m, k=k, B=B, dense_ms=1e3 * t_d / repeats, sparse_ms=1e3 * t_s / repeats,
                ratio=t_d / t_s, loss_rel_diff=max_rel, w_dec_max_diff=wdiff)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'d':>4} {'m':>5} {'k':>3} {'B':>5} | {'dense ms':>9} {'sparse ms':>9} {'speed-up':>8} | {'loss rel diff':>13} {'W_dec max diff':>14}")
    for s in SETTINGS:
        r = bench(**s, repeats=args.repeats)
        print(f"{r['d']:>4} {r['m']:>5} {r['k']:>3} {r['B']:>5} | {r['dense_ms']:>9.1f} {r['sparse_ms']:>9.1f} {r['ratio']:>7.2f}x | "
              f"{r['loss_rel_diff']:>13.2e} {r['w_dec_max_diff']:>14.2e}")


if __name__ == "__main__":
    main()
