"""The training configuration (:class:`TrainConfig`, which holds its :class:`SAEConfig`), the
paper's presets (App. E.2, E.4) and the learning-rate schedule.

``config.json`` of a run stores it under ``train``: the training fields, and the SAE fields nested
under ``sae`` (runs written before the nesting hold them flat beside the training fields; both read).
Each field's ``metadata`` holds its ``help`` text (and ``choices``): the CLI flags are generated from
it (:mod:`dualsae.commands.flags`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from dualsae.core.errors import CheckpointError, ConfigError
from dualsae.files.jsonfiles import config_from_dict
from dualsae.models.load import flat_train_config
from dualsae.models.sae import SAEConfig
from dualsae.training.input_scale import parse_input_scale
from dualsae.training.methods import METHODS

SCHEDULES = ("cosine", "constant")


ISO_FORMS = ("cosine", "dot")


SELECTION_DTYPES = ("float32", "bfloat16")


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


#: SAEConfig fields a TrainConfig sets (d and m come from the store, ``latents`` and the method).
SAE_FIELDS = tuple(f.name for f in fields(SAEConfig) if f.name not in ("d", "m"))


def _help(text: str, **more: Any) -> dict[str, Any]:
    return {"help": text, **more}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (written to ``config.json``).

    latents: m of the shared SAE; each specific SAE gets ``latents // 2`` (parameter-matched).
    sae: the per-SAE settings (k, activation, AuxK, decoder-bias initialisation, L1...), an
        :class:`SAEConfig` without d and m (:meth:`sae_config` completes it).
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

    method: str = field(default="specific", metadata=_help("training method", choices=tuple(METHODS)))
    latents: int = field(default=8192, metadata=_help("latents m of the shared SAE; each specific SAE gets m/2"))
    sae: SAEConfig = field(default_factory=SAEConfig, metadata={"cli": False})
    preset: str = field(default="real", metadata=_help("hyper-parameter preset", choices=tuple(PRESETS)))
    lr: float = field(default=5e-4, metadata=_help("learning rate"))
    beta1: float = field(default=0.9, metadata=_help("AdamW beta1"))
    beta2: float = field(default=0.999, metadata=_help("AdamW beta2"))
    eps: float = field(default=1e-8, metadata=_help("AdamW epsilon"))
    weight_decay: float = field(default=1e-5, metadata=_help("AdamW weight decay"))
    batch_size: int = field(default=1024, metadata=_help("pairs per step"))
    epochs: int = field(default=30, metadata=_help("passes over the training rows"))
    warmup_frac: float = field(default=0.05, metadata=_help("linear warm-up share of the steps"))
    schedule: str = field(default="cosine", metadata=_help("learning-rate schedule", choices=SCHEDULES))
    grad_clip: float = field(default=1.0, metadata=_help("max gradient norm per SAE, 0 = off"))
    seed: int = field(default=0, metadata=_help("random seed of initialisation and batch order"))
    group_sparse_lambda: float = field(default=1.0, metadata=_help("group-sparse lambda, Prop. 3's scale-free lambda-tilde unless --no-scale-free-lambda"))
    group_sparse_scale_free: bool = field(default=True, metadata=_help(
        "use --group-sparse-lambda as a raw coefficient instead of Prop. 3's scale-free lambda-tilde",
        flag="--no-scale-free-lambda"))
    group_sparse_scale_warmup: float = field(default=0.1, metadata=_help(
        "share of the steps the warm-up that measures the group-sparse scale runs, once before training"))
    iso_energy_beta: float | None = field(default=None, metadata=_help(
        "Iso-Energy beta", default="4e-4 for the cosine form, 1.0 for the dot form"))
    iso_energy_form: str = field(default="cosine", metadata=_help(
        "Iso-Energy alignment term (cosine: the official code; dot: Prop. 4)", choices=ISO_FORMS))
    # How a store without a meta 'split' field is split (seeded): recorded so that 'align' and 'eval'
    # pick the same training / held-out rows as training did. (Flags: commands.common.add_split_args.)
    split: str = field(default="train", metadata={"cli": False})
    test_fraction: float = field(default=0.2, metadata={"cli": False})
    split_seed: int = field(default=0, metadata={"cli": False})
    checkpoint_every: int = field(default=500, metadata=_help("steps between checkpoints"))
    log_every: int = field(default=10, metadata=_help("steps between metrics.jsonl rows"))
    # dtype of the selection product alone (the [batch, m] encoder product that picks the active
    # latents); the picked values, the loss and the gradients stay float32. bfloat16 is faster on
    # GPUs and recent CPUs; it can pick another latent where two pre-activations nearly tie.
    selection_dtype: str = field(default="float32", metadata=_help(
        "dtype of the product that picks the active latents only (values and gradients stay float32)",
        choices=SELECTION_DTYPES))
    # Each SAE trains on its rows times one factor, folded into the saved weights
    # (dualsae.training.input_scale: why, and why 'auto' leaves unit-norm and App. E.2 data unscaled).
    input_scale: str = field(default="auto", metadata=_help(
        "factor the training rows are multiplied by, folded into the saved SAE: auto (1 / median row norm when that "
        "norm is outside [1/8, 8], else 1), off, or a number"))

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_preset(cls, preset: str = "real", **overrides: Any) -> "TrainConfig":
        """A config from a paper preset with field overrides (``None`` values are ignored).

        Overrides name training fields or SAE fields (``latents=2048, k=32, activation="batchtopk"``),
        or give ``sae=SAEConfig(...)`` whole.
        """
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
        train, sae = _split_overrides(overrides)
        values = {**PRESETS[preset], "preset": preset, **train}
        base = values.pop("sae", SAEConfig())
        return cls(**values, sae=replace(base, **sae) if sae else base)

    def with_overrides(self, **overrides: Any) -> "TrainConfig":
        """This config with training or SAE fields replaced (``None`` values are ignored)."""
        train, sae = _split_overrides(overrides)
        base = train.pop("sae", self.sae)
        return replace(self, **train, sae=replace(base, **sae) if sae else base)

    def validate(self) -> None:
        if not isinstance(self.sae, SAEConfig):
            raise ConfigError(f"training field 'sae' must be an SAEConfig, found {type(self.sae).__name__}")
        if self.sae.d is not None or self.sae.m is not None:
            raise ConfigError("training field 'sae' sets d and m; leave them out (d comes from the store, m from 'latents')")
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
        parse_input_scale(self.input_scale)
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
        for name, value in (("weight_decay", self.weight_decay), ("grad_clip", self.grad_clip), ("aux_coef", self.sae.aux_coef),
                            ("l1_coef", self.sae.l1_coef), ("group_sparse_lambda", self.group_sparse_lambda)):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"training field {name!r} must be a finite number >= 0, found {value}")
        if not 0 <= self.warmup_frac < 1:
            raise ConfigError(f"training field 'warmup_frac' must be in [0, 1), found {self.warmup_frac}")
        if not 0 <= self.group_sparse_scale_warmup <= 1:
            raise ConfigError(f"training field 'group_sparse_scale_warmup' must be in [0, 1], found {self.group_sparse_scale_warmup}")
        if self.group_sparse_lambda < 0 or (self.iso_energy_beta is not None and self.iso_energy_beta < 0):
            raise ConfigError("training fields 'group_sparse_lambda' and 'iso_energy_beta' must be >= 0")
        m, k = self.latents_per_sae, self.sae.k
        if self.method == "specific" and self.latents < 4:
            raise ConfigError(f"training field 'latents' must be >= 4 for method specific (m/2 per modality), found {self.latents}")
        if self.method == "specific" and self.latents % 2:
            raise ConfigError(f"training field 'latents' must be even for method specific (m/2 per modality SAE), "
                              f"found {self.latents}; use {self.latents - 1} or {self.latents + 1}")
        if self.sae.activation != "relu" and not 1 <= k < m:
            raise ConfigError(
                f"training field 'k' must satisfy 1 <= k < m, found k={k} with m={m} latents per SAE"
                + (f" (--latents {self.latents} split over two modality SAEs)" if self.method == "specific" else "")
            )
        self.sae_config(1)  # validates the SAE fields against m

    @property
    def latents_per_sae(self) -> int:
        return self.latents if METHODS[self.method].shared else self.latents // 2

    @property
    def beta_iso(self) -> float:
        if self.iso_energy_beta is not None:
            return self.iso_energy_beta
        return 4e-4 if self.iso_energy_form == "cosine" else 1.0

    def sae_config(self, d: int) -> SAEConfig:
        """The config of each SAE this run trains on d-dimensional rows (m = :attr:`latents_per_sae`)."""
        return replace(self.sae, d=d, m=self.latents_per_sae)

    def to_dict(self) -> dict:
        """The ``train`` object of ``config.json``: training fields, the SAE fields nested under ``sae``."""
        out = asdict(self)
        out["sae"] = {name: out["sae"][name] for name in SAE_FIELDS}
        return out

    def flat_dict(self) -> dict:
        """Every setting under its own name, the SAE fields beside the training fields (for comparing
        and showing configs: the layout of ``config.json`` before the nesting)."""
        return flat_train_config(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, source: str = "config.json") -> "TrainConfig":
        """Read a ``train`` object of ``config.json``, nested (``sae``: {...}) or flat (runs written
        before the nesting); errors name ``source`` and the field."""
        data = dict(data)
        flat = {name: data.pop(name) for name in SAE_FIELDS if name in data}
        nested = data.pop("sae", None)
        if nested is not None and not isinstance(nested, dict):
            raise CheckpointError(f"{source}: training field 'sae' must be a JSON object, found {nested!r}")
        if nested is not None and flat:
            raise CheckpointError(f"{source}: training field(s) {sorted(flat)} are SAE fields, which this config holds under 'sae'")
        sae_data = nested if nested is not None else flat
        if "d" in sae_data or "m" in sae_data:
            raise CheckpointError(f"{source}: training field 'sae' has 'd' or 'm'; a training config leaves them to the store and 'latents'")
        sae = config_from_dict(SAEConfig, sae_data, source, "training 'sae'", CheckpointError)
        return config_from_dict(cls, {**data, "sae": sae}, source, "training", CheckpointError)


def _split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training fields, SAE fields) of flat overrides; ``None`` values dropped, unknown names refused."""
    train_names = {f.name for f in fields(TrainConfig)}
    train, sae = {}, {}
    for key, val in overrides.items():
        if key not in train_names and key not in SAE_FIELDS:
            raise ConfigError(f"unknown training option {key!r}")
        if val is not None:
            (sae if key in SAE_FIELDS else train)[key] = val
    return train, sae


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
