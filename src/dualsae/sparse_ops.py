"""Autograd functions for the sparse TopK training path.

A TopK SAE touches only k of its m latents per row, yet autograd through ``F.embedding`` /
``embedding_bag`` materialises ``[batch, k, d]`` gathers in the backward pass, which on a CPU costs
more than the dense product it replaces. These functions compute the same gradients with sparse
matrix kernels instead (CSR @ dense, sampled dense-dense products, ``embedding_bag`` forward):

    gather_pre:    pre[b, j] for the selected (b, j), with gradients for x, W_enc, b_enc, b_dec
    sparse_decode: sum_j z_bj W_dec[j], with gradients for the values z and W_dec

Index lists must be sorted within each row (``sort_rows``) so the CSR patterns are valid. Entries
repeated inside a row (padding) are allowed; they carry value 0 and get the gradient a dense
computation would give them. Equivalence with dense autograd is tested in ``tests/test_sae.py``.
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


def _rows_csr(idx: torch.Tensor, vals: torch.Tensor, m: int) -> torch.Tensor:
    """CSR [batch, m] with the w entries of each row (idx sorted per row)."""
    batch, w = idx.shape
    crow = torch.arange(0, batch * w + 1, w, device=idx.device)
    return _csr(crow, idx.reshape(-1), vals.reshape(-1), (batch, m))


def _cols_csr(idx: torch.Tensor, vals: torch.Tensor, m: int) -> torch.Tensor:
    """CSR [m, batch]: the transpose of the row pattern (entries grouped by latent)."""
    batch, w = idx.shape
    flat = idx.reshape(-1)
    order = flat.argsort(stable=True)
    rows = flat[order]
    cols = torch.arange(batch, device=idx.device).repeat_interleave(w)[order]
    crow = torch.zeros(m + 1, dtype=torch.long, device=idx.device)
    crow[1:] = torch.bincount(rows, minlength=m).cumsum(0)
    return _csr(crow, cols, vals.reshape(-1)[order], (m, batch))


class _GatherPre(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, idx, pre_sel):  # type: ignore[override]
        ctx.save_for_backward(x, W_enc, b_dec, idx)
        return pre_sel.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, W_enc, b_dec, idx = ctx.saved_tensors
        m = W_enc.shape[0]
        g = g.contiguous()
        grad_W = _cols_csr(idx, g, m) @ (x - b_dec)
        grad_b_enc = torch.zeros(m, dtype=g.dtype, device=g.device).index_add_(0, idx.reshape(-1), g.reshape(-1))
        grad_xc = F.embedding_bag(idx, W_enc, per_sample_weights=g, mode="sum")
        grad_x = grad_xc if ctx.needs_input_grad[0] else None
        return grad_x, grad_W, grad_b_enc, -grad_xc.sum(0), None, None


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vals, idx, W_dec):  # type: ignore[override]
        ctx.save_for_backward(vals, idx, W_dec)
        return F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")

    @staticmethod
    def backward(ctx, G):  # type: ignore[override]
        vals, idx, W_dec = ctx.saved_tensors
        m = W_dec.shape[0]
        G = G.contiguous()
        grad_vals = None
        if ctx.needs_input_grad[0]:
            pattern = _rows_csr(idx, torch.ones_like(vals), m)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                grad_vals = torch.sparse.sampled_addmm(pattern, G, W_dec.t(), beta=0.0).values().view_as(vals)
        grad_W = _cols_csr(idx, vals, m) @ G if ctx.needs_input_grad[2] else None
        return grad_vals, None, grad_W


def gather_pre(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor,
               idx: torch.Tensor, pre_all: torch.Tensor) -> torch.Tensor:
    """Pre-activations W_enc[j] . (x_b - b_dec) + b_enc[j] at idx ([batch, w], sorted per row).

    The values are read from ``pre_all`` ([batch, m], computed without autograd); only the
    backward pass is new, costing O(batch * w * d).
    """
    return _GatherPre.apply(x, W_enc, b_enc, b_dec, idx, pre_all.gather(1, idx))


def gather_pre_values(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor,
                      idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """As :func:`gather_pre`, with the forward values given directly ([batch, w], e.g. recomputed in
    float32 when the selection product ran in bfloat16)."""
    return _GatherPre.apply(x, W_enc, b_enc, b_dec, idx, values)


def sparse_decode(vals: torch.Tensor, idx: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j vals[b, j] * W_dec[idx[b, j]] -> [batch, d] (idx sorted per row)."""
    if vals.device.type != "cpu" and not vals.requires_grad and not W_dec.requires_grad:
        return F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")
    return _SparseDecode.apply(vals, idx, W_dec)
