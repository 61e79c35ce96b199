"""Autograd functions for the sparse TopK training path.

A TopK SAE touches only k of its m latents per row, yet autograd through ``F.embedding`` /
``embedding_bag`` materialises ``[batch, k, d]`` gathers in the backward pass, which on a CPU costs
more than the dense product it replaces. These functions compute the same gradients with
``embedding_bag`` kernels over the selected entries, grouped by row (decode, input gradient) or by
latent (weight gradients, via ``Pattern``), and one sampled dense-dense product over the latent
grouping (code gradients):

    gather_pre:    pre[b, j] for the selected (b, j), with gradients for x, W_enc, b_enc, b_dec
    sparse_decode: sum_j z_bj W_dec[j], with gradients for the values z and W_dec

Index lists must be sorted within each row (``sort_rows``); the latent grouping then lists each
latent's rows in ascending order, so the sampled product's CSR pattern is valid. Entries repeated
inside a row (padding) are allowed; they carry value 0 and get the gradient a dense computation
would give them. Equivalence with dense autograd is tested in ``tests/test_sae.py``.
The latent-grouped ``embedding_bag`` replaced CSR products (``CSR [m, batch] @ [batch, d]``), which
were 4-6x slower for the two weight gradients on this CPU (docs/benchmarks.md).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def _csr(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # The patterns are valid by construction; silence torch's "beta" / "invariant checks" notices.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, val, size)


def sort_rows(idx: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Sort each row of idx ([batch, w]) ascending and apply the same order to ``others``."""
    idx, order = idx.sort(dim=1)
    return (idx, *(o.gather(1, order) for o in others))


class Pattern:
    """The selected (row, latent) pairs of one forward pass, in both groupings.

    idx: [batch, w], sorted per row (the row grouping, for ``embedding_bag`` over weight rows; only
    :meth:`sampled_dots` alone accepts rows in any order, as it reads the latent grouping only).
    The latent grouping (the transpose) is what the weight gradients need: ``order`` sorts the
    flattened entries by latent (stable, so by row within a latent), ``rows`` holds each sorted
    entry's batch row and ``offsets`` [m] where each latent's entries start. Built once and shared
    by the encoder and decoder backward passes of the same selection.
    """

    def __init__(self, idx: torch.Tensor, m: int) -> None:
        batch, w = idx.shape
        self.idx = idx
        self.m = m
        flat = idx.reshape(-1)
        # int32 keys: the stable radix sort moves half the bytes (0.45 -> 0.24 ms at 32,768 entries)
        self.order = flat.to(torch.int32).argsort(stable=True)
        self.rows = self.order // w  # entry e of the flattened [batch, w] lies in row e // w
        counts = torch.bincount(flat, minlength=m)
        self.offsets = counts.cumsum(0) - counts

    def by_latent(self, vals: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """sum over the selected (b, j) of vals[b, j] * dense[b], grouped by latent j -> [m, d].

        vals: [batch, w]; dense: [batch, d]. The transposed sparse-dense product as one
        ``embedding_bag`` (bags = latents, rows = batch rows), which on a CPU runs several times
        faster than the CSR product and needs no [batch * w, d] temporary.
        """
        return F.embedding_bag(self.rows, dense, offsets=self.offsets,
                               per_sample_weights=vals.reshape(-1)[self.order], mode="sum")

    def sampled_dots(self, dense: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """<dense[b], W[j]> for every selected (b, j) -> [batch, w] (dense: [batch, d], W: [m, d]).

        The sampled product ``(W dense^T)[j, b]`` over the latent grouping: each row of W is read
        once and meets its few batch rows, which stay in cache, instead of every selection reading
        its W row again (at batch 1,024, k 32: 32,768 row reads of an [8,192, 512] W; 1.9 -> 1.0 ms).
        """
        n = self.order.numel()
        crow = torch.cat([self.offsets, self.offsets.new_tensor([n])])
        mask = _csr(crow, self.rows, torch.ones(n, dtype=W.dtype, device=W.device), (self.m, dense.shape[0]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            by_latent = torch.sparse.sampled_addmm(mask, W, dense.t(), beta=0.0).values()
        return torch.empty_like(by_latent).index_copy_(0, self.order, by_latent).view(self.idx.shape)

    def per_latent_sum(self, vals: torch.Tensor) -> torch.Tensor:
        """sum of vals[b, j] over the rows b that selected latent j -> [m]."""
        return torch.zeros(self.m, dtype=vals.dtype, device=vals.device).index_add_(0, self.idx.reshape(-1), vals.reshape(-1))


class _GatherPre(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, pattern, pre_sel):  # type: ignore[override]
        ctx.save_for_backward(x, W_enc, b_dec)
        ctx.pattern = pattern
        return pre_sel.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, W_enc, b_dec = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        g = g.contiguous()
        grad_W = pattern.by_latent(g, x - b_dec)
        grad_b_enc = pattern.per_latent_sum(g)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(pattern.idx, W_enc, per_sample_weights=g, mode="sum")
            grad_b_dec = -grad_x.sum(0)
        else:
            # d pre[b, j] / d b_dec = -W_enc[j]: summed over the selections this is the per-latent
            # gradient sum times W_enc, an [m] x [m, d] product instead of a [batch, w, d] gather.
            grad_b_dec = -(grad_b_enc @ W_enc)
        return grad_x, grad_W, grad_b_enc, grad_b_dec, None, None


class DecoderDots:
    """Per-latent ``<dL/dW_dec[j], W_dec[j]>``, the dot products of the decoder-gradient projection,
    accumulated by the sparse decodes of one training step from the sampled product their backward
    computes anyway: ``<sum_b v[b,j] G_b, w_j> = sum_b v[b,j] <G_b, w_j>``, O(batch * w) work
    instead of a pass over the [m, d] gradient. ``valid`` turns False when a gradient reaches
    W_dec another way (a dense ReLU decode); the projection then measures the dots itself."""

    def __init__(self, m: int, device: torch.device | str = "cpu") -> None:
        self.dots = torch.zeros(m, device=device)
        self.valid = True


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vals, W_dec, pattern, dots):  # type: ignore[override]
        ctx.save_for_backward(vals, W_dec)
        ctx.pattern, ctx.dots = pattern, dots
        return F.embedding_bag(pattern.idx, W_dec, per_sample_weights=vals, mode="sum")

    @staticmethod
    def backward(ctx, G):  # type: ignore[override]
        vals, W_dec = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        dots: DecoderDots | None = ctx.dots
        G = G.contiguous()
        grad_vals = None
        # grad_vals[b, j] = <G_b, W_dec[j]>: the sampled product, also what the decoder dots need
        if ctx.needs_input_grad[0] or (dots is not None and ctx.needs_input_grad[1]):
            grad_vals = pattern.sampled_dots(G, W_dec)
        grad_W = None
        if ctx.needs_input_grad[1]:
            grad_W = pattern.by_latent(vals, G)
            if dots is not None:
                dots.dots.index_add_(0, pattern.idx.reshape(-1), (vals.detach() * grad_vals).reshape(-1))
        return grad_vals if ctx.needs_input_grad[0] else None, grad_W, None, None


def gather_pre(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor,
               idx: torch.Tensor, pre_all: torch.Tensor, pattern: Pattern | None = None) -> torch.Tensor:
    """Pre-activations W_enc[j] . (x_b - b_dec) + b_enc[j] at idx ([batch, w], sorted per row).

    The values are read from ``pre_all`` ([batch, m], computed without autograd); only the
    backward pass is new, costing O(batch * w * d). ``pattern``: ``Pattern(idx, m)`` when the
    caller shares it with ``sparse_decode``.
    """
    pattern = pattern if pattern is not None else Pattern(idx, W_enc.shape[0])
    return _GatherPre.apply(x, W_enc, b_enc, b_dec, pattern, pre_all.gather(1, idx))


def gather_pre_values(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor,
                      idx: torch.Tensor, values: torch.Tensor, pattern: Pattern | None = None) -> torch.Tensor:
    """As :func:`gather_pre`, with the forward values given directly ([batch, w], e.g. recomputed in
    float32 when the selection product ran in bfloat16)."""
    pattern = pattern if pattern is not None else Pattern(idx, W_enc.shape[0])
    return _GatherPre.apply(x, W_enc, b_enc, b_dec, pattern, values)


def sparse_decode(vals: torch.Tensor, idx: torch.Tensor, W_dec: torch.Tensor, pattern: Pattern | None = None,
                  dots: DecoderDots | None = None) -> torch.Tensor:
    """sum_j vals[b, j] * W_dec[idx[b, j]] -> [batch, d] (idx sorted per row). ``dots``: accumulate
    this decode's share of the decoder-gradient projection's dot products in the backward pass."""
    if not vals.requires_grad and not W_dec.requires_grad:
        return F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")
    pattern = pattern if pattern is not None else Pattern(idx, W_dec.shape[0])
    return _SparseDecode.apply(vals, W_dec, pattern, dots)
