"""Table 1 of the paper (Sec. 6.2, App. E.4) as one resumable job: ``dualsae reproduce table1``.

Five rows, each trained with the paper's real-data protocol (``TrainConfig.from_preset('real')``:
AdamW (0.9, 0.999), lr 5e-4, weight decay 1e-5, batch 1024, clipping 1.0, 5% warm-up then cosine
decay; m = 8192, K = 32; 30 epochs as in App. E.1) over several seeds:

    Shared SAE | + Iso-Energy alignment loss | + Group-sparse loss | Modality-Specific SAEs |
    + Post-hoc Alignment (the paper's method: the specific SAEs of the same seed, aligned on the
    training pairs)

and evaluated on the evaluation rows with :func:`dualsae.evaluation.tasks.evaluate`: reconstruction MSE
(eq. 4, mean of the two modalities), Recall@1/5/10 both ways, zero-shot top-1 (and the zero-shot
store's image MSE, Table 1's ImageNet columns), plus concept steering and monosemanticity when their
inputs exist. Each (row, seed) result is written to ``units/`` as it finishes; rerunning resumes.
The table is written as markdown (best **bold**, second best _underlined_) and CSV, mean ± std.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from dualsae.core.errors import ConfigError
from dualsae.evaluation.metrics.zeroshot import load_zero_shot_store
from dualsae.evaluation.tasks import REGISTRY, EvalOptions, aligned_view, evaluate, table_columns
from dualsae.evaluation.tasks import _json_safe as safe
from dualsae.experiments.table1.diagnostics import model_diagnostics, plot_curves
from dualsae.files.atomic import write_json, write_text
from dualsae.files.unit_job import UnitJob
from dualsae.store.paired import open_store
from dualsae.training.config import TrainConfig, steps_per_epoch
from dualsae.training.curves import CurveRecorder
from dualsae.training.trainer import train

ROWS = (
    ("shared", "Shared SAE"),
    ("iso-energy", "+ Iso-Energy alignment loss"),
    ("group-sparse", "+ Group-sparse loss"),
    ("specific", "Modality-Specific SAEs"),
    ("specific+posthoc", "+ Post-hoc Alignment (Ours)"),
)
TRAINED = ("shared", "iso-energy", "group-sparse", "specific")

#: (column key, header, higher is better): the eval tasks' Table 1 columns, in registry order.
COLUMNS = tuple(c for task in REGISTRY.values() for c in task.columns)


def _get(*path: str):
    def get(row: dict) -> float | None:
        v: Any = row
        for key in path:
            if not isinstance(v, dict) or v.get(key) is None:
                return None
            v = v[key]
        return float(v)
    return get


def _top_bin(key: str):
    def get(row: dict) -> float | None:
        bins = (row.get("diagnostics") or {}).get("heterogeneity", {}).get("bins") or []
        return float(bins[-1][key]) if bins and bins[-1].get(key) is not None else None
    return get


#: Second table: what each Table 1 model is (key, header, value of a unit row, printed as percent).
DIAG_COLUMNS = (
    ("last10_change", "MSE change, last 10% of steps", _get("curve", "last10_change"), "pct"),
    ("dead_image", "dead (image)", _get("diagnostics", "dead_fraction", "image"), "pct"),
    ("dead_text", "dead (text)", _get("diagnostics", "dead_fraction", "text"), "pct"),
    ("dead_either", "dead (fires on neither)", _get("diagnostics", "dead_fraction", "either"), "pct"),
    ("firings", "median firings / live latent (image, train)", _get("diagnostics", "median_firings_per_live_latent", "image"), "int"),
    ("collapse_rate", "collapse rate (F.2)", _get("diagnostics", "collapse_rate"), "pct"),
    ("matched", "matched pairs", _get("diagnostics", "matched"), "int"),
    ("mean_matched_correlation", "mean matched correlation", _get("diagnostics", "mean_matched_correlation"), "num"),
    ("matched_distance", "matched pairs: median cos. distance", _get("diagnostics", "heterogeneity", "matched", "median"), "num"),
    ("high_c_pairs", "pairs with c ≥ 0.8", _top_bin("count"), "int"),
    ("high_c_distance", "c ≥ 0.8: median cos. distance", _top_bin("median"), "num"),
    ("train_seconds", "train s", _get("train_seconds"), "int"),
)


#: Training settings of Table 1 (App. E.4 and E.1) that differ from the 'real' preset's defaults.
PAPER_TRAIN = dict(latents=8192, k=32, epochs=30, batch_size=1024)


def paper_training(**overrides: Any) -> TrainConfig:
    """Table 1's training config with ``overrides`` (flat TrainConfig names; None keeps the default)."""
    return TrainConfig.from_preset("real", **{**PAPER_TRAIN, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass(frozen=True)
class Table1Plan:
    """Settings of the job (defaults: the paper's real-data protocol, 3 seeds).

    training: every training's config (``TrainConfig.from_preset('real')``, m = 8192, K = 32, 30
    epochs, batch 1024; its ``split`` is the split of ``train`` trained on); each unit sets its own
    method and seed.
    """

    train: str
    eval: str
    eval_split: str = "test"
    zeroshot: str | None = None
    external: str | None = None
    label_field: str | None = None
    concept_field: str | None = None
    positives: str = "auto"
    seeds: tuple[int, ...] = (0, 1, 2)
    steering_alpha: float = 1.0
    training: TrainConfig = field(default_factory=paper_training)

    @classmethod
    def from_settings(cls, **settings: Any) -> "Table1Plan":
        """A plan from flat names: the plan's own fields, ``train_split`` (the training split) and
        :class:`TrainConfig`'s fields (``latents``, ``k``, ``epochs``, ``batch_size``...). This is
        also the layout of ``plan.json`` files written before the plan held its TrainConfig."""
        own = {f.name for f in fields(cls)} - {"training"}
        plan_kw = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in own}
        train_kw = {("split" if k == "train_split" else k): v for k, v in settings.items() if k not in own}
        return cls(**plan_kw, training=paper_training(**train_kw))

    @property
    def train_split(self) -> str:
        return self.training.split

    def to_json(self) -> dict:
        """plan.json: the plan's own fields and the training config (``TrainConfig.to_dict``)."""
        return {**asdict(self), "training": self.training.to_dict()}


def plan_from_json(data: dict) -> Table1Plan:
    """A :class:`Table1Plan` from a saved ``plan.json`` of either layout."""
    if "training" not in data:
        return Table1Plan.from_settings(**data)
    own = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "training"}
    return Table1Plan(**own, training=TrainConfig.from_dict(data["training"], "plan.json"))


@dataclass(frozen=True)
class Table1Unit:
    """One training of the job: a trained row of Table 1 at one seed (specific also gives the post-hoc row)."""

    method: str
    seed: int

    @property
    def keys(self) -> list[str]:
        rows = [self.method] + (["specific+posthoc"] if self.method == "specific" else [])
        return [f"{m}_seed{self.seed}" for m in rows]


def _flatten(doc: dict) -> dict[str, float | None]:
    """The table's columns from an :func:`evaluate` result: every registered task's (``table_columns``)."""
    return table_columns(doc)


def run_table1(plan: Table1Plan, out: str | Path, progress: bool = True, log=print,
               methods: tuple[str, ...] = TRAINED) -> dict:
    """Train, align and evaluate every (row, seed) not yet in ``out/units``, then write the table.

    methods: the trained rows this call works on (a subset of :data:`TRAINED`; the others are left
    as they are, so several calls can share one folder); the table is built from every unit present.
    Each unit also records its training curve and the model diagnostics of
    :mod:`dualsae.experiments.table1.diagnostics`."""

    bad = [m for m in methods if m not in TRAINED]
    if bad:
        raise ConfigError(f"--methods: unknown method(s) {bad}; expected a subset of {', '.join(TRAINED)}")
    out = Path(out)
    job = UnitJob.open(out, plan.to_json(), read_saved=lambda saved: plan_from_json(saved).to_json(), what="table job",
                       rewrite=False)
    train_rows = open_store(plan.train).split(plan.train_split)
    full_eval = open_store(plan.eval)
    eval_rows = full_eval.split(plan.eval_split)
    try:
        eval_train = full_eval.split("train")
    except Exception:  # noqa: BLE001 - a store without a train split: prototypes come from the training store
        eval_train = train_rows
    zs = load_zero_shot_store(plan.zeroshot) if plan.zeroshot else None
    # An external encoder may embed each modality at its own width (e.g. 1280-d image, 384-d text).
    ext = aligned_view(open_store(plan.external, same_width=False), eval_rows) if plan.external else None
    tasks = ["recon", "retrieval"]
    if zs is not None or plan.label_field:
        tasks.append("zeroshot")
    if plan.concept_field:
        tasks.append("steering")
    if ext is not None:
        tasks.append("monosemanticity")
    options = EvalOptions(tasks=tuple(tasks), positives=plan.positives, label_field=plan.label_field,
                          concept_field=plan.concept_field, steering_alpha=plan.steering_alpha, progress=False)

    def work(unit: Table1Unit) -> dict[str, dict]:
        t0 = time.time()
        log(f"[table1] training {unit.method} seed {unit.seed} on {train_rows.n:,} rows")
        cfg = replace(plan.training, method=unit.method, seed=unit.seed)
        curve = CurveRecorder()
        pair = train(train_rows, cfg, None, progress=progress, on_step=curve)
        secs = time.time() - t0
        # Dead latents, collapse, matching and heterogeneity of this very model (for specific SAEs
        # the same C gives the post-hoc aligned pair of the next row).
        diag, res = model_diagnostics(pair, train_rows)
        common = {"train_config": cfg.to_dict(), "curve": curve.summary(steps_per_epoch(train_rows.n, cfg.batch_size)),
                  "diagnostics": diag, "matched": diag["matched"], "mean_matched_correlation": diag["mean_matched_correlation"]}
        models = [(unit.method, pair)] + ([("specific+posthoc", res.pair)] if unit.method == "specific" else [])
        docs = {}
        for (name, model), key in zip(models, unit.keys):
            doc = evaluate(model, eval_rows, options, train_store=eval_train, zeroshot=zs, external=ext)
            row = {"method": name, "seed": unit.seed, "train_seconds": round(secs, 1), **common, **_flatten(doc),
                   "skipped": doc["skipped"]}
            docs[key] = _json_safe(row)
        return docs

    units = [Table1Unit(method, seed) for seed in plan.seeds for method in TRAINED if method in methods]
    for unit, docs in job.run(units, work, keys=lambda u: u.keys):
        for doc in docs.values():
            log(f"[table1] {doc['method']} seed {unit.seed}: "
                + ", ".join(f"{k}={doc[k]:.4f}" for k, _, _ in COLUMNS if doc.get(k) is not None))
    report = build_table(plan, out)
    write_report(report, out)
    return report


def _json_safe(obj: Any) -> Any:

    return safe(obj)


def build_table(plan: Table1Plan, out: Path) -> dict:
    # Finished unit files only (a temporary left by a kill is no unit), one per (method, seed) of the plan.
    units = UnitJob(Path(out)).finished()
    rows = [units[f"{m}_seed{s}"] for s in plan.seeds for m, _ in ROWS if f"{m}_seed{s}" in units]
    table = []
    for method, label in ROWS:
        sel = [r for r in rows if r["method"] == method]
        if not sel:
            continue
        entry: dict[str, Any] = {"method": method, "label": label, "seeds": len(sel)}
        for col, _, _ in COLUMNS:
            vals = [r[col] for r in sel if r.get(col) is not None]
            entry[col] = float(np.mean(vals)) if vals else None
            entry[f"{col}_std"] = float(np.std(vals)) if vals else None
        for key, _, get, _ in DIAG_COLUMNS:
            vals = [v for v in (get(r) for r in sel) if v is not None]
            entry[f"diag_{key}"] = float(np.mean(vals)) if vals else None
            entry[f"diag_{key}_std"] = float(np.std(vals)) if vals else None
            if key == "last10_change":
                entry["diag_last10_change_max"] = float(np.max(vals)) if vals else None
        table.append(entry)
    ranks: dict[str, dict[str, int]] = {}
    for col, _, higher in COLUMNS:
        vals = [(_shown(col, e[col]), e["method"]) for e in table if e[col] is not None]
        # Rank 1 = best; rows equal at the printed precision share a rank.
        ordered = sorted({v for v, _ in vals}, reverse=higher)
        ranks[col] = {m: ordered.index(v) + 1 for v, m in vals}
    return {"plan": plan.to_json(), "rows": rows, "table": table, "ranks": ranks}


def _is_percent(col: str) -> bool:
    """Recalls and accuracies are printed in percent with one decimal, as in the paper."""
    return col.startswith(("i2t", "t2i", "zs_top1", "zs_mean_per_class"))


def _shown(col: str, v: float) -> float:
    return round(v * 100, 1) if _is_percent(col) else round(v, 4)


def _cell(e: dict, col: str, rank: int | None, scale: float) -> str:
    v, s = e[col], e[f"{col}_std"]
    if v is None:
        return "-"
    text = f"{v * scale:.1f} (± {s * scale:.1f})" if scale != 1 else f"{v:.4f} (± {s:.4f})"
    if rank == 1:
        return f"**{text}**"
    if rank == 2:
        return f"<u>{text}</u>"
    return text


def markdown(report: dict) -> str:
    table, ranks = report["table"], report["ranks"]
    cols = [(c, h) for c, h, _ in COLUMNS if any(e[c] is not None for e in table)]
    # Recalls and accuracies in percent, as the paper prints them; MSE and scores as they are.
    pct = {c for c, _ in cols if _is_percent(c)}
    lines = ["| Method | " + " | ".join(h + (" (%)" if c in pct else "") for c, h in cols) + " | seeds |",
             "|---|" + "---|" * len(cols) + "---|"]
    for e in table:
        cells = [_cell(e, c, ranks[c].get(e["method"]), 100.0 if c in pct else 1.0) for c, _ in cols]
        lines.append(f"| {e['label']} | " + " | ".join(cells) + f" | {e['seeds']} |")
    text = "\n".join(lines) + "\n\nBest in **bold**, second best <u>underlined</u> (ties at the printed precision share a rank).\n"
    return text + "\n" + diagnostics_markdown(report)


def diagnostics_markdown(report: dict) -> str:
    """The second table: each model's plateau, dead latents, collapse, matching and heterogeneity, mean ± std."""
    table = report["table"]
    cols = [(k, h, fmt) for k, h, _, fmt in DIAG_COLUMNS if any(e.get(f"diag_{k}") is not None for e in table)]
    if not cols:
        return ""
    lines = ["| Model | " + " | ".join(h + (" (%)" if fmt == "pct" else "") for _, h, fmt in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for e in table:
        cells = []
        for k, _, fmt in cols:
            v, sd = e.get(f"diag_{k}"), e.get(f"diag_{k}_std")
            if v is None:
                cells.append("-")
            elif fmt == "pct":
                cells.append(f"{100 * v:.2f} (± {100 * sd:.2f})")
            elif fmt == "int":
                cells.append(f"{v:,.0f} (± {sd:,.0f})")
            else:  # round first so that a distance of -1e-8 prints as 0.000, not -0.000
                cells.append(f"{round(v, 3) + 0.0:.3f} (± {sd:.3f})")
        lines.append(f"| {e['label']} | " + " | ".join(cells) + " |")
    return ("Model diagnostics, measured on the Table 1 models themselves (training rows; mean ± std over seeds). "
            "The post-hoc row is the specific pair re-indexed, so it shares the specific row's values.\n\n"
            + "\n".join(lines) + "\n")


def write_report(report: dict, out: Path) -> None:

    write_json(out / "table1.json", report)
    plot_curves(report["rows"], out / "curves.png", TRAINED)
    write_text(out / "table1.md", markdown(report))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "seeds", *[x for c, _, _ in COLUMNS for x in (c, f"{c}_std", f"{c}_rank")]])
    for e in report["table"]:
        w.writerow([e["method"], e["seeds"], *[x for c, _, _ in COLUMNS
                                                for x in (e[c], e[f"{c}_std"], report["ranks"][c].get(e["method"]))]])
    write_text(out / "table1.csv", buf.getvalue())


__all__ = ["Table1Plan", "Table1Unit", "plan_from_json", "paper_training", "run_table1", "build_table", "markdown", "diagnostics_markdown", "ROWS", "COLUMNS", "DIAG_COLUMNS"]
