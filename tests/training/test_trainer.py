"""Trainer: the four methods, presets, schedule, determinism, checkpoint/resume after a kill."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dualsae.core.errors import CheckpointError, ConfigError, DataError
from dualsae.models.sae import n_params_for
from dualsae.store.paired import PairedEmbeddings
from dualsae.training.config import TrainConfig, lr_at, steps_per_epoch
from dualsae.training.trainer import train
from tests.helpers import make_store

SMALL = dict(latents=64, k=4, batch_size=32, epochs=2, checkpoint_every=5, log_every=2)


def test_presets_match_paper():
    real = TrainConfig.from_preset("real")
    assert (real.lr, real.beta1, real.beta2, real.weight_decay, real.batch_size, real.grad_clip, real.warmup_frac, real.schedule) == (
        5e-4, 0.9, 0.999, 1e-5, 1024, 1.0, 0.05, "cosine")
    syn = TrainConfig.from_preset("synthetic", latents=8192, k=16)
    assert (syn.lr, syn.weight_decay, syn.batch_size, syn.epochs, syn.warmup_frac, syn.schedule, syn.grad_clip) == (
        5e-4, 0.0, 256, 10, 0.0, "constant", 0.0)
    assert steps_per_epoch(50_000, 256) * 10 == 1950  # App. E.2's "approximately 1,950 steps"
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        TrainConfig.from_preset("fast")
    with pytest.raises(ConfigError, match="method"):
        TrainConfig.from_preset(method="joint")


def test_parameter_matching():
    shared = TrainConfig.from_preset(method="shared", latents=8192, k=16)
    spec = TrainConfig.from_preset(method="specific", latents=8192, k=16)
    assert (shared.latents_per_sae, spec.latents_per_sae) == (8192, 4096)
    # Two m/2 SAEs hold the weights of one m SAE (only the d-sized decoder bias is counted twice).
    assert 2 * n_params_for(256, 4096) - n_params_for(256, 8192) == 256


def test_k_must_be_below_m():
    with pytest.raises(ConfigError, match="1 <= k < m, found k=32 with m=32"):
        TrainConfig.from_preset(method="specific", latents=64, k=32)


def test_cosine_schedule_with_warmup():
    cfg = TrainConfig(lr=1.0, warmup_frac=0.1)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert lr_at(10, 100, cfg) == pytest.approx(1.0)
    assert lr_at(55, 100, cfg) == pytest.approx(0.5)
    assert lr_at(99, 100, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr_at(50, 100, TrainConfig(lr=0.3, schedule="constant")) == 0.3


@pytest.mark.parametrize("method", ["specific", "shared", "group-sparse", "iso-energy"])
def test_each_method_trains_and_reduces_error(store, tmp_path, method):
    # lambda-tilde 0.3: at the default 1 (Prop. 3's merged regime) the group-sparse loss is meant to
    # keep part of the reconstruction error (1.33 vs 3.36 here, a 0.8 ratio between the first and last rows).
    extra = {"group_sparse_lambda": 0.3} if method == "group-sparse" else {}
    cfg = TrainConfig.from_preset("real", method=method, **{**SMALL, "epochs": 6, "lr": 1e-2, **extra})
    pair = train(store, cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 2 and rows[-1]["step"] == steps_per_epoch(store.n, 32) * 6
    for key in ("loss", "l0", "dead_frac", "mse_image", "mse_text", "lr"):
        assert key in rows[-1]
    first = np.mean([r["mse_image"] for r in rows[:3]])
    last = np.mean([r["mse_image"] for r in rows[-3:]])
    assert last < 0.7 * first
    if method in ("group-sparse", "iso-energy"):
        assert "align" in rows[-1]
    expected = ["image", "text"] if method == "specific" else ["shared"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir()) == expected
    assert pair.shared == (method != "specific")
    assert pair.image.m == (32 if method == "specific" else 64)
    assert torch.allclose(pair.image.W_dec.norm(dim=1), torch.ones(pair.image.m), atol=1e-5)
    # the trainer's reused selection buffer stays with the trainer: the returned model's outputs are fresh
    x = torch.randn(5, pair.image.d)
    first = pair.image(x).pre_acts
    assert pair.image(2 * x).pre_acts.data_ptr() != first.data_ptr()


def test_specific_on_image_only_store(tmp_path):
    make_store(tmp_path / "img", n=200, d=16, text=False)
    s = PairedEmbeddings.open(tmp_path / "img")
    pair = train(s, TrainConfig.from_preset(method="specific", **SMALL), tmp_path / "run", progress=False)
    assert pair.text is None and pair.image is not None
    with pytest.raises(DataError, match="has no text.npy, which method iso-energy needs"):
        train(s, TrainConfig.from_preset(method="iso-energy", **SMALL), tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2").exists()  # bad input writes nothing


def test_same_seed_same_weights(store):
    a = train(store, TrainConfig.from_preset(method="shared", seed=3, **SMALL), progress=False)
    b = train(store, TrainConfig.from_preset(method="shared", seed=3, **SMALL), progress=False)
    c = train(store, TrainConfig.from_preset(method="shared", seed=4, **SMALL), progress=False)
    assert torch.equal(a.image.W_dec, b.image.W_dec) and torch.equal(a.image.W_enc, b.image.W_enc)
    assert not torch.equal(a.image.W_dec, c.image.W_dec)


def test_run_refuses_to_overwrite_and_resume_checks_config(store, tmp_path):
    train(store, TrainConfig.from_preset(method="specific", **SMALL), tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(store, TrainConfig.from_preset(method="specific", **SMALL), tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match=r"field 'k' is 4 in the saved run, the resumed run asks for 5"):
        train(store, TrainConfig.from_preset(method="specific", **{**SMALL, "k": 5}), tmp_path / "run", resume=True, progress=False)


_KILL_SCRIPT = """
import sys, time
from dualsae.store.paired import PairedEmbeddings
from dualsae.training.config import TrainConfig
from dualsae.training.trainer import train
store = PairedEmbeddings.open(sys.argv[1]).split("train")
cfg = TrainConfig.from_preset(method=sys.argv[3], latents=64, k=4, batch_size=32, epochs=4, checkpoint_every=5, log_every=2)
slow = (lambda step, logs: time.sleep(0.05)) if sys.argv[4] == "slow" else None
train(store, cfg, sys.argv[2], progress=False, on_step=slow)
"""


@pytest.mark.parametrize("method", ["specific", "group-sparse"])
def test_resume_after_kill_equals_uninterrupted(tmp_path, method):
    make_store(tmp_path / "data", n=400, d=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = tmp_path / "kill.py"
    script.write_text(_KILL_SCRIPT)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "data"), str(run), method, "slow"], env=env)
    ckpt = run / "checkpoint" / "state.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (run / "summary.json").exists(), "the run should have been killed mid-way"
    store = PairedEmbeddings.open(tmp_path / "data").split("train")
    cfg = TrainConfig.from_preset(method=method, latents=64, k=4, batch_size=32, epochs=4, checkpoint_every=5, log_every=2)
    resumed = train(store, cfg, run, resume=True, progress=False)
    fresh = train(store, cfg, tmp_path / "fresh", progress=False)
    for mod in ("image", "text"):
        a, b = resumed.sae_for(mod), fresh.sae_for(mod)
        for (k1, v1), (_, v2) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(v1, v2), f"{mod}.{k1} differs after resume"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated log rows after resume
    assert not (run / "checkpoint").exists()
    with pytest.raises(CheckpointError, match="already finished"):
        train(store, cfg, run, resume=True, progress=False)


@pytest.mark.parametrize("scale,activation", [(1e-3, "topk"), (30.0, "topk"), (30.0, "batchtopk"), (30.0, "relu")])
def test_clip_inside_fused_adamw_equals_clip_grad_norm(scale, activation):
    """The trainer's step divides the gradients by the clip factor inside the fused AdamW kernel
    (train.clip_gradients) instead of rewriting them; its weights must equal those of the plain
    step (clip_grad_norm_, then AdamW) over several steps, with gradients under the clip norm and
    far over it, for each activation, with AuxK at work on dead latents."""
    from dualsae.models.sae import SAE, SAEConfig
    from dualsae.training.step import _Member, _step, make_member

    config = TrainConfig.from_preset("real", method="specific", k=3, lr=1e-2, grad_clip=0.5, activation=activation)
    gen = torch.Generator().manual_seed(0)
    batches = [scale * torch.randn(8, 12, generator=gen) for _ in range(4)]
    sae_cfg = SAEConfig(d=12, m=96, k=3, activation=activation, aux_k=4)
    sae = SAE(sae_cfg, generator=torch.Generator().manual_seed(1))
    ref = SAE(sae_cfg, generator=torch.Generator().manual_seed(1))
    mem = make_member("image", sae, ("image",), config)
    assert mem.opt.defaults.get("fused"), "this torch has the fused CPU AdamW; the test is about it"
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, betas=(config.beta1, config.beta2), eps=config.eps,
                                weight_decay=config.weight_decay)
    ref_mem = _Member("image", ref, ("image",))
    from dualsae.training.step import _member_loss

    norms = []
    for x in batches:
        for s in (sae, ref):  # a third of the latents dead every step: AuxK touches rows TopK did not pick
            s.samples_since_fired[::3] = s.config.dead_window
        if activation != "relu":
            assert aux_rows_differ(sae, x), "AuxK should touch rows TopK does not"
        _step([mem], config, {"image": x}, 1e-2)
        ref_opt.zero_grad(set_to_none=True)
        loss, _ = _member_loss(ref_mem, config, {"image": x})
        loss.backward()
        ref.remove_parallel_grad()
        norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)))
        ref_opt.step()
        ref.normalize_decoder()
    assert (min(norms) > 0.5) if scale > 1 else (max(norms) < 0.5), norms  # the case the parameter names
    for name, p in sae.state_dict().items():
        assert torch.allclose(p, ref.state_dict()[name], rtol=1e-5, atol=1e-6), name


def aux_rows_differ(sae, x: torch.Tensor) -> bool:
    """Whether some dead latent (AuxK's candidates) is never among the k selected for ``x``."""
    with torch.no_grad():
        picked = set(sae.pre_activations(x).topk(sae.config.k, dim=1).indices.flatten().tolist())
    return bool(set(sae.dead_mask().nonzero().flatten().tolist()) - picked)
