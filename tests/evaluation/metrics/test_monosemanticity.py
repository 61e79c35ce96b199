"""Monosemanticity score: O(N e) accumulation against the O(N^2) definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualsae.core.codes import SparseCodes
from dualsae.evaluation.metrics.monosemanticity import monosemanticity, monosemanticity_from_codes, plot_curves, sorted_curve, summarize
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings
from tests.metrics_helpers import brute_force_monosemanticity as _brute_force
from tests.metrics_helpers import dense_codes, random_sae


def test_matches_quadratic_definition():
    rng = np.random.default_rng(0)
    n, d, m, e = 90, 8, 40, 5
    x = rng.normal(size=(n, d)).astype(np.float32)
    ext = rng.normal(size=(n, e)) + 0.5
    sae = random_sae(d, m, 4, seed=3)
    with torch.no_grad():
        sae.b_enc[3] = 100.0  # always active: the min-max scaling uses its real minimum
        sae.b_enc[7] = -100.0  # never active: NaN
    pair = SAEPair("shared", sae, sae)
    ms = monosemanticity(pair, PairedEmbeddings(x, None), ext.astype(np.float32), "image", batch_size=32)
    acts = dense_codes(pair, "image", x)
    assert (acts[:, 3] > 0).all() and (acts[:, 7] == 0).all()
    ref = _brute_force(acts, ext)
    np.testing.assert_array_equal(np.isnan(ms), np.isnan(ref))
    np.testing.assert_allclose(ms[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=1e-5, atol=1e-6)
    assert np.isnan(ms[7]) and not np.isnan(ms[3])
    assert (~np.isnan(ref)).sum() > m // 2


def test_hand_case_and_curve(tmp_path):
    # one latent: activations [2, 1, 0] -> a~ = [1, .5, 0]; only pair (0, 1) has weight, s_01 = 1
    dense = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, 3.0], [0.0, 0.0, 1.0]])
    ext = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    ms = monosemanticity_from_codes(SparseCodes.from_dense(dense), ext)
    # latent 0 -> 1.0; latent 1 fires once -> NaN; latent 2: a~ = [0, 1, 1/3], pair (1, 2) with s = 0 -> 0
    assert ms[0] == pytest.approx(1.0) and np.isnan(ms[1]) and ms[2] == pytest.approx(0.0)
    assert sorted_curve(ms).tolist() == pytest.approx([1.0, 0.0])
    assert summarize(ms) == {"mean": 0.5, "median": 0.5, "n_scored": 2, "n_latents": 3}
    png = plot_curves({"image": sorted_curve(ms)}, tmp_path / "ms.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
