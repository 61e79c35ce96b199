"""core.sorting: the torch-backed sorts equal numpy's on ties, negatives, floats, bools and empty input."""

from __future__ import annotations

import numpy as np
import pytest

from dualsae.core.sorting import argsort_stable, rank_in_runs, unique_sorted


@pytest.mark.parametrize("make", [
    lambda r: r.integers(0, 5, 3000),  # heavy ties: stability matters
    lambda r: r.integers(-(1 << 60), 1 << 60, 3000),
    lambda r: r.standard_normal(3000).round(1),
    lambda r: r.integers(0, 3, 3000).astype(np.int32),
    lambda r: r.integers(0, 2, 3000).astype(bool),
    lambda r: np.zeros(0, dtype=np.int64),
])
def test_equal_to_numpy(make):
    x = make(np.random.default_rng(0))
    assert np.array_equal(argsort_stable(x), np.argsort(x, kind="stable"))
    assert np.array_equal(unique_sorted(x), np.unique(x))


def test_rank_in_runs_brute_force():
    g = np.sort(np.random.default_rng(1).integers(0, 40, 2000))
    expected = np.array([i - int(np.flatnonzero(g == g[i])[0]) for i in range(len(g))])
    assert np.array_equal(rank_in_runs(g), expected)
    assert len(rank_in_runs(np.zeros(0, dtype=np.int64))) == 0
