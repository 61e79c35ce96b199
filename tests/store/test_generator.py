"""The App. E.2 generator (dualsae.store.generator) and the `dualsae synth generate` command."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from dualsae.core.errors import ConfigError, DataError
from dualsae.store.generator import (
    SynthConfig,
    feature_directions,
    generate,
    load_ground_truth,
    sample_directions,
    write_synthetic,
)
from dualsae.store.paired import PairedEmbeddings

SMALL = dict(d=64, n_shared=64, n_image=32, n_text=32, n_train=5000, n_eval=1000)


def small(**kw) -> SynthConfig:
    return SynthConfig(**{"alpha": 0.6, "seed": 3, **SMALL, **kw})


def brute_max_abs_cos(rows: np.ndarray) -> float:
    """Reference: largest |cos| over all pairs of distinct non-zero rows, by a double loop."""
    nz = [r / np.linalg.norm(r) for r in rows if np.linalg.norm(r) > 0]
    best = 0.0
    for i in range(len(nz)):
        for j in range(i + 1, len(nz)):
            best = max(best, abs(float(nz[i] @ nz[j])))
    return best


@pytest.fixture(scope="module")
def data():
    return generate(small())


def test_directions_structure(data):
    cfg = data.config
    phi, psi = data.phi, data.psi
    assert phi.shape == psi.shape == (cfg.n_concepts, cfg.d)
    nphi, npsi = np.linalg.norm(phi, axis=1), np.linalg.norm(psi, axis=1)
    s, io, to = cfg.shared, cfg.image_only, cfg.text_only
    # shared: both unit; image-only: psi = 0; text-only: phi = 0
    np.testing.assert_allclose(nphi[s.start : io.stop], 1.0, atol=1e-12)
    np.testing.assert_allclose(npsi[s.start : s.stop], 1.0, atol=1e-12)
    np.testing.assert_allclose(npsi[to.start : to.stop], 1.0, atol=1e-12)
    assert np.all(psi[io.start : io.stop] == 0) and np.all(phi[to.start : to.stop] == 0)
    cos = (phi[s.start : s.stop] * psi[s.start : s.stop]).sum(1)
    np.testing.assert_allclose(cos, 0.6, atol=1e-6)
    # within-modality interference bound, by brute force
    assert brute_max_abs_cos(phi) <= cfg.eps_max
    assert brute_max_abs_cos(psi) <= cfg.eps_max


@pytest.mark.parametrize("alpha", [1.0, 0.95, 0.0, -0.4, -1.0])
def test_alpha_exact_and_bound(alpha):
    cfg = small(alpha=alpha, n_train=10, n_eval=10)
    phi, psi = feature_directions(cfg)
    s = cfg.shared
    cos = (phi[s.start : s.stop] * psi[s.start : s.stop]).sum(1) / (
        np.linalg.norm(phi[s.start : s.stop], axis=1) * np.linalg.norm(psi[s.start : s.stop], axis=1)
    )
    np.testing.assert_allclose(cos, alpha, atol=1e-6)
    assert brute_max_abs_cos(psi) <= cfg.eps_max
    if alpha == 1.0:
        np.testing.assert_allclose(psi[s.start : s.stop], phi[s.start : s.stop], atol=1e-12)


def test_latent_codes_and_noise(data):
    cfg = data.config
    z = data.z
    assert z.shape == (cfg.n_rows, cfg.n_concepts)
    assert (z.data > 0).all()
    # P(z_i != 0) = 1 - s = 0.01: 768k entries, ~7,680 non-zeros, binomial sd ~88 (1.1%); 5% is >4 sd.
    frac = z.nnz / (z.shape[0] * z.shape[1])
    assert frac == pytest.approx(1 - cfg.sparsity, rel=0.05)
    # Exp(rate 1) has mean 1; the mean of ~7,680 values has sd ~0.011.
    assert z.data.mean() == pytest.approx(1.0 / cfg.rate, rel=0.05)
    # x - Phi z is the observation noise: std sigma_obs (384k entries, sd of the estimate ~0.1%).
    rx = data.image - np.asarray(z @ data.phi)
    ry = data.text - np.asarray(z @ data.psi)
    assert rx.std() == pytest.approx(cfg.sigma_obs, rel=0.05)
    assert ry.std() == pytest.approx(cfg.sigma_obs, rel=0.05)
    assert abs(rx.mean()) < 1e-3
    # the noise of the two modalities is independent
    assert abs(np.corrcoef(rx.ravel(), ry.ravel())[0, 1]) < 0.01
    assert data.image.dtype == np.float32 and data.image.shape == (cfg.n_rows, cfg.d)


def test_rate_and_noiseless():
    d = generate(small(rate=4.0, sigma_obs=0.0, sparsity=0.95, n_train=2000, n_eval=500))
    assert d.z.data.mean() == pytest.approx(0.25, rel=0.05)
    assert d.z.nnz / np.prod(d.z.shape) == pytest.approx(0.05, rel=0.05)
    np.testing.assert_allclose(d.image, np.asarray(d.z @ d.phi), atol=1e-5)  # float32 rounding only
    np.testing.assert_allclose(d.text, np.asarray(d.z @ d.psi), atol=1e-5)


def test_write_and_reload(tmp_path, data):
    cfg = data.config
    out = write_synthetic(cfg, tmp_path / "s", progress=False)
    store = PairedEmbeddings.open(out)
    assert store.n == cfg.n_rows and store.d == cfg.d
    np.testing.assert_array_equal(np.load(out / "image.npy"), data.image)  # streamed == in-memory
    np.testing.assert_array_equal(np.load(out / "text.npy"), data.text)
    test = store.split("test")
    assert test.n == cfg.n_eval and store.split("train").n == cfg.n_train
    np.testing.assert_array_equal(test.read("image").numpy(), data.image[cfg.n_train :])
    gt = load_ground_truth(out)
    assert gt.config == cfg
    np.testing.assert_array_equal(gt.phi, data.phi)
    np.testing.assert_array_equal(gt.psi, data.psi)
    meta = json.loads((out / "synth.json").read_text())
    assert meta["concepts"] == {"shared": [0, 64], "image_only": [64, 96], "text_only": [96, 128]}
    assert meta["measured"]["max_abs_cos_image"] <= cfg.eps_max


def test_pages_released_while_writing_keep_the_data(tmp_path, data, monkeypatch):
    """The writer drops its written pages every RELEASE_EVERY chunks (bounded memory for a 17 GB store):
    with a release after every chunk the files still hold exactly the in-memory data."""
    import dualsae.store.generator as gen

    monkeypatch.setattr(gen, "RELEASE_EVERY", 1)
    monkeypatch.setattr(gen, "CHUNK_ROWS", 700)
    cfg = data.config
    out = write_synthetic(cfg, tmp_path / "s", progress=False)
    ref = gen.generate(cfg)
    np.testing.assert_array_equal(np.load(out / "image.npy"), ref.image)
    np.testing.assert_array_equal(np.load(out / "text.npy"), ref.text)


def test_same_seed_same_files(tmp_path):
    cfg = small(n_train=3000, n_eval=2000)  # two runs with one seed must agree byte for byte
    a = write_synthetic(cfg, tmp_path / "a", progress=False)
    b = write_synthetic(cfg, tmp_path / "b", progress=False)
    c = write_synthetic(small(n_train=3000, n_eval=2000, seed=4), tmp_path / "c", progress=False)
    for name in ("image.npy", "text.npy", "meta.jsonl", "ground_truth.safetensors", "synth.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "image.npy").read_bytes() != (c / "image.npy").read_bytes()
    assert (a / "ground_truth.safetensors").read_bytes() != (c / "ground_truth.safetensors").read_bytes()


def test_chunks_span_rows():
    """More rows than one chunk: chunks are stitched in order, the split boundary is exact."""
    from dualsae.store import generator as synthetic

    cfg = small(n_train=synthetic.CHUNK_ROWS + 7, n_eval=5, n_shared=8, n_image=4, n_text=4, d=16)
    d = generate(cfg)
    assert d.image.shape == (cfg.n_rows, 16) and d.z.shape[0] == cfg.n_rows
    rx = d.image - np.asarray(d.z @ d.phi)
    assert rx.std() == pytest.approx(cfg.sigma_obs, rel=0.05)
    # the two chunks are different draws, not a repeat
    assert not np.allclose(d.image[:5], d.image[synthetic.CHUNK_ROWS : synthetic.CHUNK_ROWS + 5])


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(alpha=1.5), "alpha"),
        (dict(alpha=-1.01), "alpha"),
        (dict(eps_max=0.0), "eps_max"),
        (dict(sparsity=1.0), "sparsity"),
        (dict(rate=0.0), "rate"),
        (dict(sigma_obs=-0.1), "sigma_obs"),
        (dict(n_eval=0), "n_eval"),
        (dict(d=0), "'d'"),
        (dict(n_shared=-1), "n_shared"),
    ],
)
def test_bad_parameters(kw, field):
    with pytest.raises(ConfigError, match=field):
        small(**kw)


def test_eps_too_small_fails_clearly():
    cfg = small(eps_max=0.02, max_rounds=20)
    with pytest.raises(ConfigError, match=r"eps_max.*too small.*image directions"):
        feature_directions(cfg)


def test_sample_directions_against_existing():
    rng = np.random.default_rng(0)
    existing = sample_directions(20, 16, 0.5, rng)
    new = sample_directions(30, 16, 0.5, rng, existing=existing)
    both = np.concatenate([existing, new])
    assert brute_max_abs_cos(both) <= 0.5
    assert new.shape == (30, 16)


def test_load_ground_truth_errors(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_ground_truth(tmp_path / "nope")
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match=r"synth\.json: missing"):
        load_ground_truth(tmp_path / "e")
    out = write_synthetic(small(n_train=50, n_eval=10), tmp_path / "s", progress=False)
    (out / "synth.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_ground_truth(out)
    out = write_synthetic(small(n_train=50, n_eval=10), tmp_path / "t", progress=False)
    meta = json.loads((out / "synth.json").read_text())
    meta["config"]["d"] = 65  # tensors are [128, 64]
    (out / "synth.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"tensor 'phi' has shape \[128, 64\], expected \[128, 65\]"):
        load_ground_truth(out)
    meta["config"]["d"] = 64
    meta["config"]["bogus"] = 1
    (out / "synth.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="unknown synthetic config field"):
        load_ground_truth(out)
    meta["config"].pop("bogus")
    (out / "synth.json").write_text(json.dumps(meta))
    (out / "ground_truth.safetensors").unlink()
    with pytest.raises(DataError, match="ground_truth.safetensors: missing"):
        load_ground_truth(out)


# ---------------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    from dualsae.commands import synth

    p = argparse.ArgumentParser(prog="dualsae")
    synth.register(p.add_subparsers(dest="command"))
    return p


def test_cli_generate_distance(tmp_path, capsys):
    args = parser().parse_args(
        ["synth", "generate", "--distance", "0.25", "--out", str(tmp_path / "o"), "--d", "32", "--n-shared", "16",
         "--n-image", "8", "--n-text", "8", "--n-train", "100", "--n-eval", "20", "--seed", "5"]
    )
    assert args.func(args) == 0
    gt = load_ground_truth(tmp_path / "o")
    assert gt.config.alpha == 0.75 and gt.config.d == 32 and gt.config.seed == 5
    assert gt.config.n_train == 100 and gt.config.n_eval == 20
    cos = (gt.phi[:16] * gt.psi[:16]).sum(1)
    np.testing.assert_allclose(cos, 0.75, atol=1e-6)
    assert "wrote 120 synthetic pairs" in capsys.readouterr().out


def test_cli_alpha_and_distance_exclusive(capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(["synth", "generate", "--alpha", "0.5", "--distance", "0.5", "--out", "x"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser().parse_args(["synth", "generate", "--out", "x"])  # one of them is required


def test_cli_bad_alpha_is_config_error(tmp_path):
    args = parser().parse_args(["synth", "generate", "--distance", "2.5", "--out", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match=r"'alpha' must be a cosine in \[-1, 1\], found -1.5"):
        args.func(args)
