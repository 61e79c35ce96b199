"""The training methods, each a loss function in a table (paper Sec. 5, 6.1, 6.2; App. E).

A method's loss function gets one SAE's forward pass on one batch of B pairs (:class:`Forward`) and
returns named :class:`~dualsae.core.losses.LossTerm` s; the trainer adds them up (``weight *
value``) and logs each value under its name (``metrics.jsonl``). Every term is a mean over the B
pairs of a per-pair sum over the modalities M the SAE sees (eq. 4 per modality, the form of
Props. 3-4 and of Kaushik et al.):

    mse_<mod>: ||x - x_hat||^2 per modality                              reconstruction (eq. 4)
    aux:       aux_coef * sum_{mod in M} ||e - e_hat||^2                 AuxK (TopK / BatchTopK)
    l1:        l1_coef * sum_{mod in M} ||z||_1                          (ReLU)
    align:     group_sparse_lambda * gs_scale * sum_j sqrt(z_I,j^2 + z_T,j^2)   group-sparse (Prop. 3)
               2 d beta * L_align (cosine form) or beta * (-z_I . z_T) (dot, Prop. 4)   iso-energy

The activation supplies its own regulariser (``aux`` or ``l1``, :mod:`dualsae.models.activations`).

To add a method: one loss function below and one line in :data:`METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol

import torch

from dualsae.core.codes import SparseCodes
from dualsae.core.losses import (
    LossTerm,
    group_sparse_loss,
    iso_energy_alignment,
    iso_energy_dot,
    reconstruction_loss,
)
from dualsae.models.activations import SAEOutput
from dualsae.models.sae import SAE


class MethodSettings(Protocol):
    """The training settings a method's loss reads (:class:`dualsae.training.config.TrainConfig` is
    one; config.py reads the method names from this table, so this module does not import it)."""

    group_sparse_lambda: float
    iso_energy_form: str

    @property
    def beta_iso(self) -> float: ...


class Forward(NamedTuple):
    """One SAE's training forward pass on one batch of B pairs: what a method's loss reads.

    x: [len(modalities) * B, d], the modalities' rows stacked in ``modalities`` order; out: the
    SAE's output on x; gs_scale: the group-sparse lambda's measured scale (None: raw lambda).
    """

    sae: SAE
    x: torch.Tensor
    out: SAEOutput
    modalities: tuple[str, ...]
    pairs: int
    gs_scale: float | None = None

    def paired_codes(self) -> tuple[SparseCodes, SparseCodes]:
        """(z_I [B, width], z_T [B, width]): the image and the text codes of the B pairs."""
        codes, B = self.out.codes, self.pairs
        return SparseCodes(codes.values[:B], codes.indices[:B], self.sae.m), SparseCodes(codes.values[B:], codes.indices[B:], self.sae.m)


LossFunction = Callable[[Forward, MethodSettings], dict[str, LossTerm]]


@dataclass(frozen=True)
class Method:
    """A training method: its loss, and which SAEs it trains on which rows.

    shared: one SAE on the rows of both modalities (else one SAE per modality, ``latents // 2`` each).
    paired: its loss couples the image and the text code of a pair (needs paired rows).
    """

    loss: LossFunction
    shared: bool
    paired: bool


def reconstruction(f: Forward, config: MethodSettings) -> dict[str, LossTerm]:
    """eq. 4 per modality plus the activation's regulariser (AuxK or L1): the ``specific`` and ``shared`` loss."""
    B = f.pairs
    terms = {f"mse_{mod}": LossTerm(reconstruction_loss(f.x[i * B:(i + 1) * B], f.out.recon[i * B:(i + 1) * B]))
             for i, mod in enumerate(f.modalities)}
    terms.update(f.sae.activation.auxiliary_terms(f.sae, f.x, f.out, len(f.modalities)))
    return terms


def group_sparse(f: Forward, config: MethodSettings) -> dict[str, LossTerm]:
    """Reconstruction + lambda * scale * mean_i sum_j sqrt(z_I,ij^2 + z_T,ij^2) (Kaushik et al.; Prop. 3).

    ``scale`` is lambda-dagger, fixed before training (:mod:`dualsae.training.group_sparse_scale`),
    or 1 for a raw lambda.
    """
    terms = reconstruction(f, config)  # first: the order of the graph's nodes is the order of the gradient sums
    zi, zt = f.paired_codes()
    scale = 1.0 if f.gs_scale is None else f.gs_scale
    terms["align"] = LossTerm(group_sparse_loss(zi, zt, config.group_sparse_lambda, scale=scale))
    return terms


def iso_energy(f: Forward, config: MethodSettings) -> dict[str, LossTerm]:
    """Reconstruction + the Iso-Energy alignment (Dhimoila et al.).

    Cosine form: 2 d beta * L_align. The official code's beta weighs L_align against an MSE
    averaged over the concatenated [2B, d] image+text batch; our reconstruction is the per-pair sum
    (2 d times that MSE), so 2 d keeps their balance. Dot form (Prop. 4): beta * (-mean_i z_I,i . z_T,i).
    """
    terms = reconstruction(f, config)
    zi, zt = f.paired_codes()
    if config.iso_energy_form == "cosine":
        align = config.beta_iso * 2 * f.sae.d * iso_energy_alignment(zi, zt)
    else:
        align = config.beta_iso * iso_energy_dot(zi, zt)
    terms["align"] = LossTerm(align)
    return terms


#: Method name (``TrainConfig.method``, ``--method``) -> its loss and layout.
METHODS: dict[str, Method] = {
    "specific": Method(reconstruction, shared=False, paired=False),
    "shared": Method(reconstruction, shared=True, paired=False),
    "group-sparse": Method(group_sparse, shared=True, paired=True),
    "iso-energy": Method(iso_energy, shared=True, paired=True),
}

#: The methods whose loss couples the two codes of a pair.
PAIRED_METHODS = tuple(name for name, method in METHODS.items() if method.paired)


__all__ = ["Forward", "LossFunction", "METHODS", "Method", "PAIRED_METHODS", "group_sparse", "iso_energy", "reconstruction"]
