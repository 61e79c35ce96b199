"""The report's overview page data (``data/summary.js``): what the model is, its training curve
(``metrics.jsonl``), reconstruction on the train and the test rows side by side, the alignment /
collapse summary as ``dualsae align`` wrote it (live-latent counts included: never recounted on the
report's rows), Fig. 2, and the evaluation table of ``dualsae eval``'s metrics.json when one is found
(:mod:`dualsae.report.eval_section`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualsae.evaluation.heterogeneity import plot_heterogeneity
from dualsae.evaluation.metrics.reconstruction import reconstruction_metrics
from dualsae.evaluation.tasks import METRICS_FORMAT
from dualsae.files.jsonfiles import read_json_object
from dualsae.models.load import flat_train_config
from dualsae.report.compute import ReportData
from dualsae.report.eval_section import eval_section, split_reconstruction
from dualsae.report.options import CHUNK, ReportOptions, histogram, num, write_js
from dualsae.store.paired import PairedEmbeddings

REPORT_FORMAT = "dualsae.report/1"
CORR_HIST_EDGES = [round(-1.0 + 0.1 * i, 1) for i in range(21)]


@dataclass
class ReportJob:
    """What one report is of: the model folder, the store and its report rows, the test rows for
    the explained variance (None: skipped), and the labels shown for the data and split."""

    model: Path
    store: PairedEmbeddings
    rows: PairedEmbeddings
    test: PairedEmbeddings | None
    data_label: str = ""
    split_label: str = "all"
    train: PairedEmbeddings | None = None


def _read_jsonl(path: Path, limit: int = 100_000) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines()[:limit]:
            try:
                obj = json.loads(line)
            except ValueError:
                continue  # a line cut by an interrupted run: the curve is still worth showing
            if isinstance(obj, dict):
                rows.append(obj)
    return rows


def run_folder(model: Path, pair) -> Path | None:
    """The training run behind a model folder: itself, or the ``source_run`` an aligned or collapse folder records."""
    if (model / "metrics.jsonl").is_file() or (model / "config.json").is_file():
        return model
    src = (getattr(pair, "alignment", None) or {}).get("source_run")
    if src is None and (model / "collapse.json").is_file():
        try:
            src = json.loads((model / "collapse.json").read_text()).get("source_run")
        except (ValueError, AttributeError):
            src = None
    if isinstance(src, str):
        for cand in (Path(src), model.parent / Path(src).name):
            if cand.is_dir():
                return cand
    return None


def training_curve(run: Path | None, max_points: int = 400) -> dict | None:
    """Numeric series of ``metrics.jsonl`` against ``step``, thinned to at most ``max_points`` rows."""
    rows = _read_jsonl(run / "metrics.jsonl") if run is not None else []
    rows = [r for r in rows if isinstance(r.get("step"), (int, float))]
    if not rows:
        return None
    keep = rows[:: max(1, math.ceil(len(rows) / max_points))]
    if keep[-1] is not rows[-1]:
        keep.append(rows[-1])
    keys = [k for k in rows[0] if k != "step" and isinstance(rows[0][k], (int, float)) and not isinstance(rows[0][k], bool)]
    return {"step": [r["step"] for r in keep],
            "series": {k: [num(r[k], 6) if isinstance(r.get(k), (int, float)) else None for r in keep] for k in keys}}


def eval_doc(model: Path, eval_file: Path | None) -> dict | None:
    """``dualsae eval``'s metrics.json: ``eval_file``, else one in the model folder or its ``eval/``."""
    if eval_file is not None:
        return read_json_object(eval_file, "expected metrics.json written by 'dualsae eval'")
    for cand in (model / "metrics.json", model / "eval" / "metrics.json"):
        try:
            doc = json.loads(cand.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("format") == METRICS_FORMAT:
            return doc
    return None


def _count(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else "–" if v is None else str(v)


def alignment_card(alignment: dict) -> list[list[str]]:
    """[[label, text]] of alignment.json / collapse.json as ``dualsae align`` wrote it, formatted (no raw JSON)."""
    a, rows = alignment, []
    if a.get("rows") is not None:
        rows.append(["rows aligned on", f"{_count(a['rows'])} (split {a.get('split', '?')})"])
    live, dead = a.get("live") if isinstance(a.get("live"), dict) else {}, a.get("dead") if isinstance(a.get("dead"), dict) else {}
    for mod in ("image", "text"):
        if mod in live:
            m = a.get(f"m_{mod}")
            rows.append([f"live {mod} latents", f"{_count(live[mod])}" + (f" of {_count(m)}" if m else "")
                         + (f" (dead {_count(dead[mod])})" if mod in dead else "")])
    for k in ("either", "both"):
        if k in live:
            rows.append([f"live in {k} modality" if k == "either" else "live in both modalities", _count(live[k])])
    matched = a.get("matched_count", a.get("matched") if isinstance(a.get("matched"), int) else None)
    if matched is not None:
        rows.append(["matched pairs", _count(matched)])
    un = a.get("unmatched") if isinstance(a.get("unmatched"), dict) else {}
    if un:
        rows.append(["image-only / text-only", f"{len(un.get('image_only', [])):,} / {len(un.get('text_only', [])):,}"])
    if isinstance(a.get("mean_matched_correlation"), (int, float)):
        rows.append(["mean matched correlation", f"{a['mean_matched_correlation']:.4f}"])
    conf = a.get("confidence") if isinstance(a.get("confidence"), dict) else None
    if conf:
        if conf.get("above_null") is not None:
            rows.append(["above the permutation null", f"{_count(conf['above_null'])} (q{conf.get('quantile', 0.99):g}, {conf.get('shuffles')} shuffles)"])
        if conf.get("support_quartiles"):
            rows.append(["co-firing support q1 / median / q3", " / ".join(f"{v:,}" for v in conf["support_quartiles"])])
    if a.get("solver"):
        rows.append(["assignment solver", str(a["solver"])])
    for k, label in (("source_run", "source run"), ("data", "store")):
        if a.get(k):
            rows.append([label, str(a[k])])
    return rows


def _config(run: Path | None) -> dict | None:
    if run is None or not (run / "config.json").is_file():
        return None
    try:
        train = json.loads((run / "config.json").read_text()).get("train")
        return flat_train_config(train) if isinstance(train, dict) else train
    except ValueError:
        return None


def write_summary(tmp: Path, d: ReportData, job: ReportJob, probes: dict[int, dict], copier_copied: int,
                  opt: ReportOptions, captions: list[Any]) -> None:
    """``data/summary.js`` (and ``img/heterogeneity.png`` when Fig. 2 was computed)."""
    model, pair, rows, kind = job.model, d.pair, job.rows, d.kind
    st = d.stats
    run = run_folder(model, pair)
    ev, rec, rec_train = None, None, None
    if job.test is not None:
        rec = reconstruction_metrics(pair, job.test, batch_size=opt.batch_size, device=opt.device)
        ev = {mod: {k: num(rec[mod][k], 5) for k in ("explained_variance", "mse", "mean_l0", "live_latents", "n_rows")}
              for mod in ("image", "text") if mod in rec}
    if job.train is not None:
        rec_train = reconstruction_metrics(pair, job.train, batch_size=opt.batch_size, device=opt.device)
    if d.het_result is not None:
        (tmp / "img").mkdir(exist_ok=True)
        plot_heterogeneity(d.het_result, tmp / "img" / "heterogeneity.png", title=f"Heterogeneity (Fig. 2): {model.name}")
    matched_vals = d.corr[np.isfinite(d.corr)] if kind == "aligned" else (
        d.collapse["matched_correlation"] if d.collapse is not None else np.zeros(0))
    doc = eval_doc(model, opt.eval_file)
    alignment = d.alignment
    align_summary = None
    if alignment:
        align_summary = {k: alignment.get(k) for k in ("rows", "split", "solver", "matched_count", "mean_matched_correlation",
                                                         "live", "dead", "data", "source_run") if k in alignment}
    # Live / dead as align counted them (on its rows) when the folder records them; else on the report's rows.
    fired_live = {mod: int((st[mod].fired > 0).sum()) for mod in ("image", "text")}
    live_src = alignment if isinstance(alignment.get("live"), dict) else (d.collapse_doc or {})
    if all(isinstance(live_src.get("live", {}).get(mod), int) for mod in ("image", "text")):
        live = {mod: live_src["live"][mod] for mod in ("image", "text")}
        m_of = {mod: pair.sae_for(mod).m for mod in ("image", "text")}
        dead = {mod: m_of[mod] - live[mod] for mod in ("image", "text")}
        live_source = f"as dualsae align counted them on {live_src.get('rows', '?'):,} rows (split {live_src.get('split', '?')})" \
            if isinstance(live_src.get("rows"), int) else "as dualsae align counted them"
    else:
        live, dead = fired_live, {mod: int((st[mod].fired == 0).sum()) for mod in ("image", "text")}
        live_source = f"firing on the report's {rows.n:,} rows"
    summary = {
        "format": REPORT_FORMAT,
        "title": model.name,
        "kind": kind,
        "method": pair.method,
        "model": str(model),
        "data": job.data_label or str(rows.root),
        "split": job.split_label,
        "n_rows": rows.n,
        "m": d.m,
        "chunk": CHUNK,
        "k": {mod: pair.sae_for(mod).config.k for mod in ("image", "text")},
        "warnings": d.warnings,
        "config": _config(run),
        "alignment": align_summary,
        "alignment_card": alignment_card(alignment or d.collapse_doc or {}) if (alignment or d.collapse_doc) else None,
        "corr_source": d.corr_source,
        "support_source": d.support_source,
        "explained_variance": ev,
        "live": live,
        "dead": dead,
        "live_source": live_source,
        "live_on_rows": fired_live,
        "reconstruction_splits": split_reconstruction(rec_train, rec, opt.overfit_ratio),
        "corr_hist": {"edges": CORR_HIST_EDGES, "counts": histogram(np.asarray(matched_vals, dtype=np.float64), CORR_HIST_EDGES),
                      "what": "matched pairs" if kind != "specific" else ""},
        "modality_only": d.modality_only,
        "collapse": None if d.collapse is None else {k: v for k, v in d.collapse.items() if k != "matched_correlation"},
        "heterogeneity": d.heterogeneity,
        "heterogeneity_png": "img/heterogeneity.png" if d.het_result is not None else None,
        "heterogeneity_note": d.het_note,
        "curve": training_curve(run),
        "eval": eval_section(doc) if doc else None,
        "probes": sorted(probes),
        "thumbnails": copier_copied,
        "has_captions": any(isinstance(c, str) for c in captions),
    }
    write_js(tmp / "data" / "summary.js", "summary", summary)


__all__ = ["REPORT_FORMAT", "ReportJob", "alignment_card", "eval_doc", "run_folder", "training_curve", "write_summary"]
