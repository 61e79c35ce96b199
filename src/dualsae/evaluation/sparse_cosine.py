"""The maximal-total cosine matching of two large sets of directions, exact and certified, without the
dense cosine matrix (``dualsae compare`` above ``OverlapOptions.max_dense``).

The matching is solved by the same certified sparse solver as ``align``
(:func:`dualsae.alignment.sparse_assignment.solve_sparse`) on an *upper-bound* problem held as a
:class:`dualsae.alignment.sparse_correlation.SparseCorrelation`:

- listed pairs: the exact cosines of each row of A's ``k`` largest and each row of B's ``k`` largest
  (one blocked float64 matmul, [block, m_B] at a time);
- every other pair (i, j) gets ``tau_i``, the k-th largest cosine of row i: an upper bound of every
  unlisted cosine of that row. In the SparseCorrelation's rank-one form ``c_ij = -a_i b_j`` this is
  ``a_i = -tau_i``, ``b_j = 1``; the certificate's lower envelope of the lines ``y = b_j x + v_j``
  then has one slope (1), so it is ``min_j v_j + a_i``, valid for a_i of either sign.

Write U for this matrix (U >= cos entrywise, equal on listed pairs). If the certified U-optimum M uses
only listed pairs, then ``cos(M) = U(M) >= U(M*) >= cos(M*)`` for the true optimum M*: M is optimal for
the cosines, its total exact. If it uses an unlisted pair, that pair's exact cosine is listed, the rows
concerned look deeper (their k grows 4-fold, so tau_i falls), and the problem is solved again; this ends
(at worst a row lists all its m_B pairs), usually after a round or two.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dualsae.alignment.sparse_assignment import SparseSolveOptions, solve_sparse
from dualsae.alignment.sparse_correlation import SparseCorrelation

# Temporaries of the blocked matmul: at most this many float64 entries ([block, m_B]; 256 MiB).
BLOCK_ENTRIES = 1 << 25


def unit_rows64(w: torch.Tensor) -> torch.Tensor:
    """Rows of ``w: [m, d]`` unit-normalised in float64 on the CPU (a zero row stays zero)."""
    return F.normalize(w.detach().to("cpu", torch.float64), dim=1)


def top_cosines(u_a: torch.Tensor, u_b: torch.Tensor, k: int, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of A its ``k`` largest cosines with B, and per row of B its ``k`` largest with A.

    u_a: [m_A, d], u_b: [m_B, d] unit rows. Returns ``(row_val [m_A, k_r], row_idx [m_A, k_r], col_val
    [k_c, m_B], col_idx [k_c, m_B])`` (descending; k_r = min(k, m_B), k_c = min(k, m_A))."""
    m_a, m_b = u_a.shape[0], u_b.shape[0]
    block = max(1, min(block, BLOCK_ENTRIES // max(m_b, 1)))
    rv, ri = [], []
    col_v = torch.empty(0, m_b, dtype=torch.float64)
    col_i = torch.empty(0, m_b, dtype=torch.long)
    for s in range(0, m_a, block):
        blk = (u_a[s : s + block] @ u_b.T).clamp_(-1.0, 1.0)  # [block, m_B]
        v, i = blk.topk(min(k, m_b), dim=1)
        rv.append(v)
        ri.append(i)
        v, i = blk.topk(min(k, blk.shape[0]), dim=0)
        cat_v, cat_i = torch.cat([col_v, v]), torch.cat([col_i, i + s])
        v, pos = cat_v.topk(min(k, cat_v.shape[0]), dim=0)
        col_v, col_i = v, cat_i.gather(0, pos)
    return torch.cat(rv).numpy(), torch.cat(ri).numpy(), col_v.numpy(), col_i.numpy()


def _row_tops(u_a: torch.Tensor, u_b: torch.Tensor, rows: np.ndarray, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``ks[q]`` largest cosines of each row ``rows[q]`` of A: (rows [E], cols [E], values [E], tau [Q])."""
    m_b = u_b.shape[0]
    step = max(1, BLOCK_ENTRIES // max(m_b, 1))
    vs, is_ = [], []
    for s in range(0, len(rows), step):
        blk = (u_a[torch.as_tensor(rows[s : s + step])] @ u_b.T).clamp_(-1.0, 1.0)  # [step, m_B]
        v, i = blk.topk(int(ks.max()), dim=1)
        vs.append(v)
        is_.append(i)
    v, i = torch.cat(vs).numpy(), torch.cat(is_).numpy()
    keep = np.arange(v.shape[1])[None, :] < ks[:, None]
    tau = np.where(ks < m_b, v[np.arange(len(rows)), np.minimum(ks, v.shape[1]) - 1], -1.0)
    return np.broadcast_to(rows[:, None], v.shape)[keep], i[keep], v[keep], tau


def _listed(keys: np.ndarray, q: np.ndarray) -> np.ndarray:
    pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    return keys[pos] == q


def match_cosine_sparse(w_a: torch.Tensor, w_b: torch.Tensor, k: int = 32, block: int = 4096,
                        options: SparseSolveOptions = SparseSolveOptions()) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray, dict]:
    """Maximal-total one-to-one matching of the rows of ``w_a: [m_A, d]`` and ``w_b: [m_B, d]`` by cosine
    (module docstring), certified.

    Returns ``(a [K], b [K], cos [K], total, best_cos [m_A], info)``: matched rows (a increasing),
    K = min(m_A, m_B), their exact cosines and sum, each A row's largest cosine with any B row, and
    ``info`` (listed pairs, rounds, deepened rows and the last solve's ``certificate``).
    """
    u_a, u_b = unit_rows64(w_a), unit_rows64(w_b)
    m_a, m_b = u_a.shape[0], u_b.shape[0]
    if min(m_a, m_b) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0), 0.0, np.full(m_a, -1.0), {"solver": "sparse", "rounds": 0, "certificate": {"certified": True}}
    row_val, row_idx, col_val, col_idx = top_cosines(u_a, u_b, k, block)
    k_row = np.full(m_a, row_val.shape[1], dtype=np.int64)
    tau = row_val[:, -1].copy() if row_val.shape[1] < m_b else np.full(m_a, -1.0)
    keys = np.concatenate([np.repeat(np.arange(m_a), row_val.shape[1]) * m_b + row_idx.reshape(-1),
                           col_idx.reshape(-1) * m_b + np.tile(np.arange(m_b), col_val.shape[0])])
    vals = np.concatenate([row_val.reshape(-1), col_val.reshape(-1)])
    keys, first = np.unique(keys, return_index=True)
    vals = vals[first]
    info: dict = {"solver": "sparse", "bound": "unlisted pairs of row i bounded by its k-th largest cosine", "k": int(k),
                  "listed_initial": int(len(keys))}
    rounds, solve_rounds, deepened = 0, 0, 0
    while True:
        rounds += 1
        sc = SparseCorrelation(np.arange(m_a), np.arange(m_b), -tau, np.ones(m_b), keys // m_b, keys % m_b, vals,
                               np.zeros(len(keys), dtype=np.int32))
        ra, rb, _, solve_info = solve_sparse(sc, options)
        solve_rounds += solve_info["rounds"]
        q = ra * m_b + rb
        unlisted = ~_listed(keys, q)
        if not unlisted.any():
            break
        # Rows that took a bound: list those pairs exactly, and look deeper so that their bound falls.
        bad = np.unique(ra[unlisted])
        k_row[bad] = np.minimum(4 * k_row[bad], m_b)
        deepened += len(bad)
        r, c, v, tau[bad] = _row_tops(u_a, u_b, bad, k_row[bad])
        ua, ub = ra[unlisted], rb[unlisted]
        exact = (u_a[torch.as_tensor(ua)] * u_b[torch.as_tensor(ub)]).sum(1).clamp_(-1.0, 1.0).numpy()
        new_keys = np.concatenate([keys, r * m_b + c, ua * m_b + ub])
        new_vals = np.concatenate([vals, v, exact])
        keys, first = np.unique(new_keys, return_index=True)
        vals = new_vals[first]
    cos = sc.lookup(ra, rb)
    info.update(listed_final=int(len(keys)), rounds=rounds, solve_rounds=int(solve_rounds), deepened_rows=int(deepened),
                candidates_final=solve_info["candidates_final"], certificate=solve_info["certificate"])
    return ra, rb, cos, float(cos.sum()), row_val[:, 0].copy(), info


__all__ = ["match_cosine_sparse", "top_cosines", "unit_rows64"]
