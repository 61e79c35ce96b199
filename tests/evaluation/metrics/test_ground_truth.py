"""The five synthetic metrics of App. E.3 (dualsae.evaluation.metrics.ground_truth) and `dualsae synth metrics`."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from dualsae.core.codes import SparseCodes
from dualsae.core.errors import DataError
from dualsae.evaluation.metrics.ground_truth import (
    METRIC_KEYS,
    best_matching_column,
    evaluate_synthetic,
    feature_metrics,
    pair_metrics,
    sparse_cosine,
    synthetic_metrics,
)
from dualsae.models.pair import SAEPair
from dualsae.models.sae import SAE, SAEConfig
from dualsae.store.generator import GroundTruth, SynthConfig, generate, write_synthetic
from dualsae.store.paired import PairedEmbeddings, write_store


def make_sae(W_dec: np.ndarray, k: int, W_enc: np.ndarray | None = None,
             b_enc: np.ndarray | None = None, b_dec: np.ndarray | None = None) -> SAE:
    """TopK SAE with the given rows (tied encoder unless W_enc is given), zero biases unless given."""
    m, d = W_dec.shape
    sae = SAE(SAEConfig(d=d, m=m, k=k, dec_bias_init="zero"))
    with torch.no_grad():
        sae.W_dec.copy_(torch.as_tensor(W_dec, dtype=torch.float32))
        sae.W_enc.copy_(torch.as_tensor(W_dec if W_enc is None else W_enc, dtype=torch.float32))
        sae.b_enc.copy_(torch.zeros(m) if b_enc is None else torch.as_tensor(b_enc, dtype=torch.float32))
        sae.b_dec.copy_(torch.zeros(d) if b_dec is None else torch.as_tensor(b_dec, dtype=torch.float32))
    return sae


# ---------------------------------------------------------------------- sparse cosine
def test_sparse_cosine_matches_dense():
    g = torch.Generator().manual_seed(0)
    dense_a = torch.rand(50, 12, generator=g) * (torch.rand(50, 12, generator=g) < 0.3)
    dense_b = torch.rand(50, 12, generator=g) * (torch.rand(50, 12, generator=g) < 0.3)
    dense_a[3] = 0  # an all-zero code
    a, b = SparseCodes.from_dense(dense_a), SparseCodes.from_dense(dense_b)
    ref = torch.nn.functional.cosine_similarity(dense_a.double(), dense_b.double(), dim=1, eps=1e-300)
    ref[(dense_a.norm(dim=1) == 0) | (dense_b.norm(dim=1) == 0)] = 0.0
    torch.testing.assert_close(sparse_cosine(a, b), ref)
    assert float(sparse_cosine(a, b)[3]) == 0.0


def test_sparse_cosine_padding_and_widths():
    # Padding entries (value 0, repeated index) carry no weight; widths may differ.
    a = SparseCodes(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[4, 4, 4]]), 6)
    b = SparseCodes(torch.tensor([[1.0, 1.0]]), torch.tensor([[4, 1]]), 6)
    assert float(sparse_cosine(a, b)[0]) == pytest.approx(1 / math.sqrt(2))


# ---------------------------------------------------------------------- a hand-computed case
def hand_case(tmp_path):
    """d = 3, m = 3, W = I (tied, no biases), Top-2.

    Eval rows (split 'test'):
      x=(3,1,.5) -> top2 (3,1) -> x~=(3,1,0), err .25;     y=(0,2,1) -> exact, err 0
         z_I={0:3,1:1}, z_T={1:2,2:1}: cos = 2/(sqrt10 sqrt5) = sqrt2/5
      x=(-1,-2,-3) -> both picks < 0 -> code 0, x~=0, err 14;  y=(1,0,0) exact; cos := 0 (zero code)
    (i) = (.25 + 0 + 14 + 0) / (2*2) = 3.5625;  (iii) = 1 - (sqrt2/5 + 0)/2.
    A train row (5,5,5) would add error 25 if the split were ignored.

    Shared concepts: phi_0=(1,0,0), psi_0=(.8,.6,0), phi_1=(.6,.8,0), psi_1=(.48,.6,.64).
      all exact except psi_1 -> top2 (.64, .6) -> err .48^2 = .2304  => (ii) = .2304/4 = .0576
      cos(z(phi_0), z(psi_0)) = .8; cos({1:.8,0:.6}, {2:.64,1:.6}) = .48/sqrt(.7696)
      => (iv) = 1 - (.8 + .48/sqrt(.7696))/2
      argmax_j cos(w_j, .): phi_0 -> 0, psi_0 -> 0 (same), phi_1 -> 1, psi_1 -> 2 => (v) = 1/2
    """
    x = np.array([[5, 5, 5], [3, 1, 0.5], [-1, -2, -3]], dtype=np.float32)
    y = np.array([[5, 5, 5], [0, 2, 1], [1, 0, 0]], dtype=np.float32)
    write_store(tmp_path / "hand", x, y, [{"split": "train"}, {"split": "test"}, {"split": "test"}])
    phi = np.array([[1, 0, 0], [0.6, 0.8, 0]])
    psi = np.array([[0.8, 0.6, 0], [0.48, 0.6, 0.64]])
    truth = GroundTruth(SynthConfig(d=3, n_shared=2, n_image=0, n_text=0, n_train=1, n_eval=2), phi, psi)
    return PairedEmbeddings.open(tmp_path / "hand"), truth


HAND = {
    "reconstruction_error": 3.5625,
    "feature_recovery_error": 0.0576,
    "alignment_error": 1 - math.sqrt(2) / 10,
    "feature_alignment_error": 1 - (0.8 + 0.48 / math.sqrt(0.7696)) / 2,
}


def test_hand_case_shared(tmp_path):
    store, truth = hand_case(tmp_path)
    sae = make_sae(np.eye(3), k=2)
    got = synthetic_metrics(SAEPair("shared", sae, sae), store, truth)
    assert set(got) == set(METRIC_KEYS)
    for key, value in HAND.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert got["collapse_rate"] == 0.5 and got["same_index_rate"] == 0.5


def test_hand_case_specific(tmp_path):
    """Same weights in two SAE objects: same numbers, but collapse is 0 by construction."""
    store, truth = hand_case(tmp_path)
    pair = SAEPair("specific", make_sae(np.eye(3), k=2), make_sae(np.eye(3), k=2))
    got = synthetic_metrics(pair, store, truth)
    for key, value in HAND.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert got["collapse_rate"] == 0.0 and got["same_index_rate"] == 0.5


# ---------------------------------------------------------------------- against a dense reference
def dense_reference(params: dict, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes [n, m] and reconstructions [n, d] of eq. 3 with biases, in float64 numpy."""
    pre = (x - params["b_dec"]) @ params["W_enc"].T + params["b_enc"]
    z = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1)[:, :k]
    rows = np.arange(len(x))[:, None]
    z[rows, top] = np.maximum(pre[rows, top], 0)
    return z, z @ params["W_dec"] + params["b_dec"]


def dense_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return np.where((na > 0) & (nb > 0), (a * b).sum(1) / np.maximum(na * nb, 1e-300), 0.0)


def test_metrics_with_biases_match_dense_reference(tmp_path):
    rng = np.random.default_rng(0)
    d, m, k, n = 6, 10, 3, 40
    params = []  # image SAE, text SAE: untied, non-zero biases (the metrics use the SAE as trained)
    for _ in range(2):
        p = {"W_dec": rng.standard_normal((m, d)), "W_enc": rng.standard_normal((m, d)),
             "b_enc": 0.3 * rng.standard_normal(m), "b_dec": 0.5 * rng.standard_normal(d)}
        p["W_dec"] /= np.linalg.norm(p["W_dec"], axis=1, keepdims=True)
        # the reference uses the float32-rounded weights the SAE holds
        params.append({key: v.astype(np.float32).astype(np.float64) for key, v in p.items()})
    pi, pt = params
    pair = SAEPair("specific", *(make_sae(p["W_dec"], k, p["W_enc"], p["b_enc"], p["b_dec"]) for p in params))
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.standard_normal((n, d)).astype(np.float32)
    write_store(tmp_path / "r", x, y)
    recon, align = pair_metrics(pair, PairedEmbeddings.open(tmp_path / "r"), batch_size=7)
    zx, rx = dense_reference(pi, x.astype(np.float64), k)
    zy, ry = dense_reference(pt, y.astype(np.float64), k)
    assert recon == pytest.approx(0.5 * (((x - rx) ** 2).sum(1) + ((y - ry) ** 2).sum(1)).mean(), rel=1e-5)
    assert align == pytest.approx(1 - dense_cos(zx, zy).mean(), abs=1e-5)
    phi = rng.standard_normal((15, d))
    psi = rng.standard_normal((15, d))
    phi /= np.linalg.norm(phi, axis=1, keepdims=True)
    psi /= np.linalg.norm(psi, axis=1, keepdims=True)
    rec_f, align_f = feature_metrics(pair, phi, psi, batch_size=4)
    zp, rp = dense_reference(pi, phi, k)
    zq, rq = dense_reference(pt, psi, k)
    assert rec_f == pytest.approx((((phi - rp) ** 2).sum() + ((psi - rq) ** 2).sum()) / (2 * 15), rel=1e-5)
    assert align_f == pytest.approx(1 - dense_cos(zp, zq).mean(), abs=1e-5)


def test_best_matching_column_brute_force():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((30, 8)) * rng.uniform(0.1, 3, size=(30, 1))  # non-unit rows: cosine, not dot
    W[5] = 0.0  # a zero column has cosine 0
    f = rng.standard_normal((20, 8))
    ref = [int(np.argmax([(w @ v) / (np.linalg.norm(w) * np.linalg.norm(v)) if np.linalg.norm(w) > 0 else 0.0 for w in W])) for v in f]
    assert best_matching_column(torch.tensor(W), f, batch_size=6).tolist() == ref


# ---------------------------------------------------------------------- planted solutions on generated data
@pytest.fixture(scope="module")
def synth():
    cfg = SynthConfig(alpha=0.6, d=64, n_shared=64, n_image=32, n_text=32, n_train=200, n_eval=500, seed=2)
    return generate(cfg)


def _store(tmp_path, data) -> PairedEmbeddings:
    cfg = data.config
    meta = [{"split": "train"}] * cfg.n_train + [{"split": "test"}] * cfg.n_eval
    write_store(tmp_path / "s", data.image, data.text, meta)
    return PairedEmbeddings.open(tmp_path / "s")


def test_planted_separate_shared_sae(tmp_path, synth):
    """Decoder [Phi Psi] (Corollary 1's minimiser), Top-1: phi_i and psi_i are recovered exactly but
    use different latents, so feature alignment error 1 and no collapse."""
    cfg = synth.config
    s, io, to = cfg.shared, cfg.image_only, cfg.text_only
    W = np.concatenate([synth.phi[s.start : s.stop], synth.psi[s.start : s.stop], synth.phi[io.start : io.stop], synth.psi[to.start : to.stop]])
    sae = make_sae(W, k=1)
    got = synthetic_metrics(SAEPair("shared", sae, sae), _store(tmp_path, synth), GroundTruth(cfg, synth.phi, synth.psi))
    assert got["feature_recovery_error"] < 1e-10
    assert got["feature_alignment_error"] == pytest.approx(1.0)
    assert got["collapse_rate"] == 0.0 and got["same_index_rate"] == 0.0


def test_planted_merged_shared_sae(tmp_path, synth):
    """Decoder column (phi_i + psi_i)/||.|| per shared concept (Prop. 3's merged solution), Top-1:
    recovery error 1 - cos^2 = 1 - (1 + alpha)/2 = (1 - alpha)/2 per input, full collapse, codes equal."""
    cfg = synth.config
    s, io, to = cfg.shared, cfg.image_only, cfg.text_only
    merged = synth.phi[s.start : s.stop] + synth.psi[s.start : s.stop]
    merged /= np.linalg.norm(merged, axis=1, keepdims=True)
    W = np.concatenate([merged, synth.phi[io.start : io.stop], synth.psi[to.start : to.stop]])
    sae = make_sae(W, k=1)
    got = synthetic_metrics(SAEPair("shared", sae, sae), _store(tmp_path, synth), GroundTruth(cfg, synth.phi, synth.psi))
    assert got["feature_recovery_error"] == pytest.approx((1 - cfg.alpha) / 2, abs=1e-5)
    assert got["feature_alignment_error"] == pytest.approx(0.0, abs=1e-6)
    assert got["collapse_rate"] == 1.0 and got["same_index_rate"] == 1.0


def test_planted_specific_pair_and_permutation(tmp_path, synth):
    """Image SAE [Phi_S Phi_I], text SAE [Psi_S Psi_T]: concept i is latent i in both, so
    same_index_rate 1 and feature alignment error 0; rotating the text latents of half the shared
    concepts drops both to exactly 1/2. Embedding metrics match a dense reference (Top-8)."""
    cfg = synth.config
    s, io, to = cfg.shared, cfg.image_only, cfg.text_only
    Wi = np.concatenate([synth.phi[s.start : s.stop], synth.phi[io.start : io.stop]])
    Wt = np.concatenate([synth.psi[s.start : s.stop], synth.psi[to.start : to.stop]])
    truth = GroundTruth(cfg, synth.phi, synth.psi)
    store = _store(tmp_path, synth)
    got = synthetic_metrics(SAEPair("specific", make_sae(Wi, k=1), make_sae(Wt, k=1)), store, truth)
    assert got["collapse_rate"] == 0.0 and got["same_index_rate"] == 1.0
    assert got["feature_recovery_error"] < 1e-10 and got["feature_alignment_error"] == pytest.approx(0.0, abs=1e-6)

    half = cfg.n_shared // 2
    perm = np.arange(len(Wt))
    perm[:half] = np.roll(perm[:half], 1)
    got = synthetic_metrics(SAEPair("specific", make_sae(Wi, k=1), make_sae(Wt[perm], k=1)), store, truth)
    assert got["same_index_rate"] == 0.5 and got["collapse_rate"] == 0.0
    assert got["feature_alignment_error"] == pytest.approx(0.5, abs=1e-6)

    k = 8
    pair = SAEPair("specific", make_sae(Wi, k=k), make_sae(Wt, k=k))
    got = synthetic_metrics(pair, store, truth)
    x, y = synth.image[cfg.n_train :].astype(np.float64), synth.text[cfg.n_train :].astype(np.float64)
    zero = {"b_enc": np.zeros(len(Wi)), "b_dec": np.zeros(cfg.d)}
    wi = Wi.astype(np.float32).astype(np.float64)
    wt = Wt.astype(np.float32).astype(np.float64)
    zx, rx = dense_reference({"W_enc": wi, "W_dec": wi, **zero}, x, k)
    zy, ry = dense_reference({"W_enc": wt, "W_dec": wt, **zero}, y, k)
    assert got["reconstruction_error"] == pytest.approx(0.5 * (((x - rx) ** 2).sum(1) + ((y - ry) ** 2).sum(1)).mean(), rel=1e-4)
    assert got["alignment_error"] == pytest.approx(1 - dense_cos(zx, zy).mean(), abs=1e-4)
    # planted directions with Top-8 recover most of each embedding; a sanity bound that a wrong
    # split or modality swap would break (the embeddings' own energy is ~20 per row)
    assert got["reconstruction_error"] < 0.5 * float((x**2).sum(1).mean())


def test_dimension_mismatch_is_clear(tmp_path, synth):
    sae = make_sae(np.eye(4, 8), k=1)  # d = 8, the data have d = 64
    with pytest.raises(DataError, match="dimension 64, the image SAE expects 8"):
        synthetic_metrics(SAEPair("shared", sae, sae), _store(tmp_path, synth), GroundTruth(synth.config, synth.phi, synth.psi))


# ---------------------------------------------------------------------- folder + CLI
def test_evaluate_folder_and_cli(tmp_path, capsys):
    cfg = SynthConfig(alpha=0.6, d=32, n_shared=16, n_image=8, n_text=8, n_train=100, n_eval=50, seed=1)
    data_dir = write_synthetic(cfg, tmp_path / "data", progress=False)
    from dualsae.store.generator import load_ground_truth

    gt = load_ground_truth(data_dir)
    merged = gt.phi[:16] + gt.psi[:16]
    merged /= np.linalg.norm(merged, axis=1, keepdims=True)
    sae = make_sae(np.concatenate([merged, gt.phi[16:24], gt.psi[24:]]), k=1)
    direct = evaluate_synthetic(SAEPair("shared", sae, sae), data_dir)
    assert direct["collapse_rate"] == 1.0
    assert direct["feature_recovery_error"] == pytest.approx(0.2, abs=1e-5)

    sae.save(tmp_path / "model")  # a bare SAE folder: dualsae.models.load.load_model uses it for both modalities
    from dualsae.commands import synth

    p = argparse.ArgumentParser(prog="dualsae")
    synth.register(p.add_subparsers(dest="command"))
    args = p.parse_args(["synth", "metrics", str(tmp_path / "model"), "--data", str(data_dir), "--out", str(tmp_path / "m")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    printed = {line.split()[0]: float(line.split()[1]) for line in out.strip().splitlines()}
    assert list(printed) == list(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert printed[key] == pytest.approx(direct[key], abs=1e-6)
    saved = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert saved["collapse_rate"] == 1.0 and saved["split"] == "test"
