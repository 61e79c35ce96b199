"""Checkpoint I/O of a training run: weights, optimizer moments and the step, written atomically
(``<run>/checkpoint/state.safetensors``, :mod:`dualsae.models.run_schema`); the metrics log
truncated back to the checkpoint on resume; where the last good state is, for error messages.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open

from dualsae.core.errors import CheckpointError
from dualsae.files.atomic import save_tensors, write_text
from dualsae.models.run_schema import CHECKPOINT_DIR, CHECKPOINT_FILE, RUN_FORMAT
from dualsae.training.step import _Member


def _opt_tensors(prefix: str, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, (_, st) in enumerate(sorted(opt.state_dict()["state"].items())):
        for key, val in st.items():
            out[f"{prefix}.opt.{i}.{key}"] = torch.as_tensor(val).detach().cpu().clone()
    return out


def _load_opt(prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state = {}
    for i in range(len(sd["param_groups"][0]["params"])):
        keys = {k.split(".")[-1]: v for k, v in tensors.items() if k.startswith(f"{prefix}.opt.{i}.")}
        if keys:
            state[i] = keys
    sd["state"] = state
    opt.load_state_dict(sd)


def checkpoint_path(run_dir: Path) -> Path:
    """<run>/checkpoint/state.safetensors."""
    return run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE


def save_checkpoint(run_dir: Path, members: list[_Member], step: int) -> None:
    """Write every member's SAE tensors and AdamW moments (``<member>.sae.*``, ``<member>.opt.*``) and
    the step (metadata) atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for mem in members:
        for key, val in mem.sae.state_dict().items():
            tensors[f"{mem.name}.sae.{key}"] = val
        tensors.update(_opt_tensors(mem.name, mem.opt))
    # repr() of a float reads back as the identical float.
    meta = {"step": str(step), "format": RUN_FORMAT}
    if members[0].gs_scale is not None:
        meta["group_sparse_scale"] = repr(members[0].gs_scale)
    save_tensors(checkpoint_path(run_dir), tensors, metadata=meta)


def load_checkpoint(run_dir: Path, members: list[_Member]) -> int:
    """Restore the members from the run's checkpoint, checking names and shapes; returns its step
    (0 when there is none)."""
    path = checkpoint_path(run_dir)
    if not path.exists():
        return 0
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file; expected the checkpoint written by 'dualsae train'")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'damaged'}); "
                              "delete it to restart the run from step 0") from None
    if "step" not in meta:
        raise CheckpointError(f"{path}: has no 'step' in its metadata; not a dualsae checkpoint")
    for mem in members:
        prefix = f"{mem.name}.sae."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        expected = mem.sae.state_dict()
        missing = sorted(set(expected) - set(sd))
        if missing:
            raise CheckpointError(f"{path}: missing tensor(s) {[prefix + k for k in missing]}")
        for key, ref in expected.items():
            if tuple(sd[key].shape) != tuple(ref.shape):
                raise CheckpointError(f"{path}: tensor '{prefix + key}' has shape {list(sd[key].shape)}, expected {list(ref.shape)}")
        mem.sae.load_state_dict(sd)
        _load_opt(mem.name, mem.opt, tensors)
        if "group_sparse_scale" in meta:
            mem.gs_scale = float(meta["group_sparse_scale"])
    return int(meta["step"])


def truncate_metrics(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(errors="replace").splitlines() if _logged_step(line) <= step]
    write_text(path, "".join(line + "\n" for line in keep))


def _logged_step(line: str) -> float:
    """Step of one metrics.jsonl line; inf for a torn or foreign line (what a full disk or a kill
    mid-write leaves), so truncation drops it."""
    try:
        row = json.loads(line)
        return float(row.get("step", 0)) if isinstance(row, dict) else math.inf
    except (ValueError, TypeError):
        return math.inf


def last_good(run_dir: Path | None) -> str:
    """Where the last good training state is, for a divergence message."""
    if run_dir is None:
        return "nothing was saved"
    path = checkpoint_path(run_dir)
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            step = (f.metadata() or {}).get("step", "?")
        return f"the last good checkpoint (step {step}) is kept in {path.parent}"
    return f"no checkpoint was saved yet in {run_dir} (one is written every --checkpoint-every steps)"
