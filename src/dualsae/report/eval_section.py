"""The report's evaluation section: ``dualsae eval``'s table (:mod:`dualsae.evaluation.eval_table`, the
rows ``eval`` prints and writes as metrics.md: one row per task metric; columns this model, the raw
embeddings, a baseline) read from metrics.json as written, never recomputed; and the report's own
reconstruction on the train and the test split side by side with the over-fitting flag of
:mod:`dualsae.evaluation.generalization` (test MSE above ``overfit_ratio`` x train MSE).
"""

from __future__ import annotations

from dualsae.evaluation.eval_table import table_rows
from dualsae.evaluation.generalization import compare_splits
from dualsae.report.options import num


def _num(v: float | None) -> float | None:
    return num(v, 4) if v is not None else None


def eval_section(doc: dict) -> dict:
    """``{rows: [{task, metric, model, raw, baseline, higher_is_better, note}], skipped: {task: why},
    split, n_rows, model}`` of a metrics.json document; ``note`` names the baseline."""
    rows = [{"task": r.task, "metric": r.metric, "model": _num(r.model), "raw": _num(r.raw), "baseline": _num(r.baseline),
             "higher_is_better": r.higher_is_better, "note": f"baseline: {r.baseline_kind}" if r.baseline_kind else ""}
            for r in table_rows(doc)]
    skipped = doc.get("skipped") if isinstance(doc.get("skipped"), dict) else {}
    return {"rows": rows, "skipped": {str(k): str(v) for k, v in skipped.items()}, "split": doc.get("split"),
            "n_rows": doc.get("n_rows"), "model": doc.get("model")}


def split_reconstruction(train: dict | None, test: dict | None, overfit_ratio: float) -> dict | None:
    """``{overfit_ratio, modalities: {mod: {train, test, ratio, overfit}}}`` (rounded for the page) from two
    :func:`dualsae.evaluation.metrics.reconstruction.reconstruction_metrics` results; None when neither
    split was measured. A modality measured on one split only is shown without a ratio."""
    if train is None and test is None:
        return None
    both = compare_splits(train, test, overfit_ratio) if train is not None and test is not None else {}

    def pick(r: dict | None) -> dict | None:
        return None if r is None else {k: num(r[k], 5) for k in ("mse", "explained_variance", "n_rows")}

    out: dict = {"overfit_ratio": overfit_ratio, "modalities": {}}
    for mod in ("image", "text"):
        a, b = (train or {}).get(mod), (test or {}).get(mod)
        if a is None and b is None:
            continue
        r = both.get(mod)
        out["modalities"][mod] = {"train": pick(a), "test": pick(b), "ratio": num(r["ratio"], 3) if r else None,
                                  "overfit": bool(r and r["overfit"])}
    return out


__all__ = ["eval_section", "split_reconstruction"]
