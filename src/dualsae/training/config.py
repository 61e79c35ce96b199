"""The training configuration (:class:`TrainConfig`), the paper's presets (App. E.2, E.4) and the
learning-rate schedule.
"""

from __future__ import annotations
import math
from dataclasses import asdict, dataclass, fields
from typing import Any
from dualsae.core.errors import CheckpointError, ConfigError
from dualsae.files.jsonfiles import config_from_dict
from dualsae.models.sae import SAEConfig


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
        training (:mod:`dualsae.training.group_sparse_scale`); 0 measures the initial SAE. Only with
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


def steps_per_epoch(n_pairs: int, batch_size: int) -> int:
    """Batches of ``batch_size`` pairs per epoch; the last partial batch is dropped when there is at
    least one full batch (50,000 pairs / 256 -> 195 steps, 1,950 in 10 epochs as App. E.2 states)."""
    return max(n_pairs // batch_size, 1)
