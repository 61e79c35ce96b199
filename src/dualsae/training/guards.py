"""Numeric guards of training: input scale and outlier rows before, finite loss and weights during.

A finite but huge input (1e30 in one cell) squares to inf in float32; the step after, every weight
is NaN, and a run that does not look would save an all-NaN model and exit 0. So

* before training, :func:`row_norm_check` refuses rows whose norm is more than ``OUTLIER_FACTOR``
  times the median row norm of the training rows (``--allow-outliers`` skips it) and, with
  ``--input-scale off``, warns once when the median norm is far from 1 (the AdamW step is absolute,
  so an SAE on inputs scaled by 1e-4 barely moves (issue 9 measured explained variance 0.02 on text
  embeddings x 1e-4)); the default ``auto`` rescales such rows instead
  (:mod:`dualsae.training.input_scale`);
* during training, :func:`check_loss` stops at the first non-finite loss and :func:`check_weights`
  before every checkpoint and the final save, so the last checkpoint on disk is always a good one.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import torch

from dualsae.core.errors import DataError, DualSAEError
from dualsae.store.paired import PairedEmbeddings

#: A row whose norm is this many times the median row norm is refused as an outlier.
OUTLIER_FACTOR = 1000.0
#: Median row norms outside this range get a warning about the absolute step size.
NORM_RANGE = (1e-2, 1e2)

_CAUSE = ("likely cause: input values too large for float32 (rows with a huge norm; 'dualsae train' refuses rows over "
          f"{OUTLIER_FACTOR:g}x the median norm unless --allow-outliers) or a learning rate too high for this data (--lr)")


class TrainingDiverged(DualSAEError):
    """The loss or a weight became NaN or inf."""


def row_norms(view: PairedEmbeddings, modality: str, batch_size: int = 65_536) -> np.ndarray:
    """[n] L2 norms of the rows of one modality (streamed: the store may be larger than memory)."""
    return np.concatenate([b.double().norm(dim=1).numpy() for b in view.iter_rows(modality, batch_size)])


def row_norm_check(view: PairedEmbeddings, allow_outliers: bool = False, input_scale: str = "off") -> list[str]:
    """Refuse outlier rows (unless ``allow_outliers``); return warnings about the input scale (only when
    ``input_scale`` is ``off``: ``auto`` and a given factor rescale the rows, ``TrainConfig.input_scale``)."""
    warnings = []
    where = view.root if view.root is not None else "the store"
    for mod in ("image", "text"):
        if not view.has(mod) or view.n == 0:
            continue
        norms = row_norms(view, mod)
        median = float(np.median(norms))
        if not allow_outliers and median > 0:
            bad = np.flatnonzero(norms > OUTLIER_FACTOR * median)
            if len(bad):
                row = int(view.rows_of(bad[:1])[0])
                raise DataError(f"{where}/{mod}.npy: row {row:,} has norm {norms[bad[0]]:.4g}, {norms[bad[0]] / median:.3g}x the "
                                f"median row norm {median:.4g} ({len(bad):,} such row(s)); fix the store or pass --allow-outliers")
        lo, hi = NORM_RANGE
        if input_scale == "off" and not lo <= median <= hi:
            warnings.append(f"warning: {where}/{mod}.npy: median row norm is {median:.3g}; the optimizer step size is absolute, "
                            f"so training far from norm 1 is slow or unstable; drop --input-scale off, rescale the embeddings "
                            f"(e.g. L2-normalise) or adjust --lr")
    return warnings


def check_loss(step: int, logs: dict[str, float], last_checkpoint: Callable[[], str]) -> None:
    """Raise naming ``step`` when the step's loss is not finite. ``last_checkpoint``: where the last
    good state is (called only to build the message)."""
    bad = {k: v for k, v in logs.items() if (k == "loss" or k.startswith(("loss_", "mse_"))) and not math.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
        raise TrainingDiverged(f"training stopped at step {step}: the loss is not finite ({shown}); {_CAUSE}; {last_checkpoint()}")


def check_weights(step: int, named_saes: Iterable[tuple[str, torch.nn.Module]], last_checkpoint: Callable[[], str]) -> None:
    """Raise naming ``step`` and the tensor when any weight is NaN or inf (checked before saving)."""
    for name, sae in named_saes:
        for key, p in sae.state_dict().items():
            if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                raise TrainingDiverged(f"training stopped at step {step}: weight '{name}.{key}' is not finite; {_CAUSE}; {last_checkpoint()}")


def non_finite_tensors(sae: torch.nn.Module) -> list[str]:
    """Names of the SAE's floating-point tensors holding NaN or inf (``dualsae info`` flags them)."""
    return [k for k, p in sae.state_dict().items() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
