"""An SAE's architecture and per-SAE training regularisers: the ``sae`` field of its ``config.json``.

Kept apart from :mod:`dualsae.models.sae` (the module) so that a config can be read, validated and
shown without the model's maps; :class:`SAEConfig` is re-exported there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dualsae.core.errors import CheckpointError, ConfigError
from dualsae.files.jsonfiles import config_from_dict
from dualsae.models.activations import ACTIVATIONS, activation_for

DEC_BIAS_INITS = ("geometric_median", "mean", "zero")


@dataclass(frozen=True)
class SAEConfig:
    """Architecture and per-SAE training regularisers (the ``sae`` field of an SAE's ``config.json``).

    d: embedding dimension; m: number of latents. Both are ``None`` in the SAE config a
    :class:`~dualsae.training.config.TrainConfig` holds: there d comes from the store and m from
    the training config's ``latents`` and method; an :class:`SAE` needs both.
    k: active latents per input (TopK) or mean active latents per input (BatchTopK, k*batch over
    the batch); unused by ReLU.
    activation: the name of the activation in :data:`dualsae.models.activations.ACTIVATIONS`; the
    activation's own parameters (k, threshold_momentum, l1_coef) are the fields of the same names.
    aux_k: dead latents used by the AuxK loss (Gao et al. 2024); ``None`` means min(d // 2, m).
        Gao et al. use 512 at d=768-4096; half the input dimension keeps the same ratio for the
        512-d and 256-d embeddings here.
    aux_coef: AuxK coefficient, 1/32 as in Gao et al.
    dead_window: a latent that has not fired for this many *training samples* counts as dead
        (used only by AuxK). Gao et al. use 10M tokens; our data sets are 10^4-10^6 rows, so the
        default of 20,000 samples can trigger within a short run on small data while a latent that
        fires on 1 in 10,000 inputs is almost never marked dead by chance.
    dec_bias_init: how ``b_dec`` is initialised from the SAE's own training data before the first
        step: geometric median (Weiszfeld iterations, default, as Bricken et al. / Gao et al.),
        mean, or zero.
    l1_coef: L1 coefficient for the ReLU activation only.
    threshold_momentum: EMA momentum of the BatchTopK inference threshold.
    b_dec_on_input: subtract ``b_dec`` from the input before the encoder (eq. 3 as above, dualsae's own
        SAEs); false: ``pre = W_enc x + b_enc`` (imported SAEs that were trained that way). Folders
        written before the field existed load with the default, true.
    """

    d: int | None = field(default=None, metadata={"cli": False})
    m: int | None = field(default=None, metadata={"cli": False})
    k: int = field(default=32, metadata={"help": "active latents per input, TopK's K"})
    activation: str = field(default="topk", metadata={"help": "activation", "choices": tuple(ACTIVATIONS)})
    aux_k: int | None = field(default=None, metadata={"help": "dead latents used by AuxK", "default": "min(d/2, m)"})
    aux_coef: float = field(default=1.0 / 32.0, metadata={"help": "AuxK coefficient"})
    dead_window: int = field(default=20_000, metadata={"help": "samples without firing before a latent counts as dead"})
    dec_bias_init: str = field(default="geometric_median", metadata={"help": "initialisation of b_dec", "choices": DEC_BIAS_INITS})
    l1_coef: float = field(default=1e-3, metadata={"help": "L1 coefficient for --activation relu"})
    threshold_momentum: float = field(default=0.99, metadata={"help": "EMA momentum of the BatchTopK inference threshold"})
    b_dec_on_input: bool = field(default=True, metadata={"cli": False})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.d is not None and self.d < 1:
            raise ConfigError(f"SAE config field 'd' must be >= 1, found {self.d}")
        if self.m is not None and self.m < 2:
            raise ConfigError(f"SAE config field 'm' (latents) must be >= 2, found {self.m}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"SAE config field 'activation' must be one of {', '.join(ACTIVATIONS)}, found {self.activation!r}")
        activation_for(self).validate(self.m)
        if self.aux_k is not None and not (1 <= self.aux_k <= (self.m if self.m is not None else self.aux_k)):
            raise ConfigError(f"SAE config field 'aux_k' must be in [1, m={self.m}], found {self.aux_k}")
        if self.aux_coef < 0:
            raise ConfigError(f"SAE config field 'aux_coef' must be >= 0, found {self.aux_coef}")
        if self.dead_window < 1:
            raise ConfigError(f"SAE config field 'dead_window' must be >= 1 sample, found {self.dead_window}")
        if self.dec_bias_init not in DEC_BIAS_INITS:
            raise ConfigError(f"SAE config field 'dec_bias_init' must be one of {', '.join(DEC_BIAS_INITS)}, found {self.dec_bias_init!r}")

    @property
    def effective_aux_k(self) -> int:
        assert self.d is not None and self.m is not None, "an SAE config without d and m has no aux_k"
        return self.aux_k if self.aux_k is not None else min(max(self.d // 2, 1), self.m)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "SAEConfig":
        return config_from_dict(cls, data, source, "SAE config", CheckpointError, required=("d", "m"))


__all__ = ["SAEConfig", "DEC_BIAS_INITS"]
