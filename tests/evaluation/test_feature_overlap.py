"""``evaluation.feature_overlap``: a planted permutation recovered, random SAEs at the chance level of
their dimension, matching totals equal to brute force, rectangular shares, dead latents counted."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from dualsae.core.errors import ConfigError
from dualsae.evaluation.feature_overlap import (
    OverlapOptions,
    chance_share,
    compare_saes,
    cosine_matrix,
    weight_matching,
)
from dualsae.models.sae import SAE, SAEConfig
from dualsae.store.paired import PairedEmbeddings
from tests.helpers import make_store
from tests.metrics_helpers import random_sae


def permuted_copy(sae: SAE, perm: np.ndarray, noise: float, seed: int = 0) -> SAE:
    """B with B's latent perm[a] = A's latent a: decoder rows moved and noised, encoder rows and biases moved."""
    g = torch.Generator().manual_seed(seed)
    b = SAE(SAEConfig(d=sae.d, m=sae.m, k=sae.config.k))
    inv = torch.as_tensor(np.argsort(perm))
    with torch.no_grad():
        b.W_dec.copy_(sae.W_dec[inv] + noise * torch.randn(sae.W_dec.shape, generator=g))
        b.W_enc.copy_(sae.W_enc[inv])
        b.b_enc.copy_(sae.b_enc[inv])
        b.b_dec.copy_(sae.b_dec)
    return b.eval()


def test_planted_permutation_is_recovered_by_every_matching(tmp_path):
    d, m = 16, 40
    a = random_sae(d, m, k=4, seed=0)
    perm = np.random.default_rng(1).permutation(m)
    b = permuted_copy(a, perm, noise=0.01)
    make_store(tmp_path / "s", n=500, d=d)
    rows = PairedEmbeddings.open(tmp_path / "s")
    res = compare_saes(a, b, rows, "image")
    for match in (res.decoder, res.encoder):
        assert match.a.tolist() == list(range(m))
        assert match.b.tolist() == perm.tolist()
    assert res.decoder.score.min() > 0.99
    js = res.to_json()
    assert js["decoder"]["thresholds"]["0.7"]["share"] == js["decoder"]["thresholds"]["0.9"]["share"] == 1.0
    assert js["paulo_belrose_shared"]["0.7"]["count"] == m
    assert js["counterpart"]["b"] == perm.tolist()
    # Same encoder and biases: B's codes are A's, renumbered; every live latent correlates 1 with its image.
    act = res.activation
    live = np.flatnonzero(res.fired_a > 0)
    assert act.a.tolist() == live.tolist() and act.b.tolist() == perm[live].tolist()
    np.testing.assert_allclose(act.score, 1.0, atol=1e-9)
    assert js["activation"]["same_pair_as_decoder"]["share"] == 1.0


def test_random_directions_match_at_the_chance_level_of_their_dimension():
    # d = 3: the cosine of two random unit vectors is uniform on [-1, 1] (Archimedes), so the best of
    # p random directions reaches t with probability 1 - ((1 + t) / 2)^p; chance_share must say so.
    for t in (0.0, 0.7, 0.9):
        assert chance_share(3, 4, t) == pytest.approx(1 - ((1 + t) / 2) ** 4, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    # 4,000 independent draws of 4 random directions against one (any one: the law is rotation invariant).
    best = cosine_matrix(torch.randn(16_000, 3, generator=g), torch.randn(1, 3, generator=g))[:, 0].reshape(4000, 4).max(axis=1)
    for t in (0.7, 0.9):
        p = chance_share(3, 4, t)
        assert abs((best >= t).mean() - p) < 4 * np.sqrt(p * (1 - p) / 4000)
    # A one-latent matching is the best counterpart, so over 400 independent 1 x 5 matchings the share at
    # 0.7 is 1 - 0.85^5; the same formula in d = 10 checked against sampled cosines.
    hits = [weight_matching(torch.randn(1, 3, generator=g), torch.randn(5, 3, generator=g), "t", OverlapOptions())[0].score[0] >= 0.7
            for _ in range(400)]
    p = chance_share(3, 5, 0.7)
    assert abs(np.mean(hits) - p) < 4 * np.sqrt(p * (1 - p) / 400)
    cos = cosine_matrix(torch.randn(200_000, 10, generator=g), torch.randn(1, 10, generator=g))[:, 0]
    assert (cos >= 0.5).mean() == pytest.approx(chance_share(10, 1, 0.5), abs=4 * np.sqrt(0.06 / 200_000))
    # d = 512, two random SAEs: nothing is shared (chance below 1e-40 per latent).
    res = compare_saes(random_sae(512, 256, 8, seed=1), random_sae(512, 256, 8, seed=2))
    js = res.to_json()
    assert js["decoder"]["thresholds"]["0.7"]["count"] == 0 and js["paulo_belrose_shared"]["0.7"]["count"] == 0
    assert js["decoder"]["best_counterpart"]["0.7"]["chance_share_of_a"] < 1e-40
    assert 0.1 < js["decoder"]["mean"] < 0.3  # Hungarian picks the tail of N(0, 1/512), well above 0
    # ... which is the level of the reference matching of random directions of the same shapes.
    assert abs(js["decoder"]["mean"] - js["decoder"]["random_baseline"]["mean"]) < 0.01
    assert abs(js["encoder"]["mean"] - js["decoder"]["random_baseline"]["mean"]) < 0.01


def brute_force_max(score: np.ndarray) -> float:
    """Largest total of a one-to-one matching of the smaller side into the larger, by enumeration."""
    s = score if score.shape[0] <= score.shape[1] else score.T
    return max(s[np.arange(s.shape[0]), list(cols)].sum() for cols in itertools.permutations(range(s.shape[1]), s.shape[0]))


@pytest.mark.parametrize("solver", ["dense", "sparse"])
@pytest.mark.parametrize("m_a,m_b", [(6, 6), (5, 7), (7, 4)])
def test_matching_total_equals_brute_force(m_a, m_b, solver, tmp_path):
    a, b = random_sae(8, m_a, 2, seed=m_a), random_sae(8, m_b, 2, seed=10 + m_b)
    opt = OverlapOptions(solver=solver, candidates=2)  # 2 exact cosines per latent: the sparse path must re-solve
    for w_a, w_b, kind in ((a.W_dec, b.W_dec, "decoder cosine"), (a.W_enc, b.W_enc, "encoder cosine")):
        match, best = weight_matching(w_a, w_b, kind, opt)
        cos = cosine_matrix(w_a, w_b)
        assert len(match.a) == min(m_a, m_b) and len(set(match.b.tolist())) == len(match.b)
        assert match.total == pytest.approx(brute_force_max(cos), abs=1e-9)
        assert match.total == pytest.approx(cos[match.a, match.b].sum(), abs=1e-12)
        np.testing.assert_allclose(best, cos.max(axis=1), atol=1e-12)
    make_store(tmp_path / "s", n=300, d=8)
    res = compare_saes(a, b, PairedEmbeddings.open(tmp_path / "s"), "text", opt)
    assert res.activation.solver == ("sparse" if solver == "sparse" else res.decoder.solver)
    # The correlation matching against brute force on its live block, recomputed here with numpy.
    x = PairedEmbeddings.open(tmp_path / "s").read("text").float()
    za, zb = a.encode(x, dense=True).detach().double().numpy(), b.encode(x, dense=True).detach().double().numpy()
    la, lb = np.flatnonzero(za.std(0) > 0), np.flatnonzero(zb.std(0) > 0)
    c = np.corrcoef(za[:, la].T, zb[:, lb].T)[: len(la), len(la):]
    assert res.activation.total == pytest.approx(brute_force_max(c), abs=1e-8)


def test_same_sae_twice_shares_everything_and_rectangular_shares_are_over_the_smaller_side(tmp_path):
    a = random_sae(12, 10, 3, seed=3)
    make_store(tmp_path / "s", n=300, d=12)
    rows = PairedEmbeddings.open(tmp_path / "s")
    js = compare_saes(a, a, rows, "image").to_json()
    for block in ("decoder", "encoder", "activation"):
        assert all(v["share"] == 1.0 for v in js[block]["thresholds"].values()), block
        assert js[block]["pairs"]["a"] == js[block]["pairs"]["b"]
    # B = A's 10 latents plus 10 random ones: A is the smaller side, all of it shared, half of B.
    extra = random_sae(12, 10, 3, seed=4)
    b = SAE(SAEConfig(d=12, m=20, k=3))
    with torch.no_grad():
        for name in ("W_dec", "W_enc", "b_enc"):
            getattr(b, name).copy_(torch.cat([getattr(a, name), getattr(extra, name)]))
    js = compare_saes(a, b).to_json()
    t = js["decoder"]["thresholds"]["0.9"]
    assert js["rectangular"] and t["share"] == 1.0 and t["share_of_a"] == 1.0 and t["share_of_b"] == 0.5


def test_dead_latents_are_counted_and_left_out_of_the_correlation(tmp_path):
    a = random_sae(12, 10, 3, seed=5)
    with torch.no_grad():
        a.b_enc[[2, 7]] = -1e3  # never among the active latents of any row
    make_store(tmp_path / "s", n=300, d=12)
    js = compare_saes(a, random_sae(12, 10, 3, seed=6), PairedEmbeddings.open(tmp_path / "s"), "image").to_json()
    assert js["activation"]["dead"]["a"] == 2 and js["activation"]["n_a"] == 8
    assert not {2, 7} & set(js["activation"]["pairs"]["a"])


def test_wrong_width_and_too_large_matrices_are_one_line_errors():
    with pytest.raises(ConfigError, match="d=12.*d=8"):
        compare_saes(random_sae(12, 4, 2, seed=0), random_sae(8, 4, 2, seed=0))
    with pytest.raises(ConfigError, match=r"40 x 50 score matrix .* limit of 100 \(--max-dense\)"):
        compare_saes(random_sae(8, 40, 2, seed=0), random_sae(8, 50, 2, seed=0), opt=OverlapOptions(max_dense=100, solver="dense"))


def assert_same_overlap(sparse, dense, thresholds=(0.7, 0.9)):
    """The sparse path's totals and shares equal the dense path's, and each sparse matching is certified."""
    for name in ("decoder", "encoder", "baseline", "activation"):
        s, d = getattr(sparse, name), getattr(dense, name)
        if d is None:
            assert s is None
            continue
        assert s.solver == "sparse" and d.solver != "sparse"
        assert s.total == pytest.approx(d.total, abs=1e-8), name
        assert len(set(s.b.tolist())) == len(s.b) == len(d.b)
        for t in thresholds:
            assert s.count_ge(t) == d.count_ge(t), (name, t)
        cert = s.summary(thresholds)["sparse_solver"]["certificate"]
        assert cert["certified"] and cert["max_dual_violation"] <= cert["tolerance"]
    np.testing.assert_allclose(sparse.best_cos, dense.best_cos, atol=1e-12)


@pytest.mark.parametrize("m_a,m_b,d", [(300, 260, 16), (512, 512, 64)])
def test_sparse_path_equals_dense_on_random_saes(m_a, m_b, d, tmp_path):
    a, b = random_sae(d, m_a, 4, seed=m_a), random_sae(d, m_b, 4, seed=m_b + 1)
    make_store(tmp_path / "s", n=400, d=d)
    rows = PairedEmbeddings.open(tmp_path / "s")
    dense = compare_saes(a, b, rows, "image", OverlapOptions(solver="dense"))
    sparse = compare_saes(a, b, rows, "image", OverlapOptions(solver="sparse"))
    assert_same_overlap(sparse, dense)
    # m_A x m_B above max_dense: auto takes the sparse path.
    auto = compare_saes(a, b, opt=OverlapOptions(max_dense=1000, baseline=False))
    assert auto.decoder.solver == "sparse" and auto.decoder.total == pytest.approx(dense.decoder.total, abs=1e-8)
    js = sparse.to_json()
    assert js["decoder"]["sparse_solver"]["listed_final"] < m_a * m_b
    assert js["activation"]["sparse_solver"]["certificate"]["certified"]


def test_sparse_path_recovers_a_planted_permutation():
    d, m = 32, 400
    a = random_sae(d, m, 4, seed=3)
    perm = np.random.default_rng(4).permutation(m)
    b = permuted_copy(a, perm, noise=0.02)
    sparse = compare_saes(a, b, opt=OverlapOptions(solver="sparse"))
    assert sparse.decoder.b.tolist() == perm.tolist() and sparse.encoder.b.tolist() == perm.tolist()
    assert_same_overlap(sparse, compare_saes(a, b, opt=OverlapOptions(solver="dense")))


def test_sparse_path_on_ties():
    """Rows drawn from 10 directions (exact duplicates): every latent ties with 26-30 others at cosine 1,
    more than the candidates listed, so the bound tau_i = 1 equals the listed values."""
    d = 16
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(10, d, generator=g, dtype=torch.float64)
    a, b = random_sae(d, 300, 4, seed=0), random_sae(d, 260, 4, seed=1)
    with torch.no_grad():
        a.W_dec.copy_(dirs[torch.randperm(300, generator=g) % 10])
        b.W_dec.copy_(dirs[torch.randperm(260, generator=g) % 10])
    opt = dict(baseline=False)
    sparse = compare_saes(a, b, opt=OverlapOptions(solver="sparse", candidates=16, **opt))
    dense = compare_saes(a, b, opt=OverlapOptions(solver="dense", **opt))
    assert_same_overlap(sparse, dense)
    assert sparse.decoder.count_ge(0.9) == 260 and sparse.decoder.total == pytest.approx(260.0, abs=1e-9)
