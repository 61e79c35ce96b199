"""One trainer for the four methods (paper Sec. 5, 6.1, 6.2; App. E.2, E.4).

Methods (``TrainConfig.method``):

* ``specific``: one SAE per modality, each trained on its own modality only, with ``latents // 2``
  latents so the pair has the parameters of one shared SAE with ``latents`` (Sec. 6.1).
* ``shared``: one SAE with ``latents`` latents on image and text rows together.
* ``group-sparse``: shared, on paired batches, plus lambda * mean_i sum_j sqrt(z_I,ij^2 + z_T,ij^2)
  (Kaushik et al.; the form of Prop. 3). By default lambda is the scale-free lambda-tilde of Prop. 3
  times a scale measured once before training (:mod:`dualsae.training.group_sparse_scale`).
* ``iso-energy``: shared, on paired batches, plus beta * L_align (Dhimoila et al.): the cosine form
  of their official code, or the simplified dot form of Prop. 4.

Every method's loss is a mean over the B pairs of a per-pair sum (see ``_member_loss``).

Each step reads ``batch_size`` *pairs*: a shared SAE's step sees both embeddings of its pairs; each
specific SAE's step sees its own modality's rows of the same pairs. The row order of an epoch is a
pure function of (seed, epoch) and all other state (weights, AdamW moments, dead-latent counters,
BatchTopK threshold, step) is checkpointed, so ``resume=True`` ends with the weights an
uninterrupted run would have produced.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dualsae.files.atomic import append_jsonl, write_json
from dualsae.training.group_sparse_scale import calibrate, needs_calibration
from dualsae.store.batches import BatchReader
from dualsae.store.paired import PairedEmbeddings
from dualsae.core.distributed import Distributed
from dualsae.core.errors import CheckpointError, ConfigError, DataError
from dualsae.files.faults import fault_point
from dualsae.store.fingerprint import resume_mismatch, store_fingerprint
from dualsae.training.guards import check_loss, check_weights
from dualsae.files.jsonfiles import read_json_object
from dualsae.models.pair import SAEPair
from dualsae.models.sae import SAE
from dualsae.core.progress import tqdm
from dualsae.training.config import PAIRED_METHODS
from dualsae.training.config import RUN_FORMAT
from dualsae.training.config import TrainConfig
from dualsae.training.step import _BatchOrder
from dualsae.training.step import _Member
from dualsae.training.checkpoint import _load_checkpoint
from dualsae.training.step import _make_members
from dualsae.training.checkpoint import _save_checkpoint
from dualsae.training.step import _step
from dualsae.training.checkpoint import _truncate_metrics
from dualsae.training.config import lr_at
from dualsae.training.config import steps_per_epoch
from safetensors import safe_open


# ---------------------------------------------------------------------- state


# ---------------------------------------------------------------------- run folder


def _run_config_dict(config: TrainConfig, store: PairedEmbeddings, calibration: dict | None = None) -> dict:
    out = {
        "format": RUN_FORMAT,
        "train": config.to_dict(),
        "data": {
            "path": str(store.root) if store.root is not None else None,
            "rows": store.n,
            "d": store.d,
            "modalities": [m for m in ("image", "text") if store.has(m)],
            "fingerprint": store_fingerprint(store),
        },
    }
    if calibration is not None:
        out["calibration"] = calibration
    return out


def _use_calibration(
    members: list["_Member"], config: TrainConfig, store: PairedEmbeddings, device: torch.device, run_dir: Path | None, resume: bool
) -> dict | None:
    """Fix the group-sparse scale of this run before its first step and record it in config.json.

    A resumed run reads the value config.json recorded (the checkpoint records it too, and must
    agree); a new run measures it (dualsae.training.group_sparse_scale). Returns the calibration record, or None
    when the run's loss has no measured scale.
    """
    if not needs_calibration(config):
        return None
    saved = None
    cfg_path = run_dir / "config.json" if run_dir is not None else None
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
        record = calibrate(store, config, device)
        if cfg_path is not None:
            write_json(cfg_path, _run_config_dict(config, store, record))
    for mem in members:
        mem.gs_scale = record["group_sparse_scale"]
    return record


def _check_resume_config(run_dir: Path, config: TrainConfig, store: PairedEmbeddings) -> None:
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing; --resume needs a run folder started by 'dualsae train'")
    saved = read_json_object(cfg_path, error=CheckpointError)
    old, new = saved.get("train", {}), config.to_dict()
    if not isinstance(old, dict) or not isinstance(saved.get("data", {}), dict):
        raise CheckpointError(f"{cfg_path}: fields 'train' and 'data' must be JSON objects; not a config written by 'dualsae train'")
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise CheckpointError(
                f"{cfg_path}: field '{key}' is {old.get(key)!r} in the saved run, the resumed run asks for {new.get(key)!r}; "
                "resume needs the same training config"
            )
    old_data = saved.get("data", {})
    if isinstance(old_data.get("fingerprint"), dict):
        why = resume_mismatch(old_data["fingerprint"], store)
        if why:
            raise CheckpointError(f"{cfg_path}: {why}; --resume needs the store and rows the run started on")
    for key in ("rows", "d", "modalities"):
        if key in old_data and old_data[key] != _run_config_dict(config, store)["data"][key]:
            raise CheckpointError(
                f"{cfg_path}: data field '{key}' is {old_data[key]!r} in the saved run, the store given now has "
                f"{_run_config_dict(config, store)['data'][key]!r}"
            )


# ---------------------------------------------------------------------- the step


# ---------------------------------------------------------------------- driver


def train(
    store: PairedEmbeddings,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    dist: Distributed | None = None,
    prefetch: bool | None = None,
) -> SAEPair:
    """Train ``config.method`` on ``store`` (already restricted to the training rows).

    ``dist``: under torchrun (:meth:`Distributed.from_env`) each rank reads its slice of every
    global batch of ``batch_size`` pairs and the step is that of the whole batch (DDP semantics,
    see :mod:`dualsae.core.distributed`); rank 0 alone writes files and shows progress. ``prefetch``:
    read the next batch in a background thread (pinned memory on CUDA); default on for CUDA.

    Writes into ``out_dir`` (if given): ``config.json``, ``metrics.jsonl`` (one row per
    ``log_every`` steps), ``checkpoint/state.safetensors`` every ``checkpoint_every`` steps, and on
    completion the SAE folder(s) ``image/`` + ``text/`` or ``shared/`` and ``summary.json``.
    Returns the trained model as an :class:`SAEPair`.
    """

    dist = dist if dist is not None else Distributed()
    device = dist.device(device)
    if dist.world > min(config.batch_size, store.n):
        raise ConfigError(f"training field 'batch_size' is {config.batch_size} pairs over {store.n:,} rows; each of the {dist.world} ranks needs at least one row per step")
    if config.method in PAIRED_METHODS:
        store.require_pairs(f"method {config.method}")
    if store.n < 1:
        raise DataError(f"{store.root}: the training split has no rows")
    if config.batch_size > store.n:
        raise ConfigError(f"{store.root}: training field 'batch_size' is {config.batch_size:,}, larger than the "
                          f"{store.n:,} rows of the training split (the last partial batch is dropped, so no step "
                          f"would run); use --batch-size {store.n} or less")
    run_dir = Path(out_dir) if out_dir is not None else None
    members = _make_members(config, store, device)
    total = steps_per_epoch(store.n, config.batch_size) * config.epochs
    start = 0
    if run_dir is not None:
        if resume:
            _check_resume_config(run_dir, config, store)
            if (run_dir / "summary.json").is_file():
                raise CheckpointError(f"{run_dir}/summary.json: this run already finished; nothing to resume")
            start = _load_checkpoint(run_dir, members)
            dist.barrier()  # every rank has read the checkpoint before rank 0 touches the folder
            if dist.is_main:
                _truncate_metrics(run_dir / "metrics.jsonl", start)
        else:
            if (run_dir / "config.json").exists():
                raise CheckpointError(f"{run_dir}: already holds a run (config.json); pass --resume to continue it or choose a new --out")
            dist.barrier()  # every rank has checked the folder before rank 0 writes into it
            if dist.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                write_json(run_dir / "config.json", _run_config_dict(config, store))
    # Every rank measures the same scale (a pure function of config and rows); rank 0 records it.
    calibration = _use_calibration(members, config, store, device, run_dir if dist.is_main or resume else None, resume)
    if start == 0:
        for mem in members:
            sample = torch.cat([store.sample(m, 10_000, seed=config.seed) for m in mem.modalities])
            mem.sae.init_decoder_bias(sample.to(device))
    for mem in members:
        dist.broadcast_module(mem.sae)  # identical already (same seed / checkpoint); as DDP does
    writes = run_dir is not None and dist.is_main
    progress = progress and dist.is_main
    t0 = time.time()
    bar = tqdm(total=total, initial=start, disable=not progress, desc=f"train {config.method}", unit="step", dynamic_ncols=True)
    logs: dict[str, float] = {}
    batch_positions = _BatchOrder(store.n, config)
    global_rows = min(config.batch_size, store.n)
    batches = BatchReader(store, lambda s: dist.slice(batch_positions(s)), total, device, prefetch)
    with dist.active():
        for step in range(start, total):
            batch = batches(step)
            rows = next(iter(batch.values())).shape[0]
            reduce = (lambda sae: dist.reduce_grads(sae, rows, global_rows)) if dist.enabled else None
            logs = _step(members, config, batch, lr_at(step, total, config), reduce)
            done = step + 1
            check_loss(done, logs, lambda: _last_good(run_dir))
            if run_dir is not None and (done % config.log_every == 0 or done == total):
                logs = dist.mean_logs(logs, rows, global_rows)  # the global batch's values (all ranks take part)
            if writes and (done % config.log_every == 0 or done == total):
                row = {"step": done, "epoch": step // steps_per_epoch(store.n, config.batch_size), "lr": lr_at(step, total, config)}
                # Significant digits, not fixed decimals: losses of inputs scaled by 1e-4 are ~1e-9.
                row.update({k: float(f"{v:.7g}") for k, v in logs.items()})
                row["time_s"] = round(time.time() - t0, 2)
                append_jsonl(run_dir / "metrics.jsonl", row)
            if writes and done % config.checkpoint_every == 0 and done < total:
                check_weights(done, ((mem.name, mem.sae) for mem in members), lambda: _last_good(run_dir))
                _save_checkpoint(run_dir, members, done)
            if on_step is not None:
                on_step(done, logs)
            if progress:
                bar.set_postfix(loss=f"{logs['loss']:.4g}", mse=f"{np.mean([v for k, v in logs.items() if k.startswith('mse_')]):.4g}",
                                L0=f"{logs['l0']:.1f}", dead=f"{logs['dead_frac']:.3f}", refresh=False)
            bar.update(1)
            if step % 8 == 0:
                store.release_pages()
    bar.close()
    batches.close()
    for mem in members:  # the returned model's forward gives fresh tensors again
        mem.sae.reuse_selection_memory, mem.sae._selection_buffer = False, None
    pair = _as_pair(config.method, {mem.name: mem.sae for mem in members})
    check_weights(total, ((mem.name, mem.sae) for mem in members), lambda: _last_good(run_dir))
    if writes:
        for i, mem in enumerate(members):
            if i:
                fault_point("train-between-saes", str(run_dir))
            mem.sae.save(run_dir / mem.name)
        summary = {"steps": total, "seconds": round(time.time() - t0, 2), "final": logs}
        if calibration is not None:
            summary["calibration"] = calibration
        write_json(run_dir / "summary.json", summary)
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    dist.barrier()  # every rank returns once the run folder is complete
    for mem in members:
        mem.sae.eval()
    return pair


def _last_good(run_dir: Path | None) -> str:
    """Where the last good training state is, for a divergence message."""
    if run_dir is None:
        return "nothing was saved"
    path = run_dir / "checkpoint" / "state.safetensors"
    if path.is_file():

        with safe_open(str(path), framework="pt") as f:
            step = (f.metadata() or {}).get("step", "?")
        return f"the last good checkpoint (step {step}) is kept in {path.parent}"
    return f"no checkpoint was saved yet in {run_dir} (one is written every --checkpoint-every steps)"


def _as_pair(method: str, saes: dict[str, SAE]) -> SAEPair:
    if "shared" in saes:
        return SAEPair(method, saes["shared"], saes["shared"])
    return SAEPair(method, saes.get("image"), saes.get("text"))


__all__ = ["train"]
