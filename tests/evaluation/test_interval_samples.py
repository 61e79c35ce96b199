"""Interval samples: every quantile bin of a latent's nonzero activations is represented, each sample
lies inside its bin, and the bins are those of a brute-force sort of the dense column."""

from __future__ import annotations

import numpy as np
import torch

from dualsae.core.codes import SparseCodes
from dualsae.evaluation.interval_samples import interval_samples


def _codes(n=400, k=4, m=9, seed=0) -> tuple[SparseCodes, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(m, size=k, replace=False) for _ in range(n)])
    idx[:, 0] = np.where(rng.random(n) < 0.7, 0, idx[:, 0])  # latent 0 frequent
    val = rng.uniform(0.1, 3.0, size=(n, k)).astype(np.float32)
    val[rng.random((n, k)) < 0.2] = 0.0  # inactive TopK entries are not activations
    # latent m-1 fires on 3 rows only (fewer rows than bins); latent m-2 never
    idx[idx == m - 2] = m - 3
    idx[idx == m - 1] = m - 3
    idx[:3, -1] = m - 1
    val[:3, -1] = [0.5, 0.7, 0.9]
    dense = np.zeros((n, m))
    for r in range(n):
        for s in range(k):
            if dense[r, idx[r, s]] == 0:
                dense[r, idx[r, s]] = val[r, s]
            else:
                val[r, s] = 0.0  # a repeated index: keep one entry
    return SparseCodes(torch.from_numpy(val), torch.from_numpy(idx.astype(np.int64)), m), dense


def test_bins_match_a_brute_force_sort_of_each_column():
    codes, dense = _codes()
    bins, per_bin = 5, 3
    samples = interval_samples(codes, bins=bins, per_bin=per_bin)
    got = [samples.of(j) for j in range(codes.m)]
    for j in range(codes.m):
        active = np.sort(dense[:, j][dense[:, j] > 0])
        c = len(active)
        if c == 0:
            assert got[j] == []
            continue
        nb = min(bins, c)
        assert len(got[j]) == nb  # every bin represented
        for b, (lo, hi, rows, vals) in enumerate(got[j]):
            ranks = np.arange(c)[np.arange(c) * nb // c == b]
            assert lo == active[ranks[0]] and hi == active[ranks[-1]]  # bin edges = its quantile range
            assert len(rows) == min(per_bin, len(ranks))
            assert np.all((vals >= lo) & (vals <= hi)) and np.all(np.diff(vals) >= 0)
            np.testing.assert_allclose(dense[rows, j], vals)  # the rows really have these activations
        # bins are contiguous and ordered: together they cover the whole range
        assert got[j][0][0] == active[0] and got[j][-1][1] == active[-1]
        assert all(got[j][b][1] <= got[j][b + 1][0] for b in range(nb - 1))
        assert np.quantile(active, 0.5) >= got[j][(nb - 1) // 2][0]


def test_a_latent_on_three_rows_gets_three_bins_of_one_row():
    codes, _ = _codes()
    got = interval_samples(codes, bins=5, per_bin=3).of(codes.m - 1)
    assert [(lo, hi, r.tolist()) for lo, hi, r, _ in got] == [(0.5, 0.5, [0]), (0.699999988079071, 0.699999988079071, [1]), (0.8999999761581421, 0.8999999761581421, [2])]
