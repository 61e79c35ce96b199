"""The exact TopK / BatchTopK selection of a wide SAE from a bfloat16 product and a proven error bound.

At m = 65,536 latents and d = 768 the float32 selection product ``pre = (x - b_dec) W_enc^T + b_enc``
([batch, m], 2 batch d m FLOPs) is ~80% of a CPU training step. On a CPU with AVX512-BF16 the same
product in bfloat16 runs 3-4x faster, but it is approximate. This module gets the *float32* answer
from it, never a different one:

1. ``A = bf16(x~ W~^T + b~)`` (x~, W~, b~ rounded to bfloat16, the dot products accumulated in float32 by
   oneDNN). For every entry ``|A_bj - F_bj| <= base_b + r |A_bj|`` (:func:`screen_product`), F the
   float32 pre-activations the sampled product of :class:`~dualsae.core.sparse_ops.Pattern` computes.
2. TopK, row b: let t be the row's k-th largest A and M1 = max(top A, |t|). The k entries with A >= t
   have F >= t - base - r M1 =: L, so the k-th largest F is >= L. An entry with ``A < tau`` (tau solves
   ``tau + base + r |tau| = L``) has F <= A + base + r |A| < L, so it is not among the k largest F.
3. The candidates ``A >= tau`` (a few k per row) lie in the row's top-w of A once the w-th largest A is
   < tau (w = 6k first, x4 for the rows where not; rows still unresolved at w >= m / 4 take the dense
   float32 product); their F is recomputed and the k largest of those are the answer.

BatchTopK (the k * batch largest ReLU'd pre-activations of the whole batch) is the same with one
global L (from the n-th largest A among the rows' top-w's) and a per-row tau.

Error bound (Higham, Accuracy and Stability, Lemma 3.1; u = 2^-8 for bfloat16, u32 = 2^-24, gamma_d =
d u32 / (1 - d u32)), with dx = x~ - x and ||W_j|| <= W_max:
  x~ . W~_j - x . W_j = dx . W~_j + x . (W~_j - W_j)   <= ||dx|| (1 + u) W_max + ||x|| u W_max
  float32 accumulation of the d products               <= gamma_d ||x~|| (1 + u) W_max
  the float32 reference F's own accumulation error     <= gamma_d ||x|| W_max
  the bias: rounded to bfloat16, and the output rounded once or twice (once with the bias, once
  without)                                             <= 3 u max|b| + 2.01 u |A|  (+ float32 roundings)
``tests/core/test_screened_topk.py`` checks the bound against float64 on random and adversarial rows.
Where values tie in float32 the index chosen may differ from ``torch.topk``'s, which leaves it
unspecified too.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

U16 = 2.0 ** -8  # bfloat16 unit roundoff (8 significant bits)
U32 = 2.0 ** -24
#: Relative part of the bound: two output roundings, plus float32 roundings of F and of tau itself.
REL = 2.01 * U16 + 16 * U32
#: Candidates first taken per row, as a multiple of k (x4 per retry for the rows that need more).
FIRST_WIDTH = 6

#: exact(rows, idx) -> F at idx: rows [r] (None: every row), idx [r, w] in any order -> [r, w] float32.
Exact = Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]
#: dense(rows) -> the float32 pre-activations of those rows, [r, m] (the fallback).
Dense = Callable[[torch.Tensor], torch.Tensor]


class Screen(NamedTuple):
    """The screening product and its bound: ``|A_bj - F_bj| <= base[b] + REL * |A_bj|``.

    approx: [batch, m] bfloat16; base: [batch] float32.
    """

    approx: torch.Tensor
    base: torch.Tensor


class Selection(NamedTuple):
    """What a screened training forward hands on to AuxK (which selects among the dead latents the
    same way): the screen, the exact values at chosen entries, and the dense fallback."""

    screen: Screen
    exact: Exact
    dense: Dense


def bf16_matmul_is_fast(device: torch.device) -> bool:
    """True on a CPU whose oneDNN has bfloat16 kernels (AVX512-BF16 / AMX): there the screen pays."""
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def screen_product(xc: torch.Tensor, W: torch.Tensor, b: torch.Tensor, W16: torch.Tensor | None = None,
                   out: torch.Tensor | None = None) -> Screen:
    """The bfloat16 product and its bound (module docstring).

    xc: [batch, d] float32 (the centred input x - b_dec); W: [m, d] float32; b: [m]. ``W16``: W already
    in bfloat16 (else converted here); ``out``: a [batch, m] bfloat16 buffer to write into.
    """
    d = xc.shape[1]
    W16 = W.to(torch.bfloat16) if W16 is None else W16
    b16 = b.to(torch.bfloat16)
    x16 = xc.to(torch.bfloat16)
    approx = torch.addmm(b16, x16, W16.t(), out=out) if out is not None else torch.addmm(b16, x16, W16.t())
    w_max = float(torch.linalg.vector_norm(W, dim=1).max()) if W.shape[0] else 0.0
    b_max = float(b.abs().max()) if b.numel() else 0.0
    xn = torch.linalg.vector_norm(xc, dim=1)
    dxn = torch.linalg.vector_norm(x16.float() - xc, dim=1)
    gamma = d * U32 / (1 - d * U32)
    base = (dxn * (1 + U16) * w_max + xn * U16 * w_max + gamma * ((xn + dxn) * (1 + U16) * w_max + xn * w_max)
            + 3 * U16 * b_max + 1e-30)
    return Screen(approx, base * (1 + 1e-5))


def _tau(L: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """The largest tau with tau + base + REL |tau| <= L (elementwise), a little lower for safety."""
    x = L - base
    tau = torch.where(x >= 0, x / (1 + REL), x / (1 - REL))
    return tau - 1e-6 * tau.abs() - 1e-30


def _top_w(A: torch.Tensor, rows: torch.Tensor | None, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values float32, indices) of the w largest A of each row (of ``rows``), in no order. -> [r, w] each."""
    sub = A if rows is None else A.index_select(0, rows)
    vals, idx = sub.topk(w, dim=1, sorted=False)
    return vals.float(), idx


def certified_topk(screen: Screen, k: int, exact: Exact, dense: Dense) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest float32 pre-activations of each row: (indices sorted ascending, their F values),
    two [batch, k] tensors; the same selection as ``F.topk(k)`` of the dense float32 product."""
    A, base = screen
    batch, m = A.shape
    idx_out = torch.empty(batch, k, dtype=torch.long, device=A.device)
    val_out = torch.empty(batch, k, dtype=torch.float32, device=A.device)
    rows: torch.Tensor | None = None  # None: every row, still unresolved
    w = min(FIRST_WIDTH * k, m)
    while True:
        r = torch.arange(batch, device=A.device) if rows is None else rows
        if r.numel() == 0:
            break
        if w > m // 4:  # the screen does not separate these rows: the dense product decides
            F = dense(r)
            vals, idx = F.topk(k, dim=1)
            idx, order = idx.sort(dim=1)
            idx_out[r], val_out[r] = idx, vals.gather(1, order)
            break
        vals, idx = _top_w(A, rows, w)
        t = vals.topk(k, dim=1).values[:, -1]
        M1 = torch.maximum(vals.amax(dim=1), t.abs())
        b_r = base[r]
        tau = _tau(t - b_r - REL * M1, b_r)
        ok = vals.amin(dim=1) < tau  # every candidate (A >= tau) is among the w taken
        if rows is None and bool(ok.all()):  # the usual case: every row at once, no index lists
            F = exact(None, idx)
            fv, pos = F.topk(k, dim=1)
            sel, order = idx.gather(1, pos).sort(dim=1)
            return sel, fv.gather(1, order)
        if bool(ok.any()):
            good = ok.nonzero().flatten()
            cand = idx[good]
            F = exact(r[good], cand)
            fv, pos = F.topk(k, dim=1)
            sel = cand.gather(1, pos)
            sel, order = sel.sort(dim=1)
            idx_out[r[good]], val_out[r[good]] = sel, fv.gather(1, order)
        rows = r[~ok]
        w *= 4
    return idx_out, val_out


def certified_batch_topk(screen: Screen, n: int, exact: Exact, dense: Dense) -> torch.Tensor | None:
    """Flat indices (row * m + latent) of the n largest ReLU'd float32 pre-activations of the batch, as
    ``relu(F).flatten().topk(n)`` selects them; None when the screen cannot decide (the n-th largest may
    be 0, where ties are many) and the caller should run the dense product."""
    A, base = screen
    batch, m = A.shape
    w = min(FIRST_WIDTH * max(1, -(-n // batch)), m)
    if w > m // 4:
        return None
    vals, idx = _top_w(A, None, w)
    flat = vals.flatten()
    if flat.numel() < n:
        return None
    T = flat.topk(n).values[-1]  # <= the n-th largest A of the batch: a subset's n-th largest
    M1 = torch.maximum(vals.amax(), T.abs())
    L = T - base.max() - REL * M1  # n entries have F >= L
    if not bool(L > 0):
        return None
    tau = _tau(L.expand(batch), base)
    cand_rows, cand_idx = [], []
    rows: torch.Tensor | None = None
    while True:
        r = torch.arange(batch, device=A.device) if rows is None else rows
        if r.numel() == 0:
            break
        if rows is not None:
            if w > m // 4:
                F = dense(r).clamp_min(0)
                keep = F >= L  # every entry that can be selected; below L it cannot
                rr, jj = keep.nonzero(as_tuple=True)
                cand_rows.append((r[rr], jj, F[rr, jj]))
                break
            vals, idx = _top_w(A, rows, w)
        ok = vals.amin(dim=1) < tau[r]
        if bool(ok.any()):
            good = ok.nonzero().flatten()
            cand = idx[good]
            F = exact(r[good], cand).clamp_min(0)
            cand_idx.append((r[good].unsqueeze(1).expand_as(cand), cand, F))
        rows = r[~ok]
        w *= 4
    row_all = torch.cat([c[0].reshape(-1) for c in cand_idx] + [c[0] for c in cand_rows])
    lat_all = torch.cat([c[1].reshape(-1) for c in cand_idx] + [c[1] for c in cand_rows])
    F_all = torch.cat([c[2].reshape(-1) for c in cand_idx] + [c[2] for c in cand_rows])
    pick = F_all.topk(n).indices
    return row_all[pick] * m + lat_all[pick]


__all__ = ["Screen", "Selection", "bf16_matmul_is_fast", "certified_batch_topk", "certified_topk", "screen_product"]
