"""The scale of the group-sparse coefficient (Prop. 3's lambda-dagger), measured once before training.

With ``TrainConfig.group_sparse_scale_free`` the user's ``group_sparse_lambda`` is Prop. 3's
scale-free lambda-tilde = lambda E[z]/E[z^2], so the trainer multiplies it by lambda-dagger =
E[z^2]/E[z]. The coefficients z are not observed; lambda-dagger is estimated from the active code
values v of an SAE that already reconstructs the data (with unit decoder columns, v is the
coefficient of the feature a latent has learned), as E[v^2]/E[v].

How (``calibrate``): a copy of the run's shared SAE, from the same initialisation and decoder bias,
trains reconstruction-only (the ``shared`` method: eq. 4 + AuxK) on the run's first batches for
``group_sparse_scale_warmup`` of the run's steps, with the run's optimiser settings and its schedule
compressed to those steps. E[v^2]/E[v] over its codes on up to ``CALIBRATION_ROWS`` training rows of
each modality is the scale. The copy is then discarded: the run starts from the initialisation,
with the coefficient held fixed for every step, as in Prop. 3 (re-estimating it from each batch's
codes would make it depend on the current solution and move the regime thresholds). A warm-up of 0
measures the initial SAE's codes.

The scale is a pure function of (config, training rows). The trainer writes it into the run
(``config.json`` 'calibration', the checkpoint metadata and ``summary.json``); a resumed run reads it
back instead of measuring it again, so it continues with the exact same float.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from dualsae.core.codes import SparseCodes
from dualsae.core.errors import CheckpointError
from dualsae.core.losses import activation_scale
from dualsae.files.atomic import write_json
from dualsae.files.jsonfiles import read_json_object
from dualsae.models.encoding import encode_rows
from dualsae.models.run_schema import CONFIG_FILE
from dualsae.store.paired import PairedEmbeddings
from dualsae.training.config import TrainConfig, lr_at, steps_per_epoch
from dualsae.training.run_folder import run_config_dict
from dualsae.training.step import _BatchOrder, _make_members, _Member, _step

#: Rows per modality whose codes give the scale (the same sample initialises the decoder bias).
CALIBRATION_ROWS = 10_000
_CHUNK = 2048


def needs_calibration(config: "TrainConfig") -> bool:
    """Whether ``config`` multiplies its group-sparse lambda by a measured scale."""
    return config.method == "group-sparse" and config.group_sparse_scale_free


def _codes(sae, x: torch.Tensor) -> SparseCodes:
    """Inference codes of x: [n, d] in chunks (the dense [chunk, m] pre-activations stay small), on x's device."""
    return encode_rows(sae, x, batch_size=_CHUNK, out_device=None, dtype=None)


def calibrate(store: "PairedEmbeddings", config: "TrainConfig", device: torch.device, input_scale: float = 1.0) -> dict:
    """Measure the group-sparse scale for a run of ``config`` on ``store`` (its training rows), on the rows
    times the run's ``input_scale`` (the codes the run's loss sees).

    Returns ``{"group_sparse_scale": float, "warmup_steps": int, "rows": int}``.
    """
    warm = replace(config, method="shared")
    members = _make_members(warm, store, device)
    sae = members[0].sae
    members[0].input_scale = input_scale
    sample = {m: store.sample(m, CALIBRATION_ROWS, seed=config.seed).to(device) for m in ("image", "text")}
    if input_scale != 1.0:
        sample = {m: rows * input_scale for m, rows in sample.items()}
    sae.init_decoder_bias(torch.cat([sample["image"], sample["text"]]))
    steps = int(round(config.group_sparse_scale_warmup * steps_per_epoch(store.n, config.batch_size) * config.epochs))
    order = _BatchOrder(store.n, config)
    for step in range(steps):
        pos = order(step)
        batch = {m: store.read(m, pos).to(device) for m in ("image", "text")}
        _step(members, warm, batch, lr_at(step, steps, warm))
    sae.eval()
    scale = float(activation_scale(_codes(sae, sample["image"]), _codes(sae, sample["text"])))
    return {"group_sparse_scale": scale, "warmup_steps": steps, "rows": int(len(sample["image"]))}


def use_group_sparse_scale(members: list[_Member], config: TrainConfig, store: PairedEmbeddings, device: torch.device,
                           run_dir: Path | None, resume: bool) -> dict | None:
    """Fix the group-sparse scale of this run before its first step and record it in config.json.

    A resumed run reads the value config.json recorded (the checkpoint records it too, and must
    agree); a new run measures it (:func:`calibrate`). Returns the calibration record, or None
    when the run's loss has no measured scale.
    """
    if not needs_calibration(config):
        return None
    saved = None
    cfg_path = run_dir / CONFIG_FILE if run_dir is not None else None
    if resume and cfg_path is not None and cfg_path.is_file():
        saved = read_json_object(cfg_path, error=CheckpointError).get("calibration")
    if isinstance(saved, dict) and isinstance(saved.get("group_sparse_scale"), float):
        record = saved
        for mem in members:  # set from the checkpoint's metadata when one was loaded
            if mem.gs_scale is not None and mem.gs_scale != record["group_sparse_scale"]:
                raise CheckpointError(
                    f"{run_dir}/checkpoint/state.safetensors: group_sparse_scale is {mem.gs_scale!r}, "
                    f"{cfg_path} records {record['group_sparse_scale']!r}; the run folder was altered"
                )
    else:
        # Deterministic in (config, rows): a resumed run whose config.json lacks it measures the same value.
        record = calibrate(store, config, device, members[0].input_scale)
        if cfg_path is not None:
            write_json(cfg_path, run_config_dict(config, store, record))
    for mem in members:
        mem.gs_scale = record["group_sparse_scale"]
    return record


__all__ = ["calibrate", "needs_calibration", "use_group_sparse_scale", "CALIBRATION_ROWS"]
