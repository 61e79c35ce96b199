"""Every registered training method and activation trains, saves and loads; configs written before
the SAE fields were nested still load and resume; the train flags are the config fields."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import fields

import pytest
import torch

from dualsae.commands.flags import add_flags, dataclass_flags, given
from dualsae.commands.train import FLAGS
from dualsae.core.errors import CheckpointError
from dualsae.models.activations import ACTIVATIONS
from dualsae.models.load import load_model
from dualsae.models.sae import SAE, SAEConfig
from dualsae.store.paired import PairedEmbeddings
from dualsae.training.config import SAE_FIELDS, TrainConfig
from dualsae.training.methods import METHODS
from dualsae.training.run_folder import check_resume_config
from dualsae.training.trainer import train
from tests.helpers import make_store

#: The ``train`` object of a config.json written before the nesting (a4709a0, 'dualsae train --method
#: shared --activation batchtopk --latents 256 --k 8 --epochs 1 --batch-size 256 --dead-window 500 --log-every 1').
OLD_FLAT = {"method": "shared", "latents": 256, "k": 8, "activation": "batchtopk", "preset": "real", "lr": 0.0005, "beta1": 0.9,
            "beta2": 0.999, "eps": 1e-08, "weight_decay": 1e-05, "batch_size": 256, "epochs": 1, "warmup_frac": 0.05,
            "schedule": "cosine", "grad_clip": 1.0, "seed": 0, "aux_k": None, "aux_coef": 0.03125, "dead_window": 500,
            "dec_bias_init": "geometric_median", "l1_coef": 0.001, "group_sparse_lambda": 1.0, "group_sparse_scale_free": True,
            "group_sparse_scale_warmup": 0.1, "iso_energy_beta": None, "iso_energy_form": "cosine", "split": "train",
            "test_fraction": 0.2, "split_seed": 0, "checkpoint_every": 500, "log_every": 1, "selection_dtype": "float32"}

SMALL = dict(latents=32, k=3, batch_size=20, epochs=2, log_every=1, dead_window=40, aux_coef=0.5, l1_coef=0.01,
             group_sparse_scale_warmup=0.2)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("reg") / "data"
    make_store(root, n=120, d=8)
    return PairedEmbeddings.open(root).split("train")


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_and_activation_trains_saves_and_loads(store, tmp_path, method, activation):
    cfg = TrainConfig.from_preset("synthetic", method=method, activation=activation, **SMALL)
    pair = train(store, cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(math.isfinite(v) for r in rows for k, v in r.items() if k != "time_s")
    assert set(rows[-1]) >= {f"mse_{m}" for m in ("image", "text")} | {"loss", "l0", "dead_frac"}
    loaded = load_model(tmp_path / "run")
    x = store.read("image", torch.arange(10).numpy())
    for mod in ("image", "text"):
        a, b = pair.sae_for(mod), loaded.sae_for(mod)
        assert a.config == b.config and type(b.activation) is ACTIVATIONS[activation]
        for key, val in a.state_dict().items():
            assert torch.equal(val, b.state_dict()[key]), key
        ca, cb = a.encode(x, dense=True), b.encode(x, dense=True)
        assert torch.equal(ca, cb)


def test_activation_names_are_what_config_json_stores(tmp_path):
    for name, cls in ACTIVATIONS.items():
        assert cls.name == name
        sae = SAE(SAEConfig(d=6, m=12, k=2, activation=name), generator=torch.Generator().manual_seed(0))
        sae.save(tmp_path / name)
        assert json.loads((tmp_path / name / "config.json").read_text())["sae"]["activation"] == name
        assert type(SAE.load(tmp_path / name).activation) is cls


def test_old_flat_train_config_reads_as_the_nested_one():
    old = TrainConfig.from_dict(OLD_FLAT)
    assert old.sae == SAEConfig(k=8, activation="batchtopk", dead_window=500)
    assert TrainConfig.from_dict(old.to_dict()) == old
    assert set(old.to_dict()["sae"]) == set(SAE_FIELDS)
    assert {k: v for k, v in old.flat_dict().items() if k not in ("threshold_momentum", "b_dec_on_input", "input_scale")} == OLD_FLAT  # fields added later
    assert old == TrainConfig.from_preset("real", method="shared", latents=256, k=8, activation="batchtopk", epochs=1,
                                          batch_size=256, dead_window=500, log_every=1)
    with pytest.raises(CheckpointError, match="are SAE fields"):
        TrainConfig.from_dict({**old.to_dict(), "k": 4})


def test_run_with_an_old_flat_config_resumes_to_the_same_weights(store, tmp_path):
    cfg = TrainConfig.from_preset("synthetic", method="specific", checkpoint_every=4, **{**SMALL, "epochs": 3})
    whole = train(store, cfg, tmp_path / "whole", progress=False)

    def stop(step, logs):
        if step == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(store, cfg, tmp_path / "run", progress=False, on_step=stop)
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    saved["train"] = cfg.flat_dict()  # the layout runs had before the nesting
    del saved["train"]["threshold_momentum"], saved["train"]["b_dec_on_input"]
    del saved["train"]["input_scale"], saved["data"]["input_scale"]  # and before input scaling (it trained unscaled)
    path.write_text(json.dumps(saved))
    check_resume_config(tmp_path / "run", cfg, store)
    resumed = train(store, cfg, tmp_path / "run", resume=True, progress=False)
    for mod in ("image", "text"):
        for key, val in whole.sae_for(mod).state_dict().items():
            assert torch.equal(val, resumed.sae_for(mod).state_dict()[key]), (mod, key)


def test_every_config_field_has_a_flag_or_says_why_not():
    names = {f.dest for f in FLAGS}
    for cls in (TrainConfig, SAEConfig):
        for f in fields(cls):
            assert (f.name in names) != (f.metadata.get("cli") is False), f.name
    for flag in FLAGS:
        owner = {f.name: f for f in fields(flag.owner)}[flag.dest]
        assert flag.help == owner.metadata["help"]


def test_generated_flags_parse_to_config_values():
    p = argparse.ArgumentParser()
    flags = dataclass_flags(TrainConfig, nested={"sae": SAEConfig})
    add_flags(p, flags)
    args = p.parse_args(["--k", "5", "--activation", "relu", "--no-scale-free-lambda", "--iso-energy-beta", "0.5", "--batch-size", "64"])
    over = given(args, flags)
    assert over == {"k": 5, "activation": "relu", "group_sparse_scale_free": False, "iso_energy_beta": 0.5, "batch_size": 64}
    cfg = TrainConfig.from_preset("real", **over)
    assert (cfg.sae.k, cfg.sae.activation, cfg.group_sparse_scale_free, cfg.batch_size) == (5, "relu", False, 64)
