"""Steering an embedding along one latent's decoder direction, and how far its neighbours move
toward that latent's concept (DESIGN "Use it"; the step of paper Sec. 6.2's steering metric).

The step (:func:`steer`): ``x' = x + alpha * s * w_j`` with ``w_j = phi_j / ||phi_j||`` the unit
decoder direction of latent j (shared index) in the steered modality. Two choices of the scale s:

* ``scale=None``: each row's own norm ``||x||``, so the function needs no data set and alpha = 1
  adds a vector as long as the embedding itself (``dualsae steer``);
* ``scale=s``: one given number, in the Sec. 6.2 metric and the report the mean L2 norm of the
  test image embeddings, so alpha is relative to the typical embedding norm.

``normalize=True`` returns ``x' / ||x'||`` (the metric and the report rank by cosine and keep unit
vectors); on unit-norm embeddings (CLIP) both scales give the same direction.

The measurement (:func:`concept_share`): the share of a steered source's nearest neighbours on
which latent j fires. ``dualsae steer`` prints it per source ("concept share") and the report shows
it per latent ("hit rate"); both call this function on the rows where :func:`latent_fires` is True.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from dualsae.core.codes import SparseCodes
from dualsae.core.errors import ConfigError
from dualsae.use.inputs import as_embeddings, check_modality


@torch.no_grad()
def steering_direction(pair, latent: int, modality: str = "image", device: str | torch.device | None = None) -> torch.Tensor:
    """Unit decoder direction of ``latent`` (shared index) in ``modality``: [d] float32, on ``device``
    (default: the decoder's). The column is moved before it is normalised."""
    check_modality(modality)
    cols = pair.decoder_columns(modality)
    if not 0 <= latent < cols.shape[0]:
        raise ConfigError(f"latent must be in [0, {cols.shape[0]}) for the {modality} SAE, found {latent}")
    col = cols[latent].float()
    return F.normalize(col if device is None else col.to(device), dim=0)


@torch.no_grad()
def steer_along(x: torch.Tensor, w: torch.Tensor, alpha: float, scale: float | None = None,
                normalize: bool = False) -> torch.Tensor:
    """``x + alpha * s * w`` for x: [batch, d] and a unit direction w: [d] -> [batch, d].

    s = ``scale`` when given, else each row's norm ``||x||``; ``normalize``: rows scaled to unit norm."""
    if scale is None:
        out = x + float(alpha) * x.norm(dim=1, keepdim=True) * w
    else:
        out = x + float(alpha) * float(scale) * w
    return F.normalize(out, dim=1) if normalize else out


@torch.no_grad()
def steer(pair, x: Any, latent: int, alpha: float, modality: str = "image", *, scale: float | None = None,
          normalize: bool = False) -> torch.Tensor:
    """Steer ``x`` along the unit ``modality`` decoder direction of ``latent`` (module docstring).

    x: [batch, d] (or [d]) embeddings -> [batch, d] on x's device (a numpy array: the CPU).
    scale: None = each row's norm (alpha relative to the row), else that number (e.g. the mean
    embedding norm, Sec. 6.2); normalize: return unit rows.
    """
    check_modality(modality)
    t = as_embeddings(x, pair.sae_for(modality).d)
    w = steering_direction(pair, latent, modality, device=t.device)
    return steer_along(t, w, alpha, scale, normalize)


def latent_fires(codes: SparseCodes, latent: int) -> np.ndarray:
    """[N] bool: rows of ``codes`` ([N, width], on the CPU) on which ``latent`` is active (value != 0)."""
    return ((codes.indices == latent) & (codes.values != 0)).any(1).numpy()


class ConceptShare(NamedTuple):
    """hits: [b, n] bool, neighbour on which the latent fires; per_source: [b] float64, share per
    source; overall: share of all b * n neighbours (equal to the mean of ``per_source`` when every
    source has n neighbours, up to rounding)."""

    hits: np.ndarray
    per_source: np.ndarray
    overall: float


def concept_share(neighbours: np.ndarray, fires: np.ndarray) -> ConceptShare:
    """How many of each source's neighbours hold the concept.

    neighbours: [b, n] integer ids of the nearest rows of each source; fires: bool array indexed by
    those ids (True where the latent fires, :func:`latent_fires`)."""
    hits = np.asarray(fires, dtype=bool)[np.asarray(neighbours, dtype=np.int64)]
    return ConceptShare(hits, hits.mean(1), float(hits.mean()))


__all__ = ["ConceptShare", "concept_share", "latent_fires", "steer", "steer_along", "steering_direction"]
