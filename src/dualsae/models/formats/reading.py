"""What every reader of another library's SAE folder shares: one-line errors that name the file and the
field, tensors checked by name and shape, pickled files only through ``torch.load(weights_only=True)``,
file hashes for provenance, and the dualsae :class:`~dualsae.models.sae.SAE` built from the weights.

Every reader maps the source library's encoder to dualsae's ``pre = W_enc (x - b_dec) + b_enc``
(``b_dec_on_input`` false: ``pre = W_enc x + b_enc``) with ``W_enc`` and ``W_dec`` row-major [m, d];
a library that stores ``W_enc`` as [d, m] (SAELens, dictionary_learning's JumpReLU) is transposed here.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch

from dualsae.core.errors import CheckpointError
from dualsae.files.jsonfiles import read_json_object
from dualsae.files.tensorfiles import read_tensors
from dualsae.models.sae import SAE, SAEConfig


def read_library_config(path: Path, library: str) -> dict:
    """The JSON object of a library's config file (one line naming it when missing or not JSON)."""
    return read_json_object(path, f"expected a {library} SAE folder", CheckpointError)


def config_value(cfg: dict, name: str, path: Path, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """``cfg[name]`` checked to be of ``kind`` (a bool is no int); ``default`` when absent (absent and no default: error)."""
    if name not in cfg or cfg[name] is None:
        if default is ...:
            raise CheckpointError(f"{path}: missing field '{name}'")
        return default
    value = cfg[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise CheckpointError(f"{path}: field '{name}' must be {names}, found {value!r}")
    return value


def read_safetensors(path: Path, library: str) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in read_tensors(path, CheckpointError, f"expected a {library} SAE's weights").items()}


def read_pickled_state(path: Path, library: str) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save``, read with ``weights_only=True`` (tensors and plain
    containers only: a pickle that would run code is refused, not executed)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; expected a {library} state dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many classes; report one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a state dict torch.load(weights_only=True) can read ({reason[:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def tensor(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    """``tensors[name]`` with exactly ``shape`` (one line naming the file and tensor otherwise)."""
    if name not in tensors:
        raise CheckpointError(f"{path}: missing tensor '{name}' (found {sorted(tensors)})")
    t = tensors[name]
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{path}: tensor '{name}' has shape {list(t.shape)}, expected {list(shape)}")
    return t


def check_no_extra(tensors: dict[str, torch.Tensor], known: set[str], path: Path, why: str) -> None:
    extra = sorted(set(tensors) - known)
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor(s) {extra}; {why}")


@torch.no_grad()
def build_sae(*, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor, activation: str,
              k: int | None = None, threshold: torch.Tensor | float | None = None, b_dec_on_input: bool = True) -> SAE:
    """A dualsae SAE holding these weights. W_enc, W_dec: [m, d]; b_enc: [m]; b_dec: [d]; threshold:
    [m] (jumprelu) or a scalar (batchtopk)."""
    m, d = W_enc.shape
    k_cfg = k if k is not None else min(32, m - 1)
    cfg = SAEConfig(d=d, m=m, k=k_cfg, activation=activation, dec_bias_init="zero", b_dec_on_input=b_dec_on_input)
    sae = SAE(cfg)
    sae.W_enc.copy_(W_enc)
    sae.b_enc.copy_(b_enc)
    sae.W_dec.copy_(W_dec)
    sae.b_dec.copy_(b_dec)
    if threshold is not None:
        sae.threshold.copy_(torch.as_tensor(threshold, dtype=torch.float32).reshape(sae.threshold.shape))
    return sae.eval()


def positive_int(cfg: dict, name: str, path: Path) -> int:
    value = config_value(cfg, name, path, (int, float))
    if isinstance(value, float) and not value.is_integer() or value < 1:
        raise CheckpointError(f"{path}: field '{name}' must be a positive whole number, found {value!r}")
    return int(value)


def finite_scalar(t: torch.Tensor, name: str, path: Path) -> float:
    value = float(t.reshape(-1)[0]) if t.numel() else float("nan")
    if t.numel() != 1 or not math.isfinite(value):
        raise CheckpointError(f"{path}: tensor '{name}' must hold one finite number, found shape {list(t.shape)}")
    return value


def file_hashes(folder: Path, names: list[str]) -> dict[str, str]:
    """{file name: SHA-256} of the files an imported SAE was read from (its provenance)."""
    out = {}
    for name in names:
        h = hashlib.sha256()
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out[name] = h.hexdigest()
    return out
