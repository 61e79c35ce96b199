"""The report's evaluation table, read from ``dualsae eval``'s metrics.json as written (never recomputed),
laid out as a reader of the paper's Table 1 expects: one row per task and metric, three columns.

* **this model**: the metric of the SAE codes / reconstructions;
* **raw embeddings**: the same protocol on the embeddings themselves where ``eval`` measures it
  (retrieval and zero-shot ``embedding_reference``; for steering the *unsteered* images' mAP / MRR);
* **baseline**: what a model that knows nothing reaches: reconstruction by the mean (MSE = the rows'
  total variance, mse / (1 - explained variance); explained variance 0), retrieval by chance
  (R@K = K / gallery size, one positive per query), zero-shot top-1 by the majority class and
  mean-per-class accuracy by chance (1 / classes).

Rows whose task was not run are absent; skipped tasks are listed with their reason. Plus the report's own
reconstruction on the train and the test split side by side, with an over-fitting flag when the test MSE
exceeds the train MSE by more than ``overfit_ratio`` (a project choice, default 1.25).
"""

from __future__ import annotations

from typing import Any

from dualsae.report.options import num


def _get(doc: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(doc, dict) or p not in doc:
            return None
        doc = doc[p]
    return doc if isinstance(doc, (int, float)) and not isinstance(doc, bool) else None


def _row(task: str, metric: str, model: Any, raw: Any = None, baseline: Any = None, higher: bool = True, note: str = "") -> dict:
    return {"task": task, "metric": metric, "model": num(model, 4) if model is not None else None,
            "raw": num(raw, 4) if raw is not None else None, "baseline": num(baseline, 4) if baseline is not None else None,
            "higher_is_better": higher, "note": note}


def _recon_rows(r: dict) -> list[dict]:
    out = []
    for mod in ("image", "text"):
        mse, ev = _get(r, mod, "mse"), _get(r, mod, "explained_variance")
        if mse is None:
            continue
        var = mse / (1.0 - ev) if ev is not None and ev < 1 else None
        out.append(_row("reconstruction", f"MSE {mod} (eq. 4)", mse, None, var, higher=False, note="baseline: the mean embedding"))
        out.append(_row("reconstruction", f"explained variance {mod}", ev, None, 0.0 if ev is not None else None))
    return out


def _retrieval_rows(r: dict) -> list[dict]:
    out = []
    for key, name, gallery in (("image_to_text", "image → text", "n_texts"), ("text_to_image", "text → image", "n_images")):
        g = _get(r, gallery)
        for k in (1, 5, 10):
            v = _get(r, key, f"R@{k}")
            if v is not None:
                out.append(_row("retrieval", f"{name} R@{k}", v, _get(r, "embedding_reference", key, f"R@{k}"),
                                min(1.0, k / g) if g else None, note="baseline: chance, one positive per query"))
    return out


def _zeroshot_rows(r: dict) -> list[dict]:
    out = []
    n_classes = _get(r, "n_classes")
    if _get(r, "top1") is not None:
        out.append(_row("zero-shot", "top-1", r["top1"], _get(r, "embedding_reference", "top1"), _get(r, "majority_baseline"),
                        note="baseline: always the majority class"))
    if _get(r, "mean_per_class") is not None:
        out.append(_row("zero-shot", "mean per class", r["mean_per_class"], _get(r, "embedding_reference", "mean_per_class"),
                        1.0 / n_classes if n_classes else None, note="baseline: chance, 1 / classes"))
    return out


def _steering_rows(r: dict) -> list[dict]:
    alpha = _get(r, "alpha")
    note = "raw: the images before steering" + (f"; alpha {alpha:g}" if alpha is not None else "")
    return [_row("steering", name, _get(r, key), _get(r, f"{key}_unsteered"), note=note)
            for key, name in (("map", "mAP"), ("mrr", "MRR")) if _get(r, key) is not None]


def _ms_rows(r: dict) -> list[dict]:
    return [_row("monosemanticity", f"MS {mod} (mean over latents)", _get(r, mod, "mean"))
            for mod in ("image", "text") if _get(r, mod, "mean") is not None]


ROWS = {"recon": _recon_rows, "retrieval": _retrieval_rows, "zeroshot": _zeroshot_rows, "steering": _steering_rows,
        "monosemanticity": _ms_rows}


def eval_table(doc: dict) -> dict:
    """``{rows: [{task, metric, model, raw, baseline, higher_is_better, note}], skipped: {task: why},
    split, n_rows}`` of a metrics.json document."""
    tasks = doc.get("tasks", {}) if isinstance(doc.get("tasks"), dict) else {}
    rows = [row for name, fn in ROWS.items() if isinstance(tasks.get(name), dict) for row in fn(tasks[name])]
    skipped = doc.get("skipped") if isinstance(doc.get("skipped"), dict) else {}
    return {"rows": rows, "skipped": {str(k): str(v) for k, v in skipped.items()}, "split": doc.get("split"),
            "n_rows": doc.get("n_rows"), "model": doc.get("model")}


def train_test_reconstruction(train: dict | None, test: dict | None, overfit_ratio: float = 1.25) -> dict | None:
    """Per modality ``{train: {mse, explained_variance}, test: {...}, ratio, overfit}`` from two
    :func:`dualsae.evaluation.metrics.reconstruction.reconstruction_metrics` results (None: not measured)."""
    if train is None and test is None:
        return None
    out: dict = {"overfit_ratio": overfit_ratio, "modalities": {}}
    for mod in ("image", "text"):
        a, b = (train or {}).get(mod), (test or {}).get(mod)
        if a is None and b is None:
            continue
        pick = lambda r: None if r is None else {k: num(r[k], 5) for k in ("mse", "explained_variance", "n_rows")}  # noqa: E731
        ratio = b["mse"] / a["mse"] if a is not None and b is not None and a["mse"] > 0 else None
        out["modalities"][mod] = {"train": pick(a), "test": pick(b), "ratio": num(ratio, 3) if ratio is not None else None,
                                  "overfit": bool(ratio is not None and ratio > overfit_ratio)}
    return out


__all__ = ["eval_table", "train_test_reconstruction"]
