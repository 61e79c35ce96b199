"""Input-scale normalisation: train on rows scaled to a reference norm, fold the factor into the saved SAE.

Why: AdamW's step is absolute in parameter space, and the biases ``b_dec`` / ``b_enc`` are in the
units of the data. At the default lr 5e-4 an SAE on embeddings scaled by 1e-4 moves its decoder bias
by several data norms per step (measured on 2,070 emoji pairs, TopK k=8, m=128 per SAE, 64 steps:
explained variance 0.22 unscaled, -0.40 at x1e-4, -9e7 at x1e-8; issue 20 measured 0.18 / -5,139 on
longer runs); at x1e4 the biases and the encoder barely move relative to the data. So, as SAELens'
``normalize_activations`` does, each SAE trains on ``c * x`` with one scalar ``c`` per SAE, and the
factor is folded into the weights when the run is saved, so the saved SAE works on raw inputs and no
reader changes.

The factor (``TrainConfig.input_scale``):

* ``auto`` (default): ``c = REFERENCE_NORM / median row norm`` of the rows the SAE trains on (a seeded
  sample of ``SAMPLE_ROWS`` rows per modality of the training split, the same sample that initialises
  ``b_dec``; pooled over both modalities for a shared SAE), and exactly ``c = 1`` (no scaling at all,
  so training is bit-identical to a run without this feature) while that median is within a factor
  ``TOLERANCE`` of the reference. The reference is 1, the norm of L2-normalised CLIP embeddings; the
  tolerance 8 keeps the App. E.2 generator's data at the reference too (median row norms 2.2 at the
  demo's d = 64, 5.2 at the paper's d = 256), so the committed synthetic results do not move.
* ``off``: ``c = 1``.
* a number: that factor.

The factor is a pure function of (config, training rows), so every torchrun rank computes the same
float; it is recorded in ``config.json`` (``data.input_scale``, ``{member: factor}``) and
``summary.json``, and a resumed run uses the recorded value (a run recorded before this field trained
unscaled and resumes so). Logged losses (``metrics.jsonl``) are those of the scaled rows.

Folding (:meth:`dualsae.models.sae.SAE.fold_input_scale`): with x' = c x, every map of eq. 3 is
positively homogeneous once ``b_enc``, ``b_dec`` (and BatchTopK's threshold) are divided by c, so the
folded SAE's codes and reconstruction on x are those of the trained SAE on c x divided by c; the
decoder columns keep unit norm and ``W_enc`` is unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from dualsae.core.errors import ConfigError
from dualsae.store.paired import PairedEmbeddings

#: The row norm ``auto`` scales to: that of L2-normalised (CLIP) embeddings.
REFERENCE_NORM = 1.0
#: ``auto`` leaves rows unscaled while their median norm is within this factor of the reference.
TOLERANCE = 8.0
#: Rows per modality whose median norm sets the factor (the sample that initialises b_dec).
SAMPLE_ROWS = 10_000


def parse_input_scale(value: str, field: str = "input_scale") -> float | None:
    """``auto`` -> None (measure); ``off`` -> 1.0; else the positive finite number it spells."""
    if value == "auto":
        return None
    if value == "off":
        return 1.0
    try:
        factor = float(value)
    except (TypeError, ValueError):
        factor = math.nan
    if not (math.isfinite(factor) and factor > 0):
        raise ConfigError(f"training field {field!r} must be 'auto', 'off' or a finite number > 0, found {value!r}")
    return factor


def auto_factor(median_norm: float) -> float:
    """The ``auto`` factor for rows of this median norm: 1.0 within ``TOLERANCE`` of the reference (or
    for a median of 0 / not finite, which other checks report), else reference / median."""
    if not (math.isfinite(median_norm) and median_norm > 0):
        return 1.0
    if REFERENCE_NORM / TOLERANCE <= median_norm <= REFERENCE_NORM * TOLERANCE:
        return 1.0
    return REFERENCE_NORM / median_norm


def median_row_norm(store: PairedEmbeddings, modalities: tuple[str, ...], seed: int) -> float:
    """Median L2 norm of a seeded sample of ``SAMPLE_ROWS`` training rows of each modality, pooled."""
    norms = [store.sample(m, SAMPLE_ROWS, seed=seed).double().norm(dim=1).numpy() for m in modalities]
    pooled = np.concatenate(norms) if norms else np.empty(0)
    return float(np.median(pooled)) if len(pooled) else math.nan


def input_scales(setting: str, seed: int, layout: list[tuple[str, tuple[str, ...]]], store: PairedEmbeddings) -> dict[str, float]:
    """{member name: factor} for the SAEs of ``layout`` ([(name, modalities)]) on ``store``'s training rows."""
    fixed = parse_input_scale(setting)
    if fixed is not None:
        return {name: fixed for name, _ in layout}
    return {name: auto_factor(median_row_norm(store, mods, seed)) for name, mods in layout}


__all__ = ["REFERENCE_NORM", "SAMPLE_ROWS", "TOLERANCE", "auto_factor", "input_scales", "median_row_norm", "parse_input_scale"]
