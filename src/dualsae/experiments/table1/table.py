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

import argparse
import csv
import io
import json

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualsae.files.atomic import write_json, write_text
from dualsae.core.errors import ConfigError, DataError
from dualsae.files.jsonfiles import read_json_object
from dualsae.files.outdir import finished_json_files, resumable_output
from dualsae.training.config import TrainConfig
from dualsae.store.paired import open_store as open_data
from dualsae.experiments.table1.diagnostics import model_diagnostics
from dualsae.training.curves import CurveRecorder
from dualsae.evaluation.tasks import REGISTRY, EvalOptions, aligned_view, evaluate, table_columns
from dualsae.evaluation.metrics.zeroshot import load_zero_shot_store
from dualsae.training.config import steps_per_epoch
from dualsae.training.trainer import train
from dualsae.evaluation.tasks import _json_safe as safe
from dualsae.experiments.table1.diagnostics import plot_curves

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


@dataclass(frozen=True)
class Table1Plan:
    """Settings of the job (defaults: the paper's real-data protocol, 3 seeds)."""

    train: str
    eval: str
    train_split: str = "train"
    eval_split: str = "test"
    zeroshot: str | None = None
    external: str | None = None
    label_field: str | None = None
    concept_field: str | None = None
    positives: str = "auto"
    seeds: tuple[int, ...] = (0, 1, 2)
    latents: int = 8192
    k: int = 32
    epochs: int = 30
    batch_size: int = 1024
    steering_alpha: float = 1.0


def _train_config(plan: Table1Plan, method: str, seed: int):

    return TrainConfig.from_preset("real", method=method, latents=plan.latents, k=plan.k, epochs=plan.epochs,
                                   batch_size=plan.batch_size, seed=seed, split=plan.train_split)


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
    (out / "units").mkdir(parents=True, exist_ok=True)
    plan_path = out / "plan.json"
    current = json.loads(json.dumps(asdict(plan)))
    if plan_path.is_file():
        saved = read_json_object(plan_path, "delete it to start the job afresh", ConfigError)
        if saved != current:
            diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise ConfigError(f"{plan_path}: this folder holds a table job with different settings ({', '.join(diff)}); use another --out")
    else:
        write_json(plan_path, current)
    train_rows = open_data(plan.train).split(plan.train_split)
    full_eval = open_data(plan.eval)
    eval_rows = full_eval.split(plan.eval_split)
    try:
        eval_train = full_eval.split("train")
    except Exception:  # noqa: BLE001 - a store without a train split: prototypes come from the training store
        eval_train = train_rows
    zs = load_zero_shot_store(plan.zeroshot) if plan.zeroshot else None
    # An external encoder may embed each modality at its own width (e.g. 1280-d image, 384-d text).
    ext = aligned_view(open_data(plan.external, same_width=False), eval_rows) if plan.external else None
    tasks = ["recon", "retrieval"]
    if zs is not None or plan.label_field:
        tasks.append("zeroshot")
    if plan.concept_field:
        tasks.append("steering")
    if ext is not None:
        tasks.append("monosemanticity")
    options = EvalOptions(tasks=tuple(tasks), positives=plan.positives, label_field=plan.label_field,
                          concept_field=plan.concept_field, steering_alpha=plan.steering_alpha, progress=False)
    for seed in plan.seeds:
        for method in (m for m in TRAINED if m in methods):
            keys = [f"{method}_seed{seed}"] + ([f"specific+posthoc_seed{seed}"] if method == "specific" else [])
            if all((out / "units" / f"{k}.json").is_file() for k in keys):
                continue
            t0 = time.time()
            log(f"[table1] training {method} seed {seed} on {train_rows.n:,} rows")
            cfg = _train_config(plan, method, seed)
            curve = CurveRecorder(steps_per_epoch(train_rows.n, cfg.batch_size))
            pair = train(train_rows, cfg, None, progress=progress, on_step=curve)
            secs = time.time() - t0
            # Dead latents, collapse, matching and heterogeneity of this very model (for specific SAEs
            # the same C gives the post-hoc aligned pair of the next row).
            diag, res = model_diagnostics(pair, train_rows)
            common = {"train_config": asdict(cfg), "curve": curve.summary(), "diagnostics": diag,
                      "matched": diag["matched"], "mean_matched_correlation": diag["mean_matched_correlation"]}
            models = [(method, pair, common)]
            if method == "specific":
                models.append(("specific+posthoc", res.pair, common))
            for name, model, extra in models:
                doc = evaluate(model, eval_rows, options, train_store=eval_train, zeroshot=zs, external=ext)
                row = {"method": name, "seed": seed, "train_seconds": round(secs, 1), **extra, **_flatten(doc),
                       "skipped": doc["skipped"]}
                write_json(out / "units" / f"{name}_seed{seed}.json", _json_safe(row))
                log(f"[table1] {name} seed {seed}: " + ", ".join(f"{k}={v:.4f}" for k, v in _flatten(doc).items() if v is not None))
    report = build_table(plan, out)
    write_report(report, out)
    return report


def _json_safe(obj: Any) -> Any:

    return safe(obj)


def build_table(plan: Table1Plan, out: Path) -> dict:
    # Finished unit files only (a temporary left by a kill is no unit), one per (method, seed) of the plan.
    units = finished_json_files(out / "units", DataError)
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
    return {"plan": asdict(plan), "rows": rows, "table": table, "ranks": ranks}


def _is_percent(col: str) -> bool:
    """Recalls and accuracies are printed in percent with one decimal, as in the paper."""
    return col.startswith(("i2t", "t2i", "zs_top1"))


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


def register(rsub: argparse._SubParsersAction) -> None:
    p = rsub.add_parser(
        "table1", help="Sec. 6.2 / App. E.4: the five rows of Table 1 on real paired embeddings",
        description="Train the five rows of Table 1 (shared; + Iso-Energy; + group-sparse; specific; specific + "
        "post-hoc alignment) with the paper's real-data protocol over several seeds, evaluate them on the "
        "evaluation rows, and write table1.md / table1.csv / table1.json (mean ± std, best and second best "
        "marked) into --out. Rerunning the same command resumes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--train", required=True, help="training store (e.g. CC-3M embeddings)")
    p.add_argument("--eval", required=True, help="evaluation store (e.g. COCO embeddings); may be the training store")
    p.add_argument("--zeroshot", default=None, help="zero-shot store (image.npy, meta labels, classes.json, class_text.npy)")
    p.add_argument("--external", default=None, help="external encoder's embeddings of the evaluation rows (monosemanticity)")
    p.add_argument("--label-field", default=None, help="meta field for caption-prototype zero-shot when no --zeroshot store exists")
    p.add_argument("--concept-field", default=None, help="meta field of steering concepts (e.g. category)")
    p.add_argument("--positives", default="auto", help="retrieval positives: auto | group | caption | row")
    p.add_argument("--train-split", default=None, help="split of --train (default: train, or all when --train and --eval differ)")
    p.add_argument("--eval-split", default=None, help="split of --eval (default: test, or all when --train and --eval differ)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--latents", type=int, default=8192, help="m of the shared SAE; specific gets m/2 each")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--steering-alpha", type=float, default=1.0)
    p.add_argument("--methods", nargs="+", default=list(TRAINED), choices=TRAINED,
                   help="trained rows this call works on (the others are left as they are; post-hoc comes with specific)")
    p.add_argument("--out", default="runs/table1")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    same = Path(args.train).resolve() == Path(args.eval).resolve()
    plan = Table1Plan(
        train=str(args.train), eval=str(args.eval),
        train_split=args.train_split or ("train" if same else "all"),
        eval_split=args.eval_split or ("test" if same else "all"),
        zeroshot=args.zeroshot, external=args.external, label_field=args.label_field, concept_field=args.concept_field,
        positives=args.positives, seeds=tuple(args.seeds), latents=args.latents, k=args.k, epochs=args.epochs,
        batch_size=args.batch_size, steering_alpha=args.steering_alpha,
    )
    with resumable_output(args.out, "reproduce table1", {"experiment": "table1"},
                          keep=("plan.json", "units", "table1.md", "table1.csv", "table1.json")):
        report = run_table1(plan, args.out, progress=not args.no_progress, methods=tuple(args.methods))
    print(markdown(report))
    print(f"written: {args.out}/table1.md, table1.csv, table1.json")
    return 0


__all__ = ["Table1Plan", "run_table1", "build_table", "markdown", "diagnostics_markdown", "ROWS", "COLUMNS", "DIAG_COLUMNS", "register"]
