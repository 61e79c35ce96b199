"""The certified sparse assignment of eq. 6: its total equals the dense solver's on random, planted,
tie-heavy, rank-one-dominated and trained-SAE correlations at every size where dense fits; it is a
valid assignment; the certificate's check fails for a deliberately suboptimal matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualsae.alignment.assignment import match_sparse, solve_assignment
from dualsae.alignment.certificate import blocked_rank_one_min, check_all_pairs, dual_potentials, lower_envelope
from dualsae.alignment.coactivation import stats_from_codes
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
    from dualsae.alignment.coactivation import coactivation_correlation

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


@pytest.mark.parametrize("backend", ["scipy", "lapmod"])
@pytest.mark.parametrize("kind", ["random", "ties", "codes"])
def test_warm_started_rounds_equal_dense(backend, kind):
    """Square problems with few candidates (top_k 1, no rank-one columns) need several rounds; every round
    after the first solves the previous duals' reduced costs. Both backends reach the dense optimum."""
    pytest.importorskip("lap") if backend == "lapmod" else None
    rng = np.random.default_rng(11)
    if kind == "codes":
        gen = torch.Generator().manual_seed(5)
        ci, ct = _codes(gen, 2000, 400, 6), _codes(gen, 2000, 400, 6)  # unrelated codes: near-random C, the hard case
        sc = stats_from_codes(ci, ct, sparse=True).sparse_correlation()
    else:
        c = rng.uniform(-1, 1, (400, 400)) if kind == "random" else rng.integers(-2, 3, (400, 400)) / 2.0
        sc = SparseCorrelation.from_dense(c, np.arange(400), np.arange(400))
    info = _check_against_dense(sc, SparseSolveOptions(top_k=1, rank_one_cols=0, backend=backend))
    assert info["rounds"] >= 2, "the instance must exercise the warm-started rounds"
    assert set(info["round_solvers"]) == {backend}


@pytest.mark.parametrize("shape", [(58, 60), (60, 58), (100, 1000)])
def test_nearly_square_problems_are_padded_wide_ones_stay_rectangular(shape):
    """A few dead latents (58 x 60, either side) are padded with dummy rows and solved warm like a square
    problem; 100 x 1000 (900 dummy rows of 1000 edges would be most of the candidates) stays rectangular on scipy. Every
    case reaches the dense optimum, over several rounds."""
    c = np.random.default_rng(shape[0] + shape[1]).uniform(-1, 1, shape)
    sc = SparseCorrelation.from_dense(c, np.arange(shape[0]), np.arange(shape[1]))
    from dualsae.alignment.sparse_assignment import _lapmod_available

    backend = "lapmod" if shape[1] - shape[0] in (2, -2) and _lapmod_available() else "auto"
    info = _check_against_dense(sc, SparseSolveOptions(top_k=1, rank_one_cols=0, backend=backend))
    assert info["rounds"] >= 2
    if min(shape) == 100:
        assert set(info["round_solvers"]) == {"scipy"}
        from dualsae.core.errors import ConfigError
        with pytest.raises(ConfigError, match="square"):
            solve_sparse(sc, SparseSolveOptions(backend="lapmod"))


def test_dual_potentials_from_a_warm_start_are_feasible():
    """Any finite start gives duals that satisfy every candidate arc (reduced cost >= 0, tight on M,
    v >= 0, v = 0 on free columns), hence the same certified total, in fewer relaxation rounds."""
    rng = np.random.default_rng(8)
    c = rng.uniform(-1, 1, (120, 150))
    sc = SparseCorrelation.from_dense(c, np.arange(120), np.arange(150))
    rows, cols, total, _ = solve_sparse(sc)
    cr, cc = np.divmod(np.arange(c.size), 150)
    match = np.empty(120, dtype=np.int64)
    match[rows] = cols
    u0, v0, r0 = dual_potentials(150, cr, cc, c.reshape(-1), match)
    for init in (v0, v0 + rng.uniform(0, 0.5, 150), rng.uniform(0, 3, 150)):
        u, v, r = dual_potentials(150, cr, cc, c.reshape(-1), match, init=init)
        red = u[cr] + v[cc] - c.reshape(-1)
        assert red.min() >= -1e-12 and v.min() >= -1e-12
        assert np.abs(red[cc == match[cr]]).max() <= 1e-12
        free = np.setdiff1d(np.arange(150), match)
        assert np.abs(v[free]).max() <= 1e-12
        assert u.sum() + v.sum() == pytest.approx(total, abs=1e-9)
    assert dual_potentials(150, cr, cc, c.reshape(-1), match, init=v0)[2] <= r0


@pytest.mark.parametrize("skew", [False, True])
def test_prefiltered_top_per_group_equals_full_sort(skew):
    """top_per_group (prefiltered by a global threshold) selects exactly the entries of the full sort,
    including groups with fewer than k entries above the threshold (skew: a few groups hold most values)."""
    from dualsae.alignment.sparse_assignment import _top_per_group, top_per_group

    rng = np.random.default_rng(9)
    n_groups, p = 300, 60_000
    groups = (rng.zipf(1.3, p) % n_groups) if skew else rng.integers(0, n_groups, p)
    values = rng.uniform(-1, 0.5, p) + (0.5 * (groups % 7 == 0) if skew else 0.0)  # |c| <= 1; some groups sit above tau entirely
    for k in (1, 3, 8):
        full = np.sort(_top_per_group(groups, values, k))
        fast = np.sort(top_per_group(groups, values, k, n_groups, oversample=2))
        assert np.array_equal(full, fast)


def test_a_wrong_lapmod_matching_is_resolved_by_scipy(monkeypatch):
    """The backend never decides the certificate: a non-optimal lapmod matching (here the identity) leaves
    the duals' relaxation unconverged, and that round is solved again by scipy."""
    lap = pytest.importorskip("lap")
    monkeypatch.setattr(lap, "lapmod", lambda n, *a, **k: (0.0, np.arange(n), np.arange(n)))
    c = np.random.default_rng(6).uniform(-1, 1, (60, 60))
    info = _check_against_dense(SparseCorrelation.from_dense(c, np.arange(60), np.arange(60)), SparseSolveOptions(backend="lapmod"))
    assert info["round_solvers"][0] == "scipy (after lapmod)"


def test_dual_potentials_are_the_shortest_path_labels():
    """The frontier relaxation (only moved nodes' arcs each round) ends at the same labels as textbook
    Bellman-Ford over every arc: v_j = min(0, shortest path to j) in the residual graph with the
    reference node (j -> z, z -> free column, length 0), on a sparse rectangular instance."""
    rng = np.random.default_rng(11)
    n_i, n_t = 60, 80
    c = rng.uniform(-1, 1, (n_i, n_t))
    keep = rng.random((n_i, n_t)) < 0.2
    keep[np.arange(n_i), np.arange(n_i)] = True
    cr, cc = np.nonzero(keep)
    sc = SparseCorrelation.from_dense(np.where(keep, c, -5.0), np.arange(n_i), np.arange(n_t))
    rows, cols, _, _ = solve_sparse(sc, SparseSolveOptions(backend="scipy", rank_one_cols=0))
    match = np.empty(n_i, dtype=np.int64)
    match[rows] = cols
    assert keep[np.arange(n_i), match].all()
    u, v, _ = dual_potentials(n_t, cr, cc, c[cr, cc], match)
    # reference: node n_t is z; every label starts at 0 (the all-zero start of dual_potentials)
    mv = c[np.arange(n_i), match]
    arcs = [(int(j), int(match[i]), float(mv[i] - c[i, j])) for i, j in zip(cr, cc) if j != match[i]]
    arcs += [(j, n_t, 0.0) for j in range(n_t)] + [(n_t, j, 0.0) for j in np.setdiff1d(np.arange(n_t), match)]
    d = [0.0] * (n_t + 1)
    for _ in range(n_t + 2):
        changed = False
        for s, t, w in arcs:
            if d[s] + w < d[t] - 1e-15:
                d[t], changed = d[s] + w, True
        if not changed:
            break
    ref_v = np.asarray(d[:n_t]) - d[n_t]
    assert ref_v.max() > 0.1 and (ref_v > 1e-9).sum() > n_i // 2  # non-trivial labels
    np.testing.assert_allclose(v, ref_v, atol=1e-12)
    np.testing.assert_allclose(u, mv - ref_v[match], atol=1e-12)
