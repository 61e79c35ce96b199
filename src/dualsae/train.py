"""One trainer for the four methods (paper Sec. 5, 6.1, 6.2; App. E.2, E.4).

Methods (``TrainConfig.method``):

* ``specific``: one SAE per modality, each trained on its own modality only, with ``latents // 2``
  latents so the pair has the parameters of one shared SAE with ``latents`` (Sec. 6.1).
* ``shared``: one SAE with ``latents`` latents on image and text rows together.
* ``group-sparse``: shared, on paired batches, plus lambda * mean_i sum_j sqrt(z_I,ij^2 + z_T,ij^2)
  (Kaushik et al.; the form of Prop. 3). By default lambda is the scale-free lambda-tilde of Prop. 3
  times a scale measured once before training (:mod:`dualsae.calibration`).
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

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dualsae.atomic import append_jsonl, save_tensors, write_json, write_text
from dualsae.calibration import calibrate, needs_calibration
from dualsae.codes import SparseCodes
from dualsae.batches import BatchReader
from dualsae.data import PairedEmbeddings, epoch_order
from dualsae.distributed import Distributed
from dualsae.errors import CheckpointError, ConfigError, DataError
from dualsae.faults import fault_point
from dualsae.fingerprint import resume_mismatch, store_fingerprint
from dualsae.guards import check_loss, check_weights
from dualsae.sparse_ops import DecoderDots
from dualsae.jsonfiles import config_from_dict, read_json_object
from dualsae.losses import (
    aux_k_loss,
    group_sparse_loss,
    iso_energy_alignment,
    iso_energy_dot,
    l1_penalty,
    reconstruction_loss,
)
from dualsae.pair import SAEPair
from dualsae.sae import SAE, SAEConfig

METHODS = ("specific", "shared", "group-sparse", "iso-energy")
PAIRED_METHODS = ("group-sparse", "iso-energy")
SCHEDULES = ("cosine", "constant")
ISO_FORMS = ("cosine", "dot")
SELECTION_DTYPES = ("float32", "bfloat16")
RUN_FORMAT = "dualsae.run/1"

#: Paper presets. ``real``: App. E.4 (and E.1: 30 epochs); ``synthetic``: App. E.2.
PRESETS: dict[str, dict[str, Any]] = {
    "real": dict(
        lr=5e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-5, batch_size=1024,
        grad_clip=1.0, warmup_frac=0.05, schedule="cosine", epochs=30,
    ),
    "synthetic": dict(
        lr=5e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, batch_size=256,
        grad_clip=0.0, warmup_frac=0.0, schedule="constant", epochs=10,
    ),
}


#: The per-SAE fields TrainConfig passes through keep SAEConfig's defaults (one source of truth).
_SAE_DEFAULTS = {f.name: f.default for f in fields(SAEConfig)}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (written to ``config.json``).

    latents: m of the shared SAE; each specific SAE gets ``latents // 2`` (parameter-matched).
    group_sparse_lambda: lambda-tilde of Prop. 3 when ``group_sparse_scale_free`` (default 1.0,
        which is in the merged-but-alive regime for every rho in (0, 1)); otherwise the raw lambda
        of Kaushik et al.'s loss ||x - x_hat||^2 + ||y - y_hat||^2 + lambda L_gs, whose per-pair
        sums are ours.
    group_sparse_scale_warmup: share of the run's steps spent by the reconstruction-only warm-up
        (on a discarded copy of the SAE) that measures lambda-dagger = E[z^2]/E[z] once before
        training (:mod:`dualsae.calibration`); 0 measures the initial SAE. Only with
        ``group_sparse_scale_free``.
    iso_energy_beta: beta for the cosine form (4e-4: Dhimoila et al.'s value for CLIP ViT-B/32).
        The official code adds beta * L_align to the MSE averaged over the concatenated [2B, d]
        image+text batch; our reconstruction term is the per-pair sum over both modalities and d
        (eq. 4 per modality), 2 d times that MSE, so the trainer scales the cosine term by 2 d.
        With ``iso_energy_form='dot'`` (Prop. 4) it is the lambda of Prop. 4 (no scaling: both
        terms are per-pair sums quadratic in z) and the default becomes 1.0 (merged for rho > 1/3).
    grad_clip: max global gradient norm per SAE; 0 disables clipping.
    """

    method: str = "specific"
    latents: int = 8192
    k: int = 32
    activation: str = "topk"
    preset: str = "real"
    lr: float = 5e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-5
    batch_size: int = 1024
    epochs: int = 30
    warmup_frac: float = 0.05
    schedule: str = "cosine"
    grad_clip: float = 1.0
    seed: int = 0
    aux_k: int | None = _SAE_DEFAULTS["aux_k"]
    aux_coef: float = _SAE_DEFAULTS["aux_coef"]
    dead_window: int = _SAE_DEFAULTS["dead_window"]
    dec_bias_init: str = _SAE_DEFAULTS["dec_bias_init"]
    l1_coef: float = _SAE_DEFAULTS["l1_coef"]
    group_sparse_lambda: float = 1.0
    group_sparse_scale_free: bool = True
    group_sparse_scale_warmup: float = 0.1
    iso_energy_beta: float | None = None
    iso_energy_form: str = "cosine"
    split: str = "train"
    # How a store without a meta 'split' field is split (seeded): recorded so that 'align' and 'eval'
    # pick the same training / held-out rows as training did.
    test_fraction: float = 0.2
    split_seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    # dtype of the selection product alone (the [batch, m] encoder product that picks the active
    # latents); the picked values, the loss and the gradients stay float32. bfloat16 is faster on
    # GPUs and recent CPUs; it can pick another latent where two pre-activations nearly tie.
    selection_dtype: str = "float32"

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_preset(cls, preset: str = "real", **overrides: Any) -> "TrainConfig":
        """A config from a paper preset with field overrides (``None`` values are ignored)."""
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
        values = dict(PRESETS[preset], preset=preset)
        known = {f.name for f in fields(cls)}
        for key, val in overrides.items():
            if key not in known:
                raise ConfigError(f"unknown training option {key!r}")
            if val is not None:
                values[key] = val
        return cls(**values)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"training field 'method' must be one of {', '.join(METHODS)}, found {self.method!r}")
        if self.preset not in PRESETS:
            raise ConfigError(f"training field 'preset' must be one of {', '.join(PRESETS)}, found {self.preset!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"training field 'schedule' must be one of {', '.join(SCHEDULES)}, found {self.schedule!r}")
        if self.selection_dtype not in SELECTION_DTYPES:
            raise ConfigError(f"training field 'selection_dtype' must be one of {', '.join(SELECTION_DTYPES)}, found {self.selection_dtype!r}")
        if self.iso_energy_form not in ISO_FORMS:
            raise ConfigError(f"training field 'iso_energy_form' must be one of {', '.join(ISO_FORMS)}, found {self.iso_energy_form!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"training field 'test_fraction' must be in (0, 1), found {self.test_fraction}")
        for name in ("batch_size", "epochs", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training field {name!r} must be >= 1, found {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"training field 'lr' must be a finite number > 0, found {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"training field {name!r} must be in [0, 1), found {getattr(self, name)}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"training field 'eps' must be a finite number > 0, found {self.eps}")
        for name in ("weight_decay", "grad_clip", "aux_coef", "l1_coef", "group_sparse_lambda"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"training field {name!r} must be a finite number >= 0, found {getattr(self, name)}")
        if not 0 <= self.warmup_frac < 1:
            raise ConfigError(f"training field 'warmup_frac' must be in [0, 1), found {self.warmup_frac}")
        if not 0 <= self.group_sparse_scale_warmup <= 1:
            raise ConfigError(f"training field 'group_sparse_scale_warmup' must be in [0, 1], found {self.group_sparse_scale_warmup}")
        if self.group_sparse_lambda < 0 or (self.iso_energy_beta is not None and self.iso_energy_beta < 0):
            raise ConfigError("training fields 'group_sparse_lambda' and 'iso_energy_beta' must be >= 0")
        m = self.latents_per_sae
        if self.method == "specific" and self.latents < 4:
            raise ConfigError(f"training field 'latents' must be >= 4 for method specific (m/2 per modality), found {self.latents}")
        if self.method == "specific" and self.latents % 2:
            raise ConfigError(f"training field 'latents' must be even for method specific (m/2 per modality SAE), "
                              f"found {self.latents}; use {self.latents - 1} or {self.latents + 1}")
        if self.activation != "relu" and not 1 <= self.k < m:
            raise ConfigError(
                f"training field 'k' must satisfy 1 <= k < m, found k={self.k} with m={m} latents per SAE"
                + (f" (--latents {self.latents} split over two modality SAEs)" if self.method == "specific" else "")
            )
        self.sae_config(1)  # validates the SAE fields

    @property
    def latents_per_sae(self) -> int:
        return self.latents // 2 if self.method == "specific" else self.latents

    @property
    def beta_iso(self) -> float:
        if self.iso_energy_beta is not None:
            return self.iso_energy_beta
        return 4e-4 if self.iso_energy_form == "cosine" else 1.0

    def sae_config(self, d: int) -> SAEConfig:
        return SAEConfig(
            d=d, m=self.latents_per_sae, k=self.k, activation=self.activation, aux_k=self.aux_k,
            aux_coef=self.aux_coef, dead_window=self.dead_window, dec_bias_init=self.dec_bias_init,
            l1_coef=self.l1_coef,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config.json") -> "TrainConfig":
        return config_from_dict(cls, data, source, "training", CheckpointError)


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up over warmup_frac of the steps, then cosine
    decay to zero (App. E.4), or constant (App. E.2)."""
    if config.schedule == "constant":
        return config.lr
    warm = int(round(config.warmup_frac * total))
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(total - warm, 1)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# ---------------------------------------------------------------------- state


@dataclass
class _Member:
    """One SAE being trained, its optimizer, and which modalities of a batch it sees."""

    name: str  # folder name: image | text | shared
    sae: SAE
    modalities: tuple[str, ...]
    opt: torch.optim.Optimizer = field(init=False)
    # Constant the group-sparse lambda is multiplied by (dualsae.calibration); None = raw lambda.
    gs_scale: float | None = None


def make_adamw(params, config: "TrainConfig") -> torch.optim.Optimizer:
    """AdamW with the config's hyper-parameters; the fused kernel where this torch has it (same
    update rule, one pass over the parameters instead of several)."""
    kwargs = dict(lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, weight_decay=config.weight_decay)
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kwargs)


def clip_gradients(opt: torch.optim.Optimizer, max_norm: float) -> None:
    """``clip_grad_norm_(params, max_norm)`` for the next ``opt.step()``: the gradients are divided by
    ``max(1, (||g|| + 1e-6) / max_norm)``, ``||g||`` the norm of all of them together.

    With the fused AdamW the division happens inside the optimizer's kernel (its ``grad_scale``, the
    hook mixed-precision training uses), so the gradients are read once for the norm and not
    rewritten: one pass over them fewer per step. The factor stays a tensor (no host sync on CUDA).
    Other optimizers get ``clip_grad_norm_`` itself.
    """
    params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
    if not opt.defaults.get("fused"):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    # Sums of squares as BLAS dot products: two threads share them, where vector_norm ran on one.
    total = torch.stack([torch.dot(g, g) for g in (p.grad.reshape(-1) for p in params)]).sum().sqrt()
    opt.grad_scale = ((total + 1e-6) / max_norm).clamp_min(1.0)  # type: ignore[attr-defined]


def _make_members(config: TrainConfig, store: PairedEmbeddings, device: torch.device) -> list[_Member]:
    gen = torch.Generator().manual_seed(config.seed)
    sae_cfg = config.sae_config(store.d)
    if config.method == "specific":
        mods = [m for m in ("image", "text") if store.has(m)]
        return [make_member(m, SAE(sae_cfg, generator=gen), (m,), config, device) for m in mods]
    mods = tuple(m for m in ("image", "text") if store.has(m))
    return [make_member("shared", SAE(sae_cfg, generator=gen), mods, config, device)]


def make_member(name: str, sae: SAE, modalities: tuple[str, ...], config: TrainConfig,
                device: torch.device | str = "cpu") -> "_Member":
    """One SAE ready for :func:`_step`: on ``device``, the config's selection dtype, the selection
    product's buffer reused from step to step (one forward per step), and its AdamW."""
    mem = _Member(name, sae.to(device), modalities)
    sae.selection_dtype = getattr(torch, config.selection_dtype)
    sae.reuse_selection_memory = True
    mem.opt = make_adamw(sae.parameters(), config)
    return mem


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
    agree); a new run measures it (dualsae.calibration). Returns the calibration record, or None
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
    from safetensors import safe_open

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


# ---------------------------------------------------------------------- the step


def _member_loss(mem: _Member, config: TrainConfig, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one SAE on one batch of B pairs, and scalar logs. batch[mod]: [B, d].

    The loss is the mean over the B pairs of a per-pair sum over the modalities M this SAE sees
    (eq. 4 per modality, the form of Props. 3-4 and of Kaushik et al.):

        sum_{mod in M} ||x - x_hat||^2                                   reconstruction (eq. 4)
      + aux_coef * sum_{mod in M} ||e - e_hat||^2                        AuxK (TopK / BatchTopK)
      + l1_coef * sum_{mod in M} ||z||_1                                 (ReLU)
      + group_sparse_lambda * gs_scale * sum_j sqrt(z_I,j^2 + z_T,j^2)   group-sparse
      + 2 d beta * L_align (cosine form) or beta * (-z_I . z_T) (dot)    iso-energy

    The 2 d turns the official Iso-Energy code's beta, which weighs L_align against an MSE averaged
    over the concatenated [2B, d] image+text batch, into the same balance against our per-pair sum
    (2 d times that MSE). ``gs_scale`` is fixed before training (dualsae.calibration).
    """
    sae = mem.sae
    mods = mem.modalities
    x = torch.cat([batch[m] for m in mods]) if len(mods) > 1 else batch[mods[0]]
    out = sae(x)
    B = batch[mods[0]].shape[0]
    logs: dict[str, float] = {}
    loss = x.new_zeros(())
    for i, mod in enumerate(mods):
        rec = reconstruction_loss(x[i * B:(i + 1) * B], out.recon[i * B:(i + 1) * B])
        loss = loss + rec
        logs[f"mse_{mod}"] = rec.item()
    # aux_k_loss and l1_penalty average over the len(mods) * B rows; times len(mods) = per-pair sum.
    if config.aux_coef > 0 and sae.config.activation != "relu":
        aux = aux_k_loss(sae, x, x - out.recon, out.pre_acts)
        loss = loss + config.aux_coef * len(mods) * aux
        logs["aux"] = aux.item()
    if sae.config.activation == "relu":
        loss = loss + sae.config.l1_coef * len(mods) * l1_penalty(out.codes)
    if config.method in PAIRED_METHODS:
        zi = SparseCodes(out.codes.values[:B], out.codes.indices[:B], sae.m)
        zt = SparseCodes(out.codes.values[B:], out.codes.indices[B:], sae.m)
        if config.method == "group-sparse":
            scale = 1.0 if mem.gs_scale is None else mem.gs_scale
            align = group_sparse_loss(zi, zt, config.group_sparse_lambda, scale=scale)
        elif config.iso_energy_form == "cosine":
            align = config.beta_iso * 2 * sae.d * iso_energy_alignment(zi, zt)
        else:
            align = config.beta_iso * iso_energy_dot(zi, zt)
        loss = loss + align
        logs["align"] = align.item()
    logs["l0"] = int((out.codes.values > 0).sum().item()) / out.codes.batch  # mean active per row
    sae.update_fired(out.codes.detach())
    logs["dead_frac"] = sae.dead_mask().float().mean().item()
    logs[f"loss_{mem.name}"] = loss.item()
    return loss, logs


def _step(members: list[_Member], config: TrainConfig, batch: dict[str, torch.Tensor], lr: float,
          reduce_grads: Callable[[torch.nn.Module], None] | None = None) -> dict[str, float]:
    """One optimizer step of every member; ``reduce_grads`` combines the ranks' gradients under torchrun."""
    logs: dict[str, float] = {}
    for mem in members:
        for group in mem.opt.param_groups:
            group["lr"] = lr
        mem.opt.zero_grad(set_to_none=True)
        # The sparse decodes' backward passes accumulate the projection's dot products (DecoderDots).
        mem.sae.decoder_dots = dots = DecoderDots(mem.sae.m, mem.sae.W_dec.device)
        try:
            loss, mlogs = _member_loss(mem, config, batch)
        finally:
            mem.sae.decoder_dots = None
        loss.backward()
        if reduce_grads is not None:
            reduce_grads(mem.sae)
        # Under torchrun the gradient is the ranks' weighted sum: its dots are measured after it.
        mem.sae.remove_parallel_grad(dots.dots if dots.valid and reduce_grads is None else None)
        if config.grad_clip > 0:
            clip_gradients(mem.opt, config.grad_clip)
        mem.opt.step()
        mem.sae.normalize_decoder()
        for key, val in mlogs.items():
            # l0/dead_frac of several SAEs: report the mean over them.
            logs[key] = logs.get(key, 0.0) + val / (len(members) if key in ("l0", "dead_frac") else 1)
    logs["loss"] = sum(v for k, v in logs.items() if k.startswith("loss_"))
    return logs


# ---------------------------------------------------------------------- driver


def steps_per_epoch(n_pairs: int, batch_size: int) -> int:
    """Batches of ``batch_size`` pairs per epoch; the last partial batch is dropped when there is at
    least one full batch (50,000 pairs / 256 -> 195 steps, 1,950 in 10 epochs as App. E.2 states)."""
    return max(n_pairs // batch_size, 1)


class _BatchOrder:
    """Row positions of each step's batch; the epoch's permutation is drawn once per epoch (it is a
    pure function of (seed, epoch), so a resumed run gets the same batches)."""

    def __init__(self, n: int, config: TrainConfig) -> None:
        self.n, self.config = n, config
        self.spe = steps_per_epoch(n, config.batch_size)
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def __call__(self, step: int) -> np.ndarray:
        epoch, within = divmod(step, self.spe)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(self.n, self.config.seed, epoch)
        bs = self.config.batch_size
        return self._order[within * bs:(within + 1) * bs]


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
    see :mod:`dualsae.distributed`); rank 0 alone writes files and shows progress. ``prefetch``:
    read the next batch in a background thread (pinned memory on CUDA); default on for CUDA.

    Writes into ``out_dir`` (if given): ``config.json``, ``metrics.jsonl`` (one row per
    ``log_every`` steps), ``checkpoint/state.safetensors`` every ``checkpoint_every`` steps, and on
    completion the SAE folder(s) ``image/`` + ``text/`` or ``shared/`` and ``summary.json``.
    Returns the trained model as an :class:`SAEPair`.
    """
    from dualsae.progress import tqdm

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
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            step = (f.metadata() or {}).get("step", "?")
        return f"the last good checkpoint (step {step}) is kept in {path.parent}"
    return f"no checkpoint was saved yet in {run_dir} (one is written every --checkpoint-every steps)"


def _as_pair(method: str, saes: dict[str, SAE]) -> SAEPair:
    if "shared" in saes:
        return SAEPair(method, saes["shared"], saes["shared"])
    return SAEPair(method, saes.get("image"), saes.get("text"))


__all__ = ["TrainConfig", "PRESETS", "METHODS", "train", "lr_at", "steps_per_epoch", "make_adamw"]
