"""What every activation provides, and the training forward's output (:class:`SAEOutput`).

An activation is sigma of eq. 3 (``z = sigma(pre)``, ``pre = W_enc (x - b_dec) + b_enc``): a frozen
dataclass holding its own parameters (read from the SAE's :class:`~dualsae.models.sae.SAEConfig`,
the stored form), with

* ``forward(sae, x) -> SAEOutput``: the training forward pass (selection, codes with autograd,
  reconstruction);
* ``encode(sae, pre) -> SparseCodes``: inference codes from the pre-activations;
* ``auxiliary_terms(sae, x, out, modalities) -> {name: LossTerm}``: the regulariser that goes with
  the activation (AuxK for TopK / BatchTopK, the L1 penalty for ReLU), added to eq. 4 by every
  training method;
* ``validate(m)``: its parameters against the SAE's m latents (``None``: m not known yet).

The registry (:mod:`dualsae.models.activations`) maps the name stored in ``config.json``
(``SAEConfig.activation``) to the class.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar, NamedTuple, Protocol

import torch

from dualsae.core.codes import SparseCodes
from dualsae.core.losses import LossTerm, aux_k_loss
from dualsae.core.screened_topk import Selection


class SAEView(Protocol):
    """What an activation uses of the SAE it serves (:class:`dualsae.models.sae.SAE` is one). Typed by
    its shape, not by the class: sae.py imports this package, so this package imports nothing of it."""

    m: int
    training: bool
    config: Any  # its SAEConfig (aux_k, aux_coef, ...)
    W_dec: torch.Tensor  # [m, d]
    b_dec: torch.Tensor  # [d]
    threshold: torch.Tensor  # BatchTopK's inference threshold (0-d) or JumpReLU's per-latent thresholds [m]
    decoder_dots: Any

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor: ...

    def selection_pre_activations(self, x: torch.Tensor) -> torch.Tensor: ...

    def gather_pre(self, x: torch.Tensor, idx: torch.Tensor, pre_all: torch.Tensor, pattern: Any) -> torch.Tensor: ...

    def decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor, pattern: Any) -> torch.Tensor: ...

    def selection_screen(self, x: torch.Tensor) -> Selection | None: ...

    def gather_pre_exact(self, x: torch.Tensor, idx: torch.Tensor, values: torch.Tensor, pattern: Any = None) -> torch.Tensor: ...


class ActivationSettings(Protocol):
    """The stored config an activation reads its parameters from (:class:`dualsae.models.sae.SAEConfig`)."""

    activation: str


class SAEOutput(NamedTuple):
    """What a training forward pass returns.

    codes:    sparse codes with autograd on ``values`` (``[batch, width]``)
    recon:    reconstruction x_hat, ``[batch, d]``
    pre_acts: full pre-activations ``[batch, m]`` *without* autograd (for AuxK's dead-latent pick);
              the bfloat16 screen's approximation when ``selection`` is set
    selection: the certified screen the selection came from (:mod:`dualsae.core.screened_topk`), so
              that AuxK selects exactly too; None: ``pre_acts`` is the float32 product itself
    """

    codes: SparseCodes
    recon: torch.Tensor
    pre_acts: torch.Tensor
    selection: Selection | None = None


class Activation:
    """Base of the activation configs (frozen dataclasses); see the module docstring."""

    #: The name in ``config.json`` (``SAEConfig.activation``) and on the command line.
    name: ClassVar[str]
    #: Whether the SAE's ``threshold`` buffer holds one value per latent ([m], JumpReLU) or one scalar (BatchTopK).
    per_latent_threshold: ClassVar[bool] = False

    @classmethod
    def from_sae_config(cls, config: ActivationSettings) -> "Activation":
        """The activation's parameters, read from the SAE config fields of the same names."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})  # type: ignore[arg-type]

    def validate(self, m: int | None) -> None:
        """Raise ConfigError when a parameter does not fit an SAE of ``m`` latents."""

    def forward(self, sae: SAEView, x: torch.Tensor) -> SAEOutput:
        """Training forward pass. x: [batch, d] -> SAEOutput."""
        raise NotImplementedError

    def encode(self, sae: SAEView, pre: torch.Tensor) -> SparseCodes:
        """Inference codes. pre: [batch, m] (no autograd) -> SparseCodes [batch, width]."""
        raise NotImplementedError

    def encode_screened(self, sae: SAEView, selection: Selection) -> SparseCodes | None:
        """The codes :meth:`encode` makes of the float32 pre-activations, chosen from the certified
        bfloat16 screen instead (:mod:`dualsae.core.screened_topk`); None: this activation has no
        screened inference and the float32 product runs."""
        return None

    def auxiliary_terms(self, sae: SAEView, x: torch.Tensor, out: SAEOutput, modalities: int) -> dict[str, LossTerm]:
        """Regulariser terms of this activation for a batch x: [modalities * B, d] of B pairs (per-pair sums)."""
        return {}


def aux_k_terms(sae: SAEView, x: torch.Tensor, out: SAEOutput, modalities: int) -> dict[str, LossTerm]:
    """AuxK (Gao et al. 2024) of the TopK family: ``aux_coef * sum_{mod} ||e - e_hat||^2``.

    :func:`~dualsae.core.losses.aux_k_loss` averages over the ``modalities * B`` rows; the weight's
    factor ``modalities`` makes it the per-pair sum. Empty when ``aux_coef`` is 0.
    """
    if sae.config.aux_coef <= 0:
        return {}
    aux = aux_k_loss(sae, x, x - out.recon, out.pre_acts, out.selection)
    return {"aux": LossTerm(aux, sae.config.aux_coef * modalities)}
