"""Pruned statistics (dualsae.alignment.pruning): bounds that hold, a resolver equal to the full statistics,
and the certified optimum of eq. 6 equal to the dense solver's on random, planted, tie-heavy, signed and
trained-SAE codes, with keep small enough that the bounds must be refined by resolution rounds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dualsae.alignment.assignment import solve_assignment
from dualsae.alignment.certificate import blocked_pruned_min, pruned_bound_min
from dualsae.alignment.coactivation import PRUNE_ABOVE_BYTES, cofiring_products, resolve_stats_mode, stats_from_codes
from dualsae.alignment.correlation import load_sparse_correlation
from dualsae.alignment.pruning import PruneOptions, image_tiles, prune_entries, pruned_correlation
from dualsae.alignment.sparse_assignment import solve_pruned, solve_sparse
from dualsae.core.codes import SparseCodes
from dualsae.core.errors import ConfigError


def _codes(gen: torch.Generator, n: int, m: int, k: int, ones: bool = False) -> SparseCodes:
    idx = torch.stack([torch.randperm(m, generator=gen)[:k] for _ in range(n)])
    return SparseCodes(torch.ones(n, k) if ones else torch.rand(n, k, generator=gen), idx, m)


def _planted(gen: torch.Generator, ci: SparseCodes, m_t: int) -> SparseCodes:
    """Text codes that follow the image codes through a permutation on half the entries."""
    perm = torch.randperm(max(ci.m, m_t), generator=gen)
    idx = perm[ci.indices] % m_t
    noise = torch.rand(idx.shape, generator=gen) < 0.5
    idx = torch.where(noise, torch.randint(0, m_t, idx.shape, generator=gen), idx)
    return SparseCodes(ci.values * torch.rand(idx.shape, generator=gen), idx, m_t)


def _signed(gen: torch.Generator, c: SparseCodes) -> SparseCodes:
    return SparseCodes(c.values * (torch.randint(0, 2, c.values.shape, generator=gen) * 2 - 1), c.indices, c.m)


def _cases():
    gen = torch.Generator().manual_seed(17)
    ci = _codes(gen, 2500, 220, 6)
    yield "random", ci, _codes(gen, 2500, 260, 6)
    yield "planted", ci, _planted(gen, ci, 200)
    yield "ties", _codes(gen, 1500, 180, 5, ones=True), _codes(gen, 1500, 180, 5, ones=True)
    yield "signed", _signed(gen, _codes(gen, 900, 150, 5)), _signed(gen, _codes(gen, 900, 150, 5))


@pytest.mark.parametrize("keep", [1, 3, 24])
@pytest.mark.parametrize("case", ["random", "planted", "ties", "signed"])
def test_pruned_optimum_equals_dense(case, keep):
    ci, ct = next((a, b) for name, a, b in _cases() if name == case)
    full = stats_from_codes(ci, ct, sparse=True).sparse_correlation()
    dense = full.dense().numpy()
    _, _, best = solve_assignment(dense, "scipy")
    pc = pruned_correlation(ci, ct, keep=keep, tile_pairs=4000)
    assert pc.info["tiles"] > 1 and pc.info["cofiring_pairs"] == full.nnz
    sc = pc.correlation
    # every dropped co-firing pair lies under its bound; every listed one is the full statistics' value
    listed = sc.listed(full.rows, full.cols)
    drop = ~listed
    assert drop.any()
    assert np.all(full.values[drop] <= np.minimum(sc.row_bound[full.rows[drop]], sc.col_bound[full.cols[drop]]))
    pos = np.searchsorted(full.keys, sc.keys)
    assert np.array_equal(full.keys[pos], sc.keys) and np.array_equal(full.values[pos], sc.values)
    rows, cols, total, info, resolved = solve_pruned(sc, pc.resolver)
    assert total == pytest.approx(best, abs=1e-9), f"{case}, keep {keep}: pruned {total} != dense {best}"
    assert total == pytest.approx(dense[rows, cols].sum(), abs=1e-9)
    assert len(np.unique(rows)) == len(rows) == len(np.unique(cols)) == min(dense.shape)
    cert = info["certificate"]
    assert cert["certified"] and cert["max_dual_violation"] <= cert["tolerance"]
    assert info["resolved_pairs"] > 0 and resolved.nnz == sc.nnz + info["resolved_pairs"]
    # the resolved C lists exact values (the full statistics') on every pair it added
    assert np.allclose(resolved.lookup(rows, cols), dense[rows, cols], atol=1e-12, rtol=0)


def test_trained_sae_pair_pruned(emoji):
    """SAEs trained on real CLIP embeddings (emoji): pruned at keep 2 and certified equal to the dense optimum."""
    from dualsae.alignment.coactivation import encode_store
    from dualsae.training.config import TrainConfig
    from dualsae.training.trainer import train

    rows = emoji.split("train")
    cfg = TrainConfig.from_preset("real", method="specific", latents=512, k=16, batch_size=512, epochs=1, lr=2e-3)
    pair = train(rows, cfg, progress=False)
    ci, ct = encode_store(pair, rows)
    dense = stats_from_codes(ci, ct, sparse=True).sparse_correlation().dense().numpy()
    _, _, best = solve_assignment(dense, "scipy")
    pc = pruned_correlation(ci, ct, keep=2, tile_pairs=20_000)
    _, _, total, info, _ = solve_pruned(pc.correlation, pc.resolver)
    assert total == pytest.approx(best, abs=1e-9) and info["certificate"]["certified"]
    assert pc.info["kept_pairs"] < pc.info["cofiring_pairs"] / 5


def test_resolver_equals_full_statistics():
    gen = torch.Generator().manual_seed(3)
    ci, ct = _codes(gen, 1200, 90, 4), _codes(gen, 1200, 70, 4)
    dense = stats_from_codes(ci, ct, sparse=True).sparse_correlation().dense().numpy()
    pc = pruned_correlation(ci, ct, keep=1)
    rng = np.random.default_rng(0)
    r, c = rng.integers(0, dense.shape[0], 500), rng.integers(0, dense.shape[1], 500)
    r[:10], c[:10] = r[0], c[0]  # repeated queries
    vals, counts = pc.resolver(r, c)
    assert np.abs(vals - dense[r, c]).max() < 1e-13
    both = ((ci.indices.unsqueeze(2) == torch.from_numpy(pc.correlation.live_image[r]).view(1, 1, -1)).any(1).T.float()
            @ (ct.indices.unsqueeze(2) == torch.from_numpy(pc.correlation.live_text[c]).view(1, 1, -1)).any(1).float())
    assert np.array_equal(counts, np.diag(both.numpy()).astype(np.int32))


def test_pruned_bound_min_equals_blocked_scan():
    rng = np.random.default_rng(5)
    for n_i, n_t in ((50, 70), (80, 1), (1, 40)):
        rb, cb = rng.uniform(-0.2, 0.5, n_i), rng.uniform(-0.2, 0.5, n_t)
        rb[rng.random(n_i) < 0.2] = -np.inf
        cb[rng.random(n_t) < 0.2] = -np.inf
        cb[: n_t // 3] = cb[0]  # ties among the column bounds
        u, v = rng.uniform(-0.3, 0.3, n_i), rng.uniform(0, 0.4, n_t)
        fast, ref = pruned_bound_min(rb, cb, u, v), blocked_pruned_min(rb, cb, u, v)
        assert np.array_equal(np.isinf(fast), np.isinf(ref)) and np.abs(fast[np.isfinite(ref)] - ref[np.isfinite(ref)]).max(initial=0) < 1e-15


def test_prune_entries_keeps_each_side_top_and_bounds_only_grow():
    gen = torch.Generator().manual_seed(8)
    ci, ct = _codes(gen, 800, 60, 5), _codes(gen, 800, 60, 5)
    full = stats_from_codes(ci, ct, sparse=True).sparse_correlation()
    p = prune_entries(full, 3)
    dense = full.dense().numpy()
    for i in range(60):  # row i's three largest co-firing values are listed
        on = full.rows == i
        top = np.sort(full.values[on])[::-1][:3]
        assert np.all(np.isin(top, p.values[p.rows == i]))
    again = prune_entries(p, 1)
    assert np.all(again.row_bound >= p.row_bound) and np.all(again.col_bound >= p.col_bound)
    assert np.isfinite(p.row_bound).any() and dense.shape == full.shape


def test_tiles_respect_the_product_budget():
    gen = torch.Generator().manual_seed(2)
    ci, ct = _codes(gen, 1000, 100, 5), _codes(gen, 1000, 80, 5)
    tiles = image_tiles(ci, ct, 1000)
    assert tiles[0][0] == 0 and tiles[-1][1] == 100 and all(a[1] == b[0] for a, b in zip(tiles, tiles[1:]))
    for lo, hi in tiles:
        inside = (ci.indices >= lo) & (ci.indices < hi)
        products = int((inside.sum(1) * 5).sum())
        assert products <= 1000 or hi - lo == 1
    assert cofiring_products(ci, ct) == 1000 * 25


def test_auto_picks_pruned_by_products():
    assert resolve_stats_mode("auto", 4096, 4096, products=10**12) == "dense"
    big = PRUNE_ABOVE_BYTES // 48 + 1
    assert resolve_stats_mode("auto", 65_536, 65_536, products=big) == "pruned"
    assert resolve_stats_mode("auto", 65_536, 65_536, products=big - 2) == "sparse"
    assert resolve_stats_mode("auto", 65_536, 65_536) == "sparse"  # streamed: products not known
    with pytest.raises(ConfigError):
        solve_sparse(pruned_correlation(*(_codes(torch.Generator().manual_seed(1), 50, 9, 2) for _ in range(2)), keep=1).correlation)
    with pytest.raises(ConfigError):
        PruneOptions(keep=0)


def test_align_pruned_end_to_end(tmp_path, emoji):
    """align(stats_mode='pruned') on the emoji store: the same permutation total as sparse statistics, the
    pruning recorded, and correlation.safetensors keeping the bounds."""
    from dualsae.alignment.post_hoc import align
    from dualsae.training.config import TrainConfig
    from dualsae.training.trainer import train

    rows = emoji.split("train")
    cfg = TrainConfig.from_preset("real", method="specific", latents=512, k=16, batch_size=512, epochs=1, lr=2e-3)
    pair = train(rows, cfg, progress=False)
    ref = align(pair, rows, stats_mode="sparse", solver="sparse", progress=False)
    res = align(pair, rows, stats_mode="pruned", progress=False, prune_options=PruneOptions(keep=2, tile_pairs=30_000))
    assert res.report["statistics"] == "pruned"
    assert res.report["total_matched_correlation"] == pytest.approx(ref.report["total_matched_correlation"], abs=1e-9)
    det = res.report["solver_details"]
    assert det["certificate"]["certified"] and det["pruning"]["keep"] == 2 and det["pruning"]["tiles"] > 1
    assert det["pruning"]["cofiring_pairs"] == ref.report["solver_details"]["cofiring_pairs"]
    res.save(tmp_path / "out")
    back = load_sparse_correlation(tmp_path / "out")
    assert back.pruned and np.array_equal(back.row_bound, res.correlation.row_bound)
    json.dumps(res.report)  # JSON-able
    timing = res.report["timing"]  # align encoded the store itself: that part of the statistics is recorded
    assert 0 < timing["encoding_s"] <= timing["correlation_s"]
    with pytest.raises(ConfigError):
        align(pair, rows, stats_mode="pruned", solver="scipy", progress=False)


def test_heterogeneity_marks_bins_a_pruned_c_leaves_incomplete():
    from dualsae.evaluation.heterogeneity import heterogeneity

    gen = torch.Generator().manual_seed(4)
    ci = _codes(gen, 1500, 120, 6)
    ct = _planted(gen, ci, 120)
    pc = pruned_correlation(ci, ct, keep=2)
    dec_i, dec_t = torch.randn(120, 16, generator=gen), torch.randn(120, 16, generator=gen)
    het = heterogeneity(dec_i, dec_t, pc.correlation, None, None)
    cap = max(pc.correlation.row_bound.max(), pc.correlation.col_bound.max())
    flags = [b["complete"] for b in het.bins]
    assert flags == [not lo <= cap for lo in (0.0, 0.2, 0.4, 0.6, 0.8)] and not flags[0]


def test_borrowed_marginals_tile_equals_the_full_statistics():
    """A later tile that shares the first tile's marginals holds the same pairs and the same C as the full
    sparse statistics on its block; its marginals are the owner's, unchanged by its own update."""
    gen = torch.Generator().manual_seed(5)
    ci, ct = _codes(gen, 700, 90, 4), _codes(gen, 700, 80, 5)
    full = stats_from_codes(ci, ct, sparse=True)
    first = stats_from_codes(ci, ct, sparse=True, image_block=(0, 40))
    later = stats_from_codes(ci, ct, sparse=True, image_block=(40, 90), marginals_of=first)
    assert later.n == first.n == 700
    for name in ("sum_i", "sumsq_i", "fired_i", "sum_t", "sumsq_t", "fired_t"):
        assert torch.equal(getattr(later, name), getattr(full, name)), name
    keys, sums, counts = later.pairs.entries()
    fk, fs, fc = full.pairs.entries()
    sel = (fk // 80 >= 40)
    assert torch.equal(keys, fk[sel]) and torch.equal(counts, fc[sel])
    np.testing.assert_allclose(sums.numpy(), fs[sel].numpy(), rtol=1e-12, atol=1e-12)
    a, b = full.sparse_correlation(), later.sparse_correlation()
    assert np.isin(b.rows, np.flatnonzero(a.live_image >= 40)).all()
    on = a.live_image[a.rows] >= 40
    np.testing.assert_allclose(b.values, a.values[on], rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="borrow"):
        later.merge(first)
    with pytest.raises(ConfigError, match="borrow"):
        first.merge(later)
    with pytest.raises(ConfigError, match="borrow"):
        later.all_reduce()


def test_scales_give_the_correlation():
    """scales(): c_ij = S_ij u_i u_j - a_i b_j reproduces correlation() and the rank-one value of pairs that
    never co-fire is -a_i b_j, the closed form -mu_i mu_j / (sd_i sd_j) of eq. 5."""
    gen = torch.Generator().manual_seed(9)
    ci, ct = _codes(gen, 400, 30, 3), _codes(gen, 400, 25, 3)
    dense = stats_from_codes(ci, ct)
    c, li, lt = dense.correlation()
    s = dense.scales()
    assert torch.equal(s.live_image, li) and torch.equal(s.live_text, lt)
    expect = dense.cross[li][:, lt] * s.u_i[:, None] * s.u_t[None, :] - s.a[:, None] * s.b[None, :]
    torch.testing.assert_close(c, expect, rtol=1e-12, atol=1e-12)
    # brute force from the dense codes
    x = torch.zeros(400, 30, dtype=torch.float64).scatter_(1, ci.indices, ci.values.double())
    y = torch.zeros(400, 25, dtype=torch.float64).scatter_(1, ct.indices, ct.values.double())
    x, y = x[:, li], y[:, lt]
    ref = ((x - x.mean(0)) / x.std(0, unbiased=False)).T @ ((y - y.mean(0)) / y.std(0, unbiased=False)) / 400
    torch.testing.assert_close(c, ref, rtol=1e-9, atol=1e-9)
    never = (x > 0).double().T @ (y > 0).double() == 0
    torch.testing.assert_close(c[never], (-s.a[:, None] * s.b[None, :])[never], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", ["planted", "ties", "signed"])
@pytest.mark.parametrize("tile_pairs", [1, 2000, 10**12])
def test_two_passes_of_tiles_give_the_full_statistics_pruned_at_once(case, tile_pairs):
    # The reference: the full co-firing C pruned in one step. Pass 1 sees each row whole, pass 2 each column
    # whole; one latent per tile (tile_pairs 1), several, or a single tile must keep the same pairs and bounds.
    _, ci, ct = next(c for c in _cases() if c[0] == case)
    full = stats_from_codes(ci, ct, sparse=True).sparse_correlation()
    ref = prune_entries(full, 3)
    pc = pruned_correlation(ci, ct, keep=3, tile_pairs=tile_pairs)
    assert (pc.info["tiles"], pc.info["text_tiles"]) == (len(image_tiles(ci, ct, tile_pairs)), len(image_tiles(ct, ci, tile_pairs)))
    assert (pc.info["tiles"] == 1) == (tile_pairs == 10**12) and pc.info["cofiring_pairs"] == full.nnz
    sc = pc.correlation
    assert np.array_equal(sc.keys, ref.keys) and np.array_equal(sc.values, ref.values)
    assert np.array_equal(sc.counts, ref.counts)
    assert np.array_equal(sc.row_bound, ref.row_bound) and np.array_equal(sc.col_bound, ref.col_bound)
    assert sc.nnz <= 3 * sum(sc.shape) < full.nnz
