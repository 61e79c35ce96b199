"""Reconstruction on the training rows beside the held-out rows, and an over-fitting flag (``dualsae
train`` and ``dualsae info`` print both; issue 19 point 6).

Per modality: the eq. 4 MSE and the explained variance of :func:`reconstruction_metrics` on each
split, and ``ratio = test MSE / train MSE``. A model that generalises has a ratio near 1 when train
and test rows come from one distribution; the run is flagged *over-fitting* when
``ratio > OVERFIT_RATIO`` (default 1.25: test error a quarter above training error). Measured on
emoji (6,675 train / 1,605 test rows; its joint space was itself fitted on the train split, so even
a model that cannot memorise shows a gap): a rank-32 PCA fitted on the train rows has ratios 1.085
(image) / 1.09 (text); a 512 + 512-latent specific pair (k = 32) after 10 epochs 1.25 / 1.30 (the
text SAE is flagged); the shared run of issue 19 (train 0.128, test 0.200) 1.56.

``max_rows`` caps the rows measured per split (an evenly spaced subset, deterministic), so that the
check after a long training costs seconds on a large store.
"""

from __future__ import annotations

import numpy as np

from dualsae.core.modalities import MODALITIES
from dualsae.evaluation.metrics.reconstruction import reconstruction_metrics
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings

#: test MSE / train MSE above which a model is flagged as over-fitting.
OVERFIT_RATIO = 1.25


def _capped(view: PairedEmbeddings, max_rows: int | None) -> PairedEmbeddings:
    if max_rows is None or view.n <= max_rows:
        return view
    return view.subset(np.linspace(0, view.n - 1, max_rows).round().astype(np.int64))


def compare_splits(tr: dict, te: dict, overfit_ratio: float = OVERFIT_RATIO) -> dict:
    """The side-by-side result of two :func:`reconstruction_metrics` results (train ``tr``, test ``te``):
    {modality: {"train", "test", "ratio": test/train MSE, "overfit"}} for the modalities both hold, plus
    "overfit_ratio" (the threshold) and "overfit" (any modality)."""
    out: dict = {"overfit_ratio": overfit_ratio}
    for mod in MODALITIES:
        if mod in tr and mod in te:
            a, b = te[mod]["mse"], tr[mod]["mse"]
            ratio = a / b if b > 0 else (1.0 if a == 0 else float("inf"))  # both exact: no gap
            out[mod] = {"train": tr[mod], "test": te[mod], "ratio": ratio, "overfit": bool(ratio > overfit_ratio)}
    out["overfit"] = any(out[m]["overfit"] for m in MODALITIES if m in out)
    return out


def train_test_reconstruction(pair: SAEPair, train: PairedEmbeddings, test: PairedEmbeddings, *,
                              max_rows: int | None = None, overfit_ratio: float = OVERFIT_RATIO,
                              batch_size: int = 4096, device: str = "cpu") -> dict:
    """:func:`compare_splits` of the reconstruction on ``train`` and on ``test`` (each capped at ``max_rows``)."""
    tr = reconstruction_metrics(pair, _capped(train, max_rows), batch_size=batch_size, device=device)
    te = reconstruction_metrics(pair, _capped(test, max_rows), batch_size=batch_size, device=device)
    return compare_splits(tr, te, overfit_ratio)


def generalization_lines(result: dict, indent: str = "  ") -> list[str]:
    """Train and test reconstruction side by side, one line per modality, the flag at the end."""
    lines = []
    for mod in MODALITIES:
        if mod not in result:
            continue
        r = result[mod]
        tr, te = r["train"], r["test"]
        flag = f"  OVER-FITTING (test/train MSE > {result['overfit_ratio']:g})" if r["overfit"] else ""
        lines.append(f"{indent}{mod:5s} MSE train {tr['mse']:.5f} ({tr['n_rows']:,} rows)  test {te['mse']:.5f} ({te['n_rows']:,} rows)  "
                     f"test/train {r['ratio']:.2f}   explained variance train {tr['explained_variance']:.4f}  "
                     f"test {te['explained_variance']:.4f}{flag}")
    return lines


__all__ = ["OVERFIT_RATIO", "compare_splits", "generalization_lines", "train_test_reconstruction"]
