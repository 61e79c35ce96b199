"""The evaluation as a table a reader of paper Table 1 recognises: one row per task metric (MSE and
explained variance, R@1/5/10 both ways, zero-shot top-1 and mean per class, steering mAP / MRR,
monosemanticity), three columns: this model, the raw embeddings and a baseline.

Each registered task contributes its rows (``Task.table``, defined beside its metric); the columns:

* **this model**: the task's number in the latent space (Sec. 6.2);
* **raw embeddings**: the same protocol on the embeddings themselves (retrieval and zero-shot by
  cosine, steering's unsteered source): "—" where the metric has no raw form (reconstruction, MS);
* **baseline**: what a model that learnt nothing scores: the mean embedding (MSE = total variance,
  explained variance 0), a random ranking (retrieval chance ``1 - C(G-p, K)/C(G, K)``, i.e. K/G with
  one positive per query; steering mAP / MRR of a random order), the majority class (zero-shot top-1;
  its mean per class is 1 / classes).

``dualsae eval`` prints :func:`text_table` and writes :func:`markdown_table` as ``metrics.md`` beside
``metrics.json``.
"""

from __future__ import annotations

import math

from dualsae.evaluation.task_table import TableRow
from dualsae.evaluation.tasks import REGISTRY

HEADER = ("task", "metric", "this model", "raw embeddings", "baseline", "baseline is")


def table_rows(doc: dict) -> list[TableRow]:
    """Every run task's rows, in registry order, from a metrics dict (``evaluate``'s result or metrics.json)."""
    done = doc.get("tasks", {})
    return [row for name, task in REGISTRY.items() if name in done for row in task.table(done[name])]


def _cell(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def _cells(row: TableRow) -> list[str]:
    arrow = "↑" if row.higher_is_better else "↓"
    return [row.task, f"{row.metric} {arrow}", _cell(row.model), _cell(row.raw), _cell(row.baseline), row.baseline_kind]


def _skipped(doc: dict) -> list[str]:
    return [f"{task}: skipped ({why})" for task, why in doc.get("skipped", {}).items()]


def text_table(doc: dict) -> str:
    """The table as aligned terminal text (skipped tasks listed under it)."""
    body = [list(HEADER)] + [_cells(r) for r in table_rows(doc)]
    widths = [max(len(line[i]) for line in body) for i in range(len(HEADER))]
    out = []
    for n, line in enumerate(body):
        out.append("  ".join(c.ljust(w) if i < 2 or i == 5 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out + _skipped(doc))


def markdown_table(doc: dict) -> str:
    """``metrics.md``: a title naming model, data and rows, the table, and the skipped tasks."""
    title = (f"# Evaluation of {doc.get('model', 'the model')} ({doc.get('method', '?')}, m = {doc.get('m', '?')})\n\n"
             f"On {doc.get('data', '?')} [{doc.get('split', '?')}: {doc.get('n_rows', 0):,} rows]. "
             "↑ higher is better, ↓ lower is better; \"—\": not defined for that column.\n\n")
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---", "---", "---:", "---:", "---:", "---"]) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in table_rows(doc)]
    skipped = _skipped(doc)
    return title + "\n".join(lines) + "\n" + ("\n" + "\n".join(f"* {s}" for s in skipped) + "\n" if skipped else "")


__all__ = ["HEADER", "markdown_table", "table_rows", "text_table"]
