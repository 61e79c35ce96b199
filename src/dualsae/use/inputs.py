"""Argument checks shared by the functions of :mod:`dualsae.use`: embeddings as a ``[batch, d]``
tensor, a modality name, and the refusal of cross-modal use of an unaligned pair."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dualsae.core.errors import ConfigError, DataError
from dualsae.core.modalities import MODALITIES


def as_embeddings(x: Any, d: int, what: str = "x") -> torch.Tensor:
    """x: [batch, d] or [d] array / tensor -> float32 tensor [batch, d] (error naming ``what`` otherwise)."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2 or t.shape[1] != d:
        raise DataError(f"{what} must be [batch, {d}] embeddings, found shape {list(t.shape)}")
    return t


def check_modality(modality: str, flag: str = "modality") -> None:
    """``modality`` must be image or text (error naming ``flag``)."""
    if modality not in MODALITIES:
        raise ConfigError(f"{flag} must be one of {', '.join(MODALITIES)}, found {modality!r}")


def require_shared_index(pair) -> None:
    """Refuse cross-modal use of an unaligned modality-specific pair (indices unrelated)."""
    if pair.method == "specific":
        raise ConfigError("this is an unaligned modality-specific pair: latent j of the image SAE and latent j "
                          "of the text SAE are unrelated; run 'dualsae align' first and use the aligned folder")


__all__ = ["as_embeddings", "check_modality", "require_shared_index"]
