"""Reconstruction metrics against a dense numpy reference and a hand case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualsae.evaluation.metrics.reconstruction import reconstruction_metrics
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings
from tests.metrics_helpers import dense_codes, identity_sae, random_specific_pair


def test_matches_dense_reference_per_modality():
    rng = np.random.default_rng(0)
    n, d = 70, 10
    x = rng.normal(size=(n, d)).astype(np.float32) + 0.5
    y = rng.normal(size=(n, d)).astype(np.float32)
    pair = random_specific_pair(d, 32, 3, seed=5)
    res = reconstruction_metrics(pair, PairedEmbeddings(x, y), batch_size=16)
    for mod, arr in (("image", x), ("text", y)):
        sae = pair.sae_for(mod)
        z = dense_codes(pair, mod, arr)
        xh = z @ sae.W_dec.detach().double().numpy() + sae.b_dec.detach().double().numpy()
        err = ((arr - xh) ** 2).sum(1)
        r = res[mod]
        assert r["mse"] == pytest.approx(err.mean(), rel=1e-5)
        assert r["mse_per_dim"] == pytest.approx(err.mean() / d, rel=1e-5)
        ev = 1 - err.sum() / ((arr - arr.mean(0)) ** 2).sum()
        assert r["explained_variance"] == pytest.approx(ev, rel=1e-5)
        assert r["mean_l0"] == pytest.approx((z > 0).sum(1).mean())
        assert r["dead_fraction"] == pytest.approx((z > 0).sum(0).__eq__(0).mean())
    assert res["mean"]["mse"] == pytest.approx((res["image"]["mse"] + res["text"]["mse"]) / 2)


def test_exact_reconstruction_hand_case():
    """Identity SAE reconstructs exactly; on x = +-1 data every latent half fires."""
    x = np.array([[1, -1], [-1, 1], [2, 2]], dtype=np.float32)
    sae = identity_sae(2)
    res = reconstruction_metrics(SAEPair("shared", sae, sae), PairedEmbeddings(x, None), batch_size=2)
    assert set(res) == {"image", "mean"}
    r = res["image"]
    assert r["mse"] == pytest.approx(0.0, abs=1e-12) and r["explained_variance"] == pytest.approx(1.0)
    assert r["mean_l0"] == pytest.approx(2.0)  # each row: one of +-e_i per dimension
    assert r["dead_fraction"] == 0.0


def test_mse_is_sum_over_dims():
    """An all-zero decoder gives x^ = b_dec = 0, so mse = mean ||x||^2 (here 1 for unit rows)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    sae = identity_sae(8)
    with torch.no_grad():
        sae.W_dec.zero_()
    r = reconstruction_metrics(SAEPair("shared", sae, sae), PairedEmbeddings(x, x))["image"]
    assert r["mse"] == pytest.approx(1.0, rel=1e-5) and r["mse_per_dim"] == pytest.approx(1 / 8, rel=1e-5)
