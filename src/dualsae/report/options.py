"""What ``dualsae report`` is asked for (:class:`ReportOptions`) and the helpers that write its data
as JavaScript files (``window.DUALSAE``) with rounded, JSON-safe numbers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Latents per page-data file ``data/chunk-NNNN.js``.
CHUNK = 256


@dataclass
class ReportOptions:
    """top: rows per latent and modality shown as thumbnails; captions: rows whose captions are collapsed
    (with counts) per latent and modality; nearest: nearest latents by decoder cosine; probe_latents:
    how many latents get translation/steering (those of highest support-aware score) unless ``probe`` names them;
    alpha: steering strength relative to the mean image embedding norm; max_correlation_bytes: the
    largest [m, m] float64 correlation the report computes itself (for Fig. 2 / the collapse rate);
    search_words / search_latents: the most frequent caption words indexed, and latents kept per word;
    score_z / low_support: the support-aware score's interval width and the low-support flag's cut
    (:mod:`dualsae.report.ranking`); label_words / label_z / label_prior: caption-word labels
    (:mod:`dualsae.evaluation.caption_labels`); interval_bins / interval_per_bin: quantile bins of a
    latent's activations and rows shown per bin (:mod:`dualsae.evaluation.interval_samples`);
    overfit_ratio: test MSE / train MSE above which the overview flags over-fitting;
    counterparts: each latent's counterpart in another SAE (``--compare``), or None."""

    top: int = 12
    captions: int = 40
    nearest: int = 8
    probe_latents: int = 6
    probe: tuple[int, ...] = ()
    alpha: float = 1.0
    caption_field: str = "caption"
    images: Path | None = None
    eval_file: Path | None = None
    batch_size: int = 4096
    device: str = "cpu"
    progress: bool = False
    max_correlation_bytes: int = 2_200_000_000
    search_words: int = 50_000
    search_latents: int = 30
    score_z: float = 1.96
    low_support: int = 5
    label_words: int = 3
    label_z: float = 1.96
    label_prior: float = 100.0
    interval_bins: int = 5
    interval_per_bin: int = 3
    overfit_ratio: float = 1.25
    counterparts: Any = None  # dualsae.report.counterparts.Counterparts of --compare (a column of the table)
    extra: dict = field(default_factory=dict)


def js_text(obj: Any) -> str:
    """``obj`` as compact JSON that is also a safe JS expression (NaN/inf refused; U+2028/2029 escaped:
    legal in JSON, they ended JS string literals before ES2019)."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def write_js(path: Path, name: str, obj: Any) -> None:
    """Write ``obj`` as ``DUALSAE.<name> = {...};``."""
    path.write_text(f"window.DUALSAE=window.DUALSAE||{{}};DUALSAE.{name}={js_text(obj)};\n", encoding="utf-8")


def num(x: Any, digits: int = 4) -> float | None:
    """``x`` rounded to ``digits``; None for NaN / inf (JSON has neither)."""
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def column(a: np.ndarray, digits: int = 4) -> list:
    """[n] numbers -> list of :func:`num`."""
    return [num(v, digits) for v in np.asarray(a, dtype=np.float64)]


def histogram(values: np.ndarray, edges: list[float]) -> list[int]:
    """Counts of the finite ``values`` (clipped into the edges' range) per bin."""
    v = values[np.isfinite(values)]
    return np.histogram(np.clip(v, edges[0], edges[-1]), bins=edges)[0].tolist()


__all__ = ["CHUNK", "ReportOptions", "column", "histogram", "js_text", "num", "write_js"]
