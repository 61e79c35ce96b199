"""Activations of the SAE (sigma of eq. 3), one module each, and their registry.

To add one: a module with a frozen ``Activation`` dataclass (its parameters named as
:class:`~dualsae.models.sae.SAEConfig` fields) and one line in :data:`ACTIVATIONS`.
"""

from __future__ import annotations

from dualsae.models.activations.base import Activation, ActivationSettings, SAEOutput
from dualsae.models.activations.batchtopk import BatchTopK
from dualsae.models.activations.jumprelu import JumpReLU
from dualsae.models.activations.relu import ReLU
from dualsae.models.activations.topk import TopK

#: Name in ``config.json`` (``SAEConfig.activation``) -> activation class.
ACTIVATIONS: dict[str, type[Activation]] = {
    TopK.name: TopK,
    BatchTopK.name: BatchTopK,
    ReLU.name: ReLU,
    JumpReLU.name: JumpReLU,
}


def activation_for(config: ActivationSettings) -> Activation:
    """The typed activation of an SAE config (its name looked up in :data:`ACTIVATIONS`)."""
    return ACTIVATIONS[config.activation].from_sae_config(config)


__all__ = ["ACTIVATIONS", "Activation", "BatchTopK", "JumpReLU", "ReLU", "SAEOutput", "TopK", "activation_for"]
