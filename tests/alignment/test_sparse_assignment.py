"""The certified sparse assignment of eq. 6: its total equals the dense solver's on random, planted,
tie-heavy, rank-one-dominated and trained-SAE correlations at every size where dense fits; it is a
valid assignment; the certificate's check fails for a deliberately suboptimal matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualsae.alignment.assignment import match_sparse, solve_assignment
from dualsae.alignment.certificate import blocked_rank_one_min, check_all_pairs, dual_potentials, lower_envelope
from dualsae.alignment.correlation import stats_from_codes
from dualsae.alignment.sparse_assignment import SparseSolveOptions, solve_sparse
from dualsae.alignment.sparse_correlation import SparseCorrelation
from dualsae.core.codes import SparseCodes


def _check_against_dense(sc: SparseCorrelation, opt: SparseSolveOptions = SparseSolveOptions()) -> dict:
    rows, cols, total, info = solve_sparse(sc, opt)
    dense = sc.dense().numpy()
    _, _, best = solve_assignment(dense, "scipy")
    k = min(sc.shape)
    assert len(rows) == len(cols) == k
    assert len(np.unique(rows)) == k and len(np.unique(cols)) == k, "each latent matched at most once"
    assert np.all(np.diff(rows) > 0)
    assert total == pytest.approx(dense[rows, cols].sum(), abs=1e-9)
    assert total == pytest.approx(best, abs=1e-9), f"sparse total {total} != dense optimum {best}"
    cert = info["certificate"]
    assert cert["certified"] and cert["max_dual_violation"] <= cert["tolerance"]
    return info


def _codes(gen: torch.Generator, n: int, m: int, k: int, planted: torch.Tensor | None = None, source: torch.Tensor | None = None) -> SparseCodes:
    idx = torch.stack([torch.randperm(m, generator=gen)[:k] for _ in range(n)])
    if planted is not None:  # half of each row's latents follow the other side's through a planted permutation
        idx[:, : k // 2] = planted[source[:, : k // 2]] % m
    return SparseCodes(torch.rand(n, k, generator=gen), idx, m)


@pytest.mark.parametrize("shape", [(64, 64), (300, 260), (200, 330), (1024, 1024)])
def test_random_dense_correlations(shape):
    """Every entry explicit and random: the candidates miss most optima, the certificate rounds fix it."""
    rng = np.random.default_rng(shape[0] + 7 * shape[1])
    c = rng.uniform(-1, 1, shape)
    info = _check_against_dense(SparseCorrelation.from_dense(c, np.arange(shape[0]), np.arange(shape[1])))
    assert info["candidates_final"] < c.size


@pytest.mark.parametrize("m_i, m_t, planted", [(200, 200, True), (256, 192, True), (150, 240, False), (512, 512, True), (2048, 2048, True)])
def test_codes_with_rank_one_remainder(m_i, m_t, planted):
    """C from sparse codes: co-firing entries plus -a_i b_j everywhere else (the common case)."""
    gen = torch.Generator().manual_seed(m_i + m_t)
    n, k = 4 * max(m_i, m_t), 6
    ci = _codes(gen, n, m_i, k)
    ct = _codes(gen, n, m_t, k, torch.randperm(max(m_i, m_t), generator=gen) if planted else None, ci.indices)
    sc = stats_from_codes(ci, ct, sparse=True).sparse_correlation()
    assert sc.nnz < sc.shape[0] * sc.shape[1]
    _check_against_dense(sc)


def test_tie_heavy_and_all_negative_rows():
    rng = np.random.default_rng(4)
    c = rng.integers(-2, 3, (300, 280)) / 2.0  # five values only: massive ties
    _check_against_dense(SparseCorrelation.from_dense(c, np.arange(300), np.arange(280)))
    neg = -rng.uniform(0.1, 1.0, (120, 150))  # every entry negative
    _check_against_dense(SparseCorrelation.from_dense(neg, np.arange(120), np.arange(150)))
    # rank-one only (no co-firing entry at all), mixed signs of a and b
    a, b = rng.standard_normal(90), rng.standard_normal(110)
    empty = np.zeros(0, dtype=np.int64)
    _check_against_dense(SparseCorrelation(np.arange(90), np.arange(110), a, b, empty, empty, np.zeros(0), empty),
                         SparseSolveOptions(rank_one_cols=1))


def test_signed_codes():
    """Codes with negative values: a_i, b_j of both signs, co-firing products of both signs."""
    gen = torch.Generator().manual_seed(9)
    n, m, k = 900, 160, 5
    ci, ct = _codes(gen, n, m, k), _codes(gen, n, m, k)
    sign = lambda c: SparseCodes(c.values * (torch.randint(0, 2, c.values.shape, generator=gen) * 2 - 1), c.indices, c.m)  # noqa: E731
    sc = stats_from_codes(sign(ci), sign(ct), sparse=True).sparse_correlation()
    assert (sc.a < 0).any() and (sc.a > 0).any()
    _check_against_dense(sc, SparseSolveOptions(top_k=2, rank_one_cols=1))


def test_trained_sae_correlation(emoji):
    """A correlation from SAEs trained on real CLIP embeddings (emoji store)."""
    from dualsae.training.config import TrainConfig
    from dualsae.training.trainer import train

    rows = emoji.split("train")
    cfg = TrainConfig.from_preset("real", method="specific", latents=512, k=16, batch_size=512, epochs=1, lr=2e-3)
    pair = train(rows, cfg, progress=False)
    from dualsae.alignment.correlation import coactivation_correlation

    stats = coactivation_correlation(pair, rows, progress=False, stats="sparse")
    sc = stats.sparse_correlation()
    info = _check_against_dense(sc, SparseSolveOptions(top_k=4, rank_one_cols=2))
    mt = match_sparse(sc)
    assert mt.solver == "sparse" and mt.info["certificate"]["certified"]
    assert len(mt.image) == min(sc.shape) and info["rounds"] >= 1


def test_certificate_fails_for_a_suboptimal_matching():
    """Swap two rows of the optimum: the duals of that matching cannot certify it (the check can fail)."""
    rng = np.random.default_rng(1)
    c = rng.uniform(-1, 1, (40, 40))
    sc = SparseCorrelation.from_dense(c, np.arange(40), np.arange(40))
    rows, cols, _, _ = solve_sparse(sc)
    bad = cols.copy()
    bad[[0, 1]] = bad[[1, 0]]
    assert c[rows, bad].sum() < c[rows, cols].sum()
    # all pairs as candidates: the relaxation meets a negative cycle
    r_all, c_all = np.divmod(np.arange(c.size), 40)
    with pytest.raises(Exception, match="not optimal"):
        dual_potentials(40, r_all, c_all, c.reshape(-1), bad)
    # candidates = the bad matching only: its duals are "optimal" there, and the all-pairs check rejects them
    keep = np.arange(40)
    u, v, _ = dual_potentials(40, keep, bad, c[keep, bad], bad)
    violation, add_r, add_c = check_all_pairs(sc, u, v)
    assert violation > 1e-3 and len(add_r) > 0


def test_lower_envelope_equals_blocked_scan():
    rng = np.random.default_rng(2)
    slopes, intercepts, x = rng.standard_normal(700), rng.standard_normal(700), rng.standard_normal(500) * 3
    slopes[:50] = slopes[50:100]  # repeated slopes
    ref = (slopes[None, :] * x[:, None] + intercepts[None, :]).min(1)
    np.testing.assert_allclose(lower_envelope(slopes, intercepts, x), ref, rtol=0, atol=1e-12)
    u, v = rng.standard_normal(500), rng.standard_normal(700)
    np.testing.assert_allclose(blocked_rank_one_min(x, slopes, u, v), u + lower_envelope(slopes, v, x), atol=1e-12)
    # the blocked reference as the certificate's rank-one check gives the same answer
    sc = SparseCorrelation.from_dense(rng.uniform(-1, 1, (50, 60)), np.arange(50), np.arange(60))
    assert solve_sparse(sc, SparseSolveOptions(rank_one_check="blocked"))[2] == pytest.approx(solve_sparse(sc)[2], abs=1e-12)
