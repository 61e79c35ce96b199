"""Checkpoint I/O of a training run: weights, optimizer moments and the step, written atomically;
the metrics log truncated back to the checkpoint on resume.
"""

from __future__ import annotations
import json
import math
from pathlib import Path
import torch
from dualsae.files.atomic import save_tensors, write_text
from dualsae.core.errors import CheckpointError
from dualsae.training.config import RUN_FORMAT
from dualsae.training.step import _Member
from safetensors import safe_open


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


def _save_checkpoint(run_dir: Path, members: list[_Member], step: int) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for mem in members:
        for key, val in mem.sae.state_dict().items():
            tensors[f"{mem.name}.sae.{key}"] = val
        tensors.update(_opt_tensors(mem.name, mem.opt))
    # repr() of a float reads back as the identical float.
    meta = {"step": str(step), "format": RUN_FORMAT}
    if members[0].gs_scale is not None:
        meta["group_sparse_scale"] = repr(members[0].gs_scale)
    save_tensors(run_dir / "checkpoint" / "state.safetensors", tensors, metadata=meta)


def _load_checkpoint(run_dir: Path, members: list[_Member]) -> int:

    path = run_dir / "checkpoint" / "state.safetensors"
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


def _truncate_metrics(path: Path, step: int) -> None:
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
