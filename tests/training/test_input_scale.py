"""Input-scale normalisation (issue 20): every method trains on rows scaled by 1e-8, 1e-4 or 1e4 (and fp16 at
1e-4) as on the unit-norm rows, the saved SAE works on the raw rows, unit-norm and App. E.2 data train
bit-identically to an unscaled run, and a resumed run keeps its factor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dualsae.core.errors import ConfigError
from dualsae.evaluation.metrics.reconstruction import reconstruction_metrics
from dualsae.models.load import load_model
from dualsae.store.generator import SynthConfig, generate
from dualsae.store.paired import PairedEmbeddings, write_store
from dualsae.training.config import TrainConfig
from dualsae.training.input_scale import TOLERANCE, auto_factor, parse_input_scale
from dualsae.training.methods import METHODS
from dualsae.training.trainer import train
from tests.helpers import launch_ranks, make_store

#: A few seconds per run: 518 emoji pairs, 24 steps.
CFG = dict(preset="synthetic", lr=2e-3, latents=128, k=8, epochs=3, batch_size=64, log_every=4)
SCALED = [(1e-8, "float32"), (1e-4, "float32"), (1e4, "float32"), (1e-4, "float16")]


@pytest.fixture(scope="module")
def stores(tmp_path_factory, emoji):
    """{(scale, dtype): store} of every 16th emoji pair times scale (unit-norm rows at (1.0, float32))."""
    root = tmp_path_factory.mktemp("scaled")
    pos = np.arange(0, emoji.n, 16)
    img, txt = emoji.read("image", pos).numpy(), emoji.read("text", pos).numpy()
    out = {}
    for scale, dtype in [(1.0, "float32"), *SCALED]:
        folder = write_store(root / f"x{scale:g}-{dtype}", img * scale, txt * scale, dtype=dtype)
        out[(scale, dtype)] = PairedEmbeddings.open(folder)
    return out


def _explained_variance(run, store) -> dict[str, float]:
    """Explained variance of the run folder's saved SAE(s) on the store's (raw) rows, per modality."""
    pair = load_model(run)
    metrics = reconstruction_metrics(pair, store)
    return {mod: metrics[mod]["explained_variance"] for mod in ("image", "text")}


_UNSCALED: dict[str, tuple[dict[str, float], dict]] = {}


def _unscaled(method, stores, tmp_path_factory):
    """(explained variance, config.json) of the unit-norm run of ``method`` (trained once per module)."""
    if method not in _UNSCALED:
        run = tmp_path_factory.mktemp(f"unscaled-{method}") / "run"
        train(stores[(1.0, "float32")], TrainConfig.from_preset(method=method, **CFG), run, progress=False)
        _UNSCALED[method] = (_explained_variance(run, stores[(1.0, "float32")]), json.loads((run / "config.json").read_text()))
    return _UNSCALED[method]


@pytest.mark.parametrize("scale,dtype", SCALED, ids=[f"x{s:g}-{d}" for s, d in SCALED])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_on_scaled_rows_as_on_unit_norm_rows(method, scale, dtype, stores, tmp_path, tmp_path_factory):
    ev_ref, cfg_ref = _unscaled(method, stores, tmp_path_factory)
    store = stores[(scale, dtype)]
    run = tmp_path / "run"
    returned = train(store, TrainConfig.from_preset(method=method, **CFG), run, progress=False)
    # The saved SAE applied to the raw (scaled) rows reconstructs them as the unscaled run does its rows.
    ev = _explained_variance(run, store)
    for mod in ("image", "text"):
        assert abs(ev[mod] - ev_ref[mod]) < 0.01, (mod, ev, ev_ref)
    assert min(ev_ref.values()) > 0.1  # the reference learned something: the comparison is not 0 vs 0
    # The recorded factor brings the median row norm (1.0 for these unit-norm rows) back to 1.
    config = json.loads((run / "config.json").read_text())
    factors = config["data"]["input_scale"]
    assert set(factors) == ({"shared"} if METHODS[method].shared else {"image", "text"})
    for factor in factors.values():
        assert factor * scale == pytest.approx(1.0, rel=2e-3 if dtype == "float16" else 1e-6)
    assert json.loads((run / "summary.json").read_text())["input_scale"] == factors
    assert cfg_ref["data"]["input_scale"] == {name: 1.0 for name in factors}
    if method == "group-sparse":  # the measured lambda scale is in the units of the scaled rows, i.e. the same
        assert config["calibration"]["group_sparse_scale"] == pytest.approx(cfg_ref["calibration"]["group_sparse_scale"], rel=1e-2)
    # The returned model is the saved one (folded too).
    saved = load_model(run)
    for mod in ("image", "text"):
        for key, val in saved.sae_for(mod).state_dict().items():
            assert torch.equal(val, returned.sae_for(mod).state_dict()[key]), (mod, key)


def test_without_scaling_rows_at_1e4_smaller_do_not_train(stores, tmp_path, tmp_path_factory):
    """The fault the default fixes, reproduced: --input-scale off at x1e-4 is far below the unit-norm run."""
    ev_ref, _ = _unscaled("specific", stores, tmp_path_factory)
    store = stores[(1e-4, "float32")]
    train(store, TrainConfig.from_preset(method="specific", **CFG, input_scale="off"), tmp_path / "run", progress=False)
    ev = _explained_variance(tmp_path / "run", store)
    assert all(ev[mod] < ev_ref[mod] - 0.1 for mod in ev), (ev, ev_ref)


def _weights(pair) -> dict[str, torch.Tensor]:
    return {f"{mod}.{k}": v for mod in ("image", "text") for k, v in pair.sae_for(mod).state_dict().items()}


@pytest.mark.parametrize("data,method", [("emoji", "specific"), ("synthetic", "iso-energy")])
def test_unit_norm_and_generator_rows_train_bit_identically_to_unscaled(data, method, stores, tmp_path):
    """auto leaves unit-norm CLIP rows and the App. E.2 generator's rows (median norm 2.2 at the demo's d = 64)
    unscaled: the weights equal those of --input-scale off bit for bit."""
    if data == "emoji":
        store = stores[(1.0, "float32")]
    else:
        synth = generate(SynthConfig(d=64, n_shared=256, n_image=128, n_text=128, eps_max=0.4, n_train=512, n_eval=16))
        store = PairedEmbeddings.open(write_store(tmp_path / "synth", synth.image, synth.text))
        assert 1.5 < float(np.median(np.linalg.norm(synth.image, axis=1))) < TOLERANCE
    auto = train(store, TrainConfig.from_preset(method=method, **CFG), tmp_path / "auto", progress=False)
    off = train(store, TrainConfig.from_preset(method=method, **CFG, input_scale="off"), progress=False)
    a, b = _weights(auto), _weights(off)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert set(json.loads((tmp_path / "auto" / "config.json").read_text())["data"]["input_scale"].values()) == {1.0}


class _Stop(Exception):
    pass


def test_resume_of_a_scaled_run_equals_the_uninterrupted_run(stores, tmp_path):
    """A run on rows x1e-4 interrupted after its checkpoint resumes with the recorded factor to the same weights."""
    store = stores[(1e-4, "float32")]
    cfg = TrainConfig.from_preset(method="specific", **{**CFG, "checkpoint_every": 8, "epochs": 2})

    def stop(step, logs):
        if step == 12:
            raise _Stop

    with pytest.raises(_Stop):
        train(store, cfg, tmp_path / "run", progress=False, on_step=stop)
    assert (tmp_path / "run" / "checkpoint" / "state.safetensors").is_file()
    resumed = train(store, cfg, tmp_path / "run", resume=True, progress=False)
    fresh = train(store, cfg, tmp_path / "fresh", progress=False)
    a, b = _weights(resumed), _weights(fresh)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["input_scale"]["image"] == pytest.approx(1e4, rel=1e-6)


_RANK = r"""
import sys
from dualsae.core.distributed import Distributed
from dualsae.store.paired import PairedEmbeddings
from dualsae.training.config import TrainConfig
from dualsae.training.trainer import train
dist = Distributed.from_env()
cfg = TrainConfig.from_preset("synthetic", method="shared", latents=32, k=3, batch_size=30, epochs=2)
train(PairedEmbeddings.open(sys.argv[1]), cfg, sys.argv[2], progress=False, dist=dist)
dist.close()
"""


def test_two_torchrun_ranks_agree_on_the_factor_and_train_like_one_process(tmp_path):
    """Each rank measures the factor itself (a pure function of config and rows): the 2-rank run records the
    one-process factor and ends with the one-process weights."""
    make_store(tmp_path / "unit", n=300, d=12, split=False)
    unit = PairedEmbeddings.open(tmp_path / "unit")
    write_store(tmp_path / "data", unit.read("image").numpy() * 1e-4, unit.read("text").numpy() * 1e-4)
    script = tmp_path / "rank.py"
    script.write_text(_RANK)
    launch_ranks([str(script), str(tmp_path / "data"), str(tmp_path / "two")])
    cfg = TrainConfig.from_preset("synthetic", method="shared", latents=32, k=3, batch_size=30, epochs=2)
    one = train(PairedEmbeddings.open(tmp_path / "data"), cfg, tmp_path / "one", progress=False)
    factors = [json.loads((tmp_path / run / "config.json").read_text())["data"]["input_scale"] for run in ("one", "two")]
    assert factors[0] == factors[1] and factors[0]["shared"] > 1e3
    two = load_model(tmp_path / "two")
    for key, val in one.sae_for("image").state_dict().items():
        # float32 sums in another order; b_dec and b_enc are in the raw (1e-4) units
        assert torch.allclose(val.double(), two.sae_for("image").state_dict()[key].double(), rtol=1e-4, atol=1e-5 * val.abs().max().item()), key


def test_auto_factor_band_and_setting_validation():
    assert auto_factor(1.0) == 1.0 and auto_factor(TOLERANCE) == 1.0 and auto_factor(1 / TOLERANCE) == 1.0
    assert auto_factor(2 * TOLERANCE) == 1 / (2 * TOLERANCE) and auto_factor(1e-4) == pytest.approx(1e4)
    assert auto_factor(0.0) == 1.0 and auto_factor(float("nan")) == 1.0  # left to the data checks
    assert parse_input_scale("auto") is None and parse_input_scale("off") == 1.0 and parse_input_scale("2.5") == 2.5
    for bad in ("0", "-1", "nan", "inf", "half"):
        with pytest.raises(ConfigError, match=r"training field 'input_scale' must be 'auto', 'off' or a finite number > 0, found"):
            TrainConfig(input_scale=bad)
