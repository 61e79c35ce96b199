"""Heterogeneity by correlation bin (Fig. 2), top-activating examples, and ``dualsae analyze``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dualsae.alignment.post_hoc import align
from dualsae.evaluation.heterogeneity import BIN_EDGES, bin_index, heterogeneity, heterogeneity_from_folder, top_activating
from dualsae.models.pair import SAEPair
from dualsae.models.sae import SAE, SAEConfig
from dualsae.store.paired import PairedEmbeddings, write_store


def _brute_force(img: np.ndarray, txt: np.ndarray, c: np.ndarray, li: np.ndarray, lt: np.ndarray):
    """Every (i, j) pair explicitly, with the bin rule written out."""
    a = img[li] / np.linalg.norm(img[li], axis=1, keepdims=True)
    b = txt[lt] / np.linalg.norm(txt[lt], axis=1, keepdims=True)
    dist = 1 - a @ b.T
    out = []
    for k in range(5):
        lo, hi = BIN_EDGES[k], BIN_EDGES[k + 1]
        mask = (c >= lo) & ((c < hi) if k < 4 else np.ones_like(c, dtype=bool))
        out.append(dist[mask])
    return out, int((c < 0).sum())


def test_bin_index_edges():
    c = np.array([-0.01, 0.0, 0.1999, 0.2, 0.4, 0.5999, 0.6, 0.8, 1.0, 1.0000001])
    assert bin_index(c).tolist() == [-1, 0, 0, 1, 2, 2, 3, 4, 4, 4]


def test_heterogeneity_matches_brute_force():
    rng = np.random.default_rng(0)
    m_i, m_t, d = 30, 26, 8
    img = rng.standard_normal((m_i, d))
    txt = rng.standard_normal((m_t, d)) * 3  # not unit norm: cosine must normalise
    li = np.sort(rng.choice(m_i, 24, replace=False))
    lt = np.sort(rng.choice(m_t, 21, replace=False))
    c = rng.uniform(-0.4, 1.0, size=(24, 21))
    c[0, :5] = [0.2, 0.4, 0.6, 0.8, 1.0]  # exact edges land in the upper bin ([0.8, 1.0] closed)
    res = heterogeneity(torch.tensor(img), torch.tensor(txt), c, li, lt, block_rows=5)
    ref, neg = _brute_force(img, txt, c, li, lt)
    assert res.negative_count == neg and res.pairs == 24 * 21
    assert sum(b["count"] for b in res.bins) + neg == 24 * 21
    for b, vals in zip(res.bins, ref):
        assert b["count"] == len(vals) > 0
        assert b["quantiles_exact"]
        assert b["mean"] == pytest.approx(vals.mean(), abs=1e-6)
        for key, q in (("q1", 0.25), ("median", 0.5), ("q3", 0.75)):
            assert b[key] == pytest.approx(np.quantile(vals, q), abs=1e-6)
        assert b["min"] == pytest.approx(vals.min(), abs=1e-6) and b["max"] == pytest.approx(vals.max(), abs=1e-6)
    # Histogram fallback when a bin holds more than max_exact values: quartiles within 1e-4.
    approx = heterogeneity(torch.tensor(img), torch.tensor(txt), c, li, lt, block_rows=5, max_exact=40)
    for b, vals in zip(approx.bins, ref):
        assert b["quantiles_exact"] == (len(vals) <= 40)
        assert b["mean"] == pytest.approx(vals.mean(), abs=1e-6)
        for key, q in (("q1", 0.25), ("median", 0.5), ("q3", 0.75)):
            lo, hi = np.quantile(vals, q, method="lower"), np.quantile(vals, q, method="higher")
            assert lo - 1e-4 <= b[key] <= hi + 1e-4


def _planted(seed: int = 0, d: int = 16, m: int = 24, k: int = 3, n: int = 2000):
    """Image SAE and a text SAE whose rows are the image rows permuted and rotated a little."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(m, d, generator=gen)
    w = w / w.norm(dim=1, keepdim=True)
    sigma = torch.randperm(m, generator=gen)
    wt = torch.empty_like(w)
    wt[sigma] = w + 0.15 * torch.randn(m, d, generator=gen) / d**0.5
    saes = []
    for enc in (w, wt):
        sae = SAE(SAEConfig(d=d, m=m, k=k, dec_bias_init="zero"))
        with torch.no_grad():
            sae.W_enc.copy_(enc)
            sae.W_dec.copy_(enc / enc.norm(dim=1, keepdim=True))
            sae.b_enc.zero_()
        saes.append(sae.eval())
    x = torch.randn(n, d, generator=gen)
    y = x + 0.05 * torch.randn(n, d, generator=gen)
    return SAEPair("specific", *saes), x.numpy(), y.numpy()


def test_heterogeneity_from_aligned_folder_stored_and_recomputed(tmp_path):
    pair, x, y = _planted()
    meta = [{"caption": f"cap {i}", "id": f"r{i}", "split": "train"} for i in range(len(x))]
    store = PairedEmbeddings.open(write_store(tmp_path / "store", x, y, meta))
    result = align(pair, store, batch_size=500, progress=False)
    folder = result.save(tmp_path / "aligned")
    stored, src1 = heterogeneity_from_folder(folder)
    fresh, src2 = heterogeneity_from_folder(folder, store, progress=False)
    assert src1.endswith("correlation.safetensors") and src2.startswith("recomputed")
    # Both describe the same pairs: identical bin counts away from edges, same means.
    assert [b["count"] for b in stored.bins] == [b["count"] for b in fresh.bins]
    for a, b in zip(stored.bins, fresh.bins):
        if a["count"]:
            assert a["mean"] == pytest.approx(b["mean"], abs=1e-5)
    # The planted correspondences are the high-c pairs: 24 pairs with c >= 0.8, with small distances.
    top = stored.bins[-1]
    assert top["count"] == 24 and top["max"] < stored.bins[0]["median"]
    # Matched-pair summary equals the direct computation on the aligned decoders.
    loaded = result.pair
    a = loaded.image.W_dec.detach().double()
    b = loaded.text.W_dec.detach().double()
    idx = torch.as_tensor(result.report["matched"]["image"])
    direct = 1 - torch.nn.functional.cosine_similarity(a[idx], b[idx], dim=1)
    assert stored.matched["count"] == 24 and stored.matched["mean"] == pytest.approx(direct.mean().item(), abs=1e-9)


def test_top_activating_matches_brute_force(tmp_path):
    pair, x, y = _planted(seed=2, n=600)
    meta = [{"caption": f"caption {i}", "split": "train" if i % 3 else "test"} for i in range(len(x))]
    store = PairedEmbeddings.open(write_store(tmp_path / "s", x, y, meta)).split("train")
    for mod, arr in (("image", x), ("text", y)):
        got = top_activating(pair, store, latent=5, modality=mod, n=7, batch_size=64)
        rows = store.rows_of(np.arange(store.n))
        dense = pair.sae_for(mod).encode(torch.as_tensor(arr[rows]), dense=True)[:, 5].numpy()
        order = np.argsort(-dense, kind="stable")[:7]
        assert [g["row"] for g in got] == rows[order].tolist()
        assert [g["caption"] for g in got] == [f"caption {r}" for r in rows[order]]
        np.testing.assert_allclose([g["activation"] for g in got], dense[order], rtol=1e-6)
        assert all(r % 3 for r in (g["row"] for g in got))  # only train rows


def test_analyze_commands(tmp_path, capsys):
    from dualsae.cli import main

    pair, x, y = _planted(seed=3)
    meta = [{"caption": f"cap {i}", "id": f"r{i}", "split": "train"} for i in range(len(x))]
    store = write_store(tmp_path / "store", x, y, meta)
    align(pair, PairedEmbeddings.open(store), progress=False).save(tmp_path / "aligned")
    out = tmp_path / "het"
    assert main(["analyze", "heterogeneity", str(tmp_path / "aligned"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "heterogeneity.json").read_text())
    assert (out / "heterogeneity.png").stat().st_size > 1000
    assert summary["bins"][-1]["count"] == 24 and "[0.8, 1.0]" in printed and "c < 0" in printed
    assert main(["analyze", "top", str(tmp_path / "aligned"), "--data", str(store), "--latent", "3", "-n", "4"]) == 0
    printed = capsys.readouterr().out
    assert "latent 3" in printed and "matched c =" in printed and printed.count("cap ") == 8
    # A latent outside [0, m) is a one-line error.
    assert main(["analyze", "top", str(tmp_path / "aligned"), "--data", str(store), "--latent", "99"]) == 2
    assert "latent must be in [0, 24)" in capsys.readouterr().err


@pytest.mark.parametrize("signed", [False, True])
def test_sparse_heterogeneity_equals_dense(signed):
    """Fig. 2 from a sparse C (co-firing pairs with c >= 0, rank-one rest only where signs allow c >= 0)
    equals the dense path on the same C: counts exactly, means and quartiles to float32 rounding."""
    from dualsae.alignment.coactivation import stats_from_codes
    from dualsae.core.codes import SparseCodes

    gen = torch.Generator().manual_seed(1 + signed)
    n, m, k, d = 800, 60, 4, 12
    codes = []
    for _ in range(2):
        vals = torch.rand(n, k, generator=gen)
        if signed:  # negative values: some means < 0, so some rank-one entries -a_i b_j are >= 0
            vals = vals - 0.45
        codes.append(SparseCodes(vals, torch.randint(0, m, (n, k), generator=gen), m))
    stats = stats_from_codes(*codes)
    c, li, lt = stats.correlation()
    sc = stats.sparse_correlation()
    assert signed == bool(((-np.outer(sc.a, sc.b)) >= 0).any())
    img, txt = torch.randn(m, d, generator=gen), torch.randn(m, d, generator=gen)
    dense = heterogeneity(img, txt, c, li, lt, block_rows=7)
    sparse = heterogeneity(img, txt, sc, None, None)
    assert sparse.negative_count == dense.negative_count and sparse.pairs == dense.pairs
    for a, b in zip(sparse.bins, dense.bins):
        assert a["count"] == b["count"]
        if a["count"]:
            for key in ("mean", "q1", "median", "q3", "min", "max"):
                assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert np.abs(sparse.hists - dense.hists).sum() <= 2 * 4  # at most a few values move one 1e-4 histogram bin


def test_heterogeneity_from_sparse_aligned_folder(tmp_path):
    """An aligned folder written with sparse statistics (correlation/2) gives the dense folder's Fig. 2."""
    pair, x, y = _planted(seed=5)
    store = PairedEmbeddings(x, y)
    folder_d = align(pair, store, batch_size=500, progress=False).save(tmp_path / "dense")
    res = align(pair, store, batch_size=500, progress=False, stats_mode="sparse", solver="sparse")
    assert res.report["statistics"] == "sparse" and res.report["solver_details"]["certificate"]["certified"]
    folder_s = res.save(tmp_path / "sparse")
    with safe_open(str(folder_s / "correlation.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "dualsae.correlation/2" and "C" not in f.keys()
    dense, _ = heterogeneity_from_folder(folder_d)
    sparse, _ = heterogeneity_from_folder(folder_s)
    assert [b["count"] for b in sparse.bins] == [b["count"] for b in dense.bins]
    assert sparse.negative_count == dense.negative_count
    for a, b in zip(sparse.bins, dense.bins):
        if a["count"]:
            assert a["mean"] == pytest.approx(b["mean"], abs=1e-5)
    assert sparse.matched == pytest.approx(dense.matched)
