"""What the report shows, computed once from a model and the report's rows (:func:`compute`):
codes and per-latent statistics of both modalities, the per-latent correlation and support (from
alignment.json when the model is aligned, else measured on these rows), the match status of every
latent, and Fig. 2 (heterogeneity) with, for a shared SAE, the App. F.2 collapse rate.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dualsae.alignment.coactivation import stats_from_codes
from dualsae.alignment.correlation import CoactivationStats
from dualsae.alignment.post_hoc import align
from dualsae.core.codes import SparseCodes
from dualsae.evaluation.heterogeneity import (
    Heterogeneity,
    heterogeneity,
    heterogeneity_from_folder,
)
from dualsae.evaluation.interval_samples import IntervalSamples, interval_samples
from dualsae.models.aligned import AlignedPair
from dualsae.models.encoding import encode_rows
from dualsae.models.pair import SAEPair
from dualsae.report import latents as L
from dualsae.report.options import ReportOptions
from dualsae.report.ranking import match_flags, support_score
from dualsae.store.paired import PairedEmbeddings


@dataclass
class ReportData:
    """Everything the site's files are written from. Arrays are [m] over the shared latent index.

    kind: aligned | shared | specific; codes / stats: per modality (SparseCodes [N, width] of the
    report rows, :class:`dualsae.report.latents.LatentStats`); corr: the column shown (matched
    c_ij for an aligned pair, else the same-index correlation ``same_corr``); support: co-firing rows;
    null_thr: permutation-null threshold (NaN when not recorded); cos: image/text decoder cosine;
    status: matched / unmatched / image only / text only / both / dead; collapse: App. F.2 summary
    (shared SAE); heterogeneity / het_result / het_note: Fig. 2 as JSON, the result to plot, why
    it is missing; score / flags: the table's support-aware score and flags (:mod:`dualsae.report.ranking`);
    intervals: per modality, rows from each quantile bin of the activations
    (:mod:`dualsae.evaluation.interval_samples`).
    """

    pair: SAEPair
    kind: str
    codes: dict[str, SparseCodes]
    stats: dict[str, L.LatentStats]
    support: np.ndarray
    corr: np.ndarray
    same_corr: np.ndarray
    null_thr: np.ndarray
    cos: np.ndarray
    status: np.ndarray
    alignment: dict
    modality_only: dict | None = None
    corr_source: str = ""
    support_source: str = ""
    collapse: dict | None = None
    collapse_doc: dict | None = None
    heterogeneity: dict | None = None
    het_result: Heterogeneity | None = None
    het_note: str = ""
    warnings: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    score: np.ndarray | None = None
    flags: list[str] = field(default_factory=list)
    intervals: dict[str, IntervalSamples] = field(default_factory=dict)

    @property
    def m(self) -> int:
        return self.pair.m


def model_kind(pair: SAEPair) -> str:
    """aligned | shared | specific."""
    if isinstance(pair, AlignedPair):
        return "aligned"
    return "shared" if pair.shared else "specific"


def compute(model: Path, pair: SAEPair, rows: PairedEmbeddings, opt: ReportOptions) -> ReportData:
    """Encode ``rows`` once per modality and compute the report's numbers (module docstring)."""
    t0 = time.perf_counter()
    kind = model_kind(pair)
    m = pair.m
    warnings: list[str] = []
    if kind == "specific":
        warnings.append("This is a specific pair before alignment: image latent j and text latent j are unrelated "
                        "until 'dualsae align' matches them; the side-by-side columns show two different features.")
    codes = {mod: encode_rows(pair, rows, mod, batch_size=opt.batch_size, device=opt.device, progress=opt.progress)
             for mod in ("image", "text")}
    st = {mod: L.latent_stats(codes[mod], max(opt.top, opt.captions)) for mod in codes}
    support, same_corr = stats_from_codes(codes["image"], codes["text"], same_index=True).same_index_correlation()
    data = ReportData(pair, kind, codes, st, support, same_corr, same_corr, np.full(m, np.nan), L.decoder_cosines(pair),
                      np.array(["dead"] * m, dtype=object), getattr(pair, "alignment", None) or {}, warnings=warnings,
                      corr_source="same-index correlation on these rows", support_source="co-firing rows of these rows")
    data.timing["encode_s"] = time.perf_counter() - t0
    _matches(data)
    live = (st["image"].fired > 0) | (st["text"].fired > 0)
    data.score = support_score(data.corr, data.support, z=opt.score_z)
    data.flags = match_flags(data.corr, data.support, data.null_thr, live, low_support=opt.low_support)
    data.intervals = {mod: interval_samples(codes[mod], bins=opt.interval_bins, per_bin=opt.interval_per_bin) for mod in codes}
    t1 = time.perf_counter()
    _figure2(data, model, rows, opt)
    data.timing["correlation_s"] = time.perf_counter() - t1
    return data


def _matches(d: ReportData) -> None:
    """Status of every latent, and for an aligned pair the matched c_ij and confidence of alignment.json."""
    live_i, live_t = d.stats["image"].fired > 0, d.stats["text"].fired > 0
    d.status[live_i & live_t] = "both"
    d.status[live_i & ~live_t] = "image only"
    d.status[~live_i & live_t] = "text only"
    if d.kind != "aligned":
        return
    matched_corr = d.corr = np.full(d.m, np.nan)  # the column shown for an aligned pair: matched c_ij only
    if "matched" not in d.alignment:
        return
    alignment, mt = d.alignment, d.alignment["matched"]
    idx = np.asarray(mt["image"], dtype=np.int64)
    matched_corr[idx] = np.asarray(mt["correlation"], dtype=np.float64)
    d.status[:] = "unmatched"
    d.status[idx] = "matched"
    un = alignment.get("unmatched", {})
    image_only, text_only = un.get("image_only", []), un.get("text_only_shared", [])
    d.status[np.asarray(image_only, dtype=np.int64)] = "image only"
    d.status[np.asarray(text_only, dtype=np.int64)] = "text only"
    d.modality_only = {"image": list(image_only), "text": list(text_only)}
    d.corr_source = f"matched correlation c_ij from alignment.json ({alignment.get('rows', '?')} rows, split {alignment.get('split', '?')})"
    # Match confidence, when the alignment recorded it (per match, parallel to matched.image).
    if isinstance(mt.get("support"), list) and len(mt["support"]) == len(idx):
        d.support = d.support.copy()
        d.support[idx] = np.asarray(mt["support"], dtype=np.int64)
        d.support_source = "co-firing support from alignment.json"
    if isinstance(mt.get("null_threshold"), list) and len(mt["null_threshold"]) == len(idx):
        d.null_thr[idx] = np.asarray([np.nan if v is None else v for v in mt["null_threshold"]], dtype=np.float64)


def _figure2(d: ReportData, model: Path, rows: PairedEmbeddings, opt: ReportOptions) -> None:
    """Fig. 2 (heterogeneity) and, for a shared SAE, the App. F.2 collapse rate: from the folder's
    correlation.safetensors / collapse.json, else from C computed on the report's codes (sparse statistics
    above ``max_correlation_bytes`` of dense ones)."""
    pair, kind = d.pair, d.kind
    stats: CoactivationStats | None = None
    need_c = kind != "aligned" or not (model / "correlation.safetensors").is_file()
    if need_c:  # above the dense limit the co-firing pairs only (sparse statistics), never an [m_I, m_T] array
        big = pair.sae_for("image").m * pair.sae_for("text").m * 8
        stats = stats_from_codes(d.codes["image"], d.codes["text"], sparse=big > opt.max_correlation_bytes)
    if kind == "shared":
        d.collapse = _collapse(model, pair, stats, rows)
        if (model / "collapse.json").is_file():
            d.collapse_doc = json.loads((model / "collapse.json").read_text())
        elif d.collapse is not None:
            d.warnings.append(f"Collapse rate counted on the report's {rows.n:,} rows: no collapse.json of 'dualsae align' in {model}. "
                              "Run 'dualsae align RUN --out FOLDER' and report FOLDER to show align's numbers.")
    if not need_c:
        result, source = heterogeneity_from_folder(model, None, progress=False)
    else:
        c, li, lt = (stats.sparse_correlation(), None, None) if stats.sparse else stats.correlation()
        matched = None
        if kind == "aligned":
            shared_idx = np.flatnonzero(~np.isnan(d.corr))
            matched = (shared_idx, shared_idx)
        result = heterogeneity(pair.decoder_columns("image").cpu(), pair.decoder_columns("text").cpu(), c, li, lt, matched=matched)
        source = f"C computed on the {rows.n:,} report rows"
    d.heterogeneity = {**result.to_json(), "source": source}
    d.het_result = result


def _collapse(model: Path, pair: SAEPair, stats: CoactivationStats | None, rows: PairedEmbeddings) -> dict[str, Any] | None:
    """The App. F.2 summary of a shared SAE: the collapse.json that ``dualsae align`` wrote (in the
    folder the report was given: align's output folder, or the run folder), else computed from ``stats``
    on the report's rows (labelled so: those are not align's rows)."""
    path = model / "collapse.json"
    if path.is_file():
        collapse = json.loads(path.read_text())
        collapse["source"] = str(path)
    elif stats is not None:
        collapse = align(pair, stats=stats, progress=False).report
        collapse["source"] = f"computed on the {rows.n:,} report rows"
    else:
        return None
    mcorr = np.asarray(collapse.get("matching", {}).get("correlation", []), dtype=np.float64)
    collapse = {k: collapse.get(k) for k in ("collapse_rate", "collapse_rate_of_matched", "collapsed", "matched",
                                              "live", "mean_matched_correlation", "source", "rows")}
    collapse["matched_correlation"] = mcorr
    return collapse


__all__ = ["ReportData", "compute", "model_kind"]
