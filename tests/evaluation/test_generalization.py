"""Train and held-out reconstruction side by side (dualsae.evaluation.generalization): a model that memorised
its training rows is flagged, one that generalises is not, and the ratio is the one of the two MSEs."""

from __future__ import annotations

import numpy as np
import pytest

from dualsae.evaluation.generalization import OVERFIT_RATIO, generalization_lines, train_test_reconstruction
from dualsae.evaluation.metrics.reconstruction import reconstruction_metrics
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings, write_store
from tests.helpers import tied_sae


def _store(tmp_path, n=60, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    meta = [{"caption": str(i), "split": "test" if i % 4 == 0 else "train"} for i in range(n)]
    return PairedEmbeddings.open(write_store(tmp_path / "s", x, x.copy(), meta))


def test_a_model_that_memorised_its_training_rows_is_flagged(tmp_path):
    store = _store(tmp_path)
    train, test = store.split("train"), store.split("test")
    w = train.read("image").numpy()
    # One latent per training row (k = 1, tied): each training row is one decoder direction.
    memo = tied_sae(w / np.linalg.norm(w, axis=1, keepdims=True), k=1)
    pair = SAEPair("shared", memo, memo)
    res = train_test_reconstruction(pair, train, test)
    tr, te = reconstruction_metrics(pair, train), reconstruction_metrics(pair, test)
    for mod in ("image", "text"):
        assert res[mod]["ratio"] == pytest.approx(te[mod]["mse"] / tr[mod]["mse"])
        assert res[mod]["ratio"] > OVERFIT_RATIO and res[mod]["overfit"]
    assert res["overfit"] and "OVER-FITTING" in generalization_lines(res)[0]


def test_a_model_that_generalises_is_not_flagged(tmp_path):
    store = _store(tmp_path, n=400)
    # A fixed dictionary (no fit to any row): train and test rows are reconstructed equally well.
    sae = tied_sae(np.concatenate([np.eye(6), -np.eye(6)]).astype(np.float32), k=3)  # the 3 largest |coordinates|
    pair = SAEPair("shared", sae, sae)
    res = train_test_reconstruction(pair, store.split("train"), store.split("test"), max_rows=50)
    assert res["image"]["train"]["n_rows"] == 50 and res["image"]["test"]["n_rows"] == 50  # capped
    assert 0.7 < res["image"]["ratio"] < OVERFIT_RATIO and not res["overfit"]
    assert "OVER-FITTING" not in "\n".join(generalization_lines(res))
