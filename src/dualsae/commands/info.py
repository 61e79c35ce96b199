"""``dualsae info``: what a trained model is and how well it reconstructs a store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dualsae.commands.common import (
    add_split_args,
    check_batch_size,
    check_width,
    resolve_data,
    resolve_split,
    select_split,
)
from dualsae.core.errors import CheckpointError, ConfigError, DataError
from dualsae.evaluation.generalization import generalization_lines, train_test_reconstruction
from dualsae.evaluation.metrics.reconstruction import reconstruction_metrics
from dualsae.files.jsonfiles import read_json_object
from dualsae.models.load import flat_train_config, load_model
from dualsae.models.provenance import store_warnings
from dualsae.store.paired import open_store
from dualsae.training.guards import non_finite_tensors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="print a model's config, size, live/dead latents and reconstruction",
        description="Print the configuration, parameter count, live/dead latents and "
        "reconstruction MSE and explained variance per modality of a run or aligned folder, on the test split "
        "beside the training split (flagging over-fitting: test/train MSE above 1.25).",
    )
    p.add_argument("run", help="run folder (dualsae train) or aligned folder (dualsae align)")
    p.add_argument("--data", default=None, help="store to measure reconstruction and live latents on (default: the store recorded in the model's folder)")
    add_split_args(p, "test")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_batch_size(args.batch_size)
    root = Path(args.run)
    model = _model_folder(root)
    pair = load_model(model)
    info: dict = {"path": str(root), "method": pair.method}
    info.update(model_summary(root))
    saes = {"shared": pair.image} if pair.shared else {m: getattr(pair, m) for m in ("image", "text") if getattr(pair, m) is not None}
    info["saes"] = {
        name: {
            "d": s.d, "m": s.m, "k": s.config.k, "activation": s.config.activation, "parameters": s.n_params(),
            "dead_in_training": int(s.dead_mask().sum()),
            "non_finite_tensors": non_finite_tensors(s),
        }
        for name, s in saes.items()
    }
    info["parameters"] = sum(s.n_params() for s in saes.values())
    data = _data_of(args)
    if data is not None:
        full = open_store(data)
        store = select_split(full, args, model)
        check_width(pair, store, args.run)
        for line in store_warnings(model, store, "eval"):
            print(line, file=sys.stderr)
        stats = reconstruction_metrics(pair, store, batch_size=args.batch_size)
        stats.pop("mean", None)
        info["data"] = {"path": data, "split": args.split, **stats}
        split, fraction, seed = resolve_split(args, model)
        if split == "test":  # the held-out rows: show the training rows' reconstruction beside them
            try:
                train_rows = full.split("train", test_fraction=fraction, seed=seed)
            except DataError:
                train_rows = None
            if train_rows is not None and train_rows.n:
                info["generalization"] = train_test_reconstruction(pair, train_rows, store, batch_size=args.batch_size)
    for name, s in info["saes"].items():
        if s["non_finite_tensors"]:
            print(f"warning: {root}: the {name} SAE has NaN or inf in {', '.join(s['non_finite_tensors'])}; "
                  "this model is unusable (training diverged)", file=sys.stderr)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{root}  method={pair.method}  parameters={info['parameters']:,}")
    if info.get("config"):
        c = info["config"]
        src = f" (training run {info['source_run']})" if info.get("source_run") else ""
        print(f"  config{src}: " + ", ".join(f"{k}={c[k]}" for k in ("method", "latents", "k", "activation", "preset", "lr", "batch_size", "epochs", "seed", "split") if k in c))
    if info.get("alignment"):
        for line in alignment_lines(info["alignment"]):
            print(line)
    elif pair.shared:
        print(f"  collapse rate (App. F.2): not measured here; 'dualsae align {root} --out FOLDER' writes collapse.json, "
              "'dualsae info FOLDER' shows it with this run")
    for name, s in info["saes"].items():
        k = f" k={s['k']}" if s["activation"] in ("topk", "batchtopk") else ""  # ReLU / JumpReLU have no k
        print(f"  {name} SAE: d={s['d']} m={s['m']}{k} {s['activation']}  params={s['parameters']:,}  dead at end of training={s['dead_in_training']}")
    if info.get("generalization"):
        print(f"  reconstruction on {data} (eq. 4 MSE; over-fitting: test/train MSE > {info['generalization']['overfit_ratio']:g})")
        for line in generalization_lines(info["generalization"], "    "):
            print(line)
    for mod, st in info.get("data", {}).items():
        if isinstance(st, dict):
            print(f"  {mod:5s} on {data} [{args.split}, {st['n_rows']:,} rows]: MSE={st['mse']:.5f}  explained variance={st['explained_variance']:.4f}  "
                  f"L0={st['mean_l0']:.1f}  live latents={st['live_latents']:,} (dead fraction {st['dead_fraction']:.3f})")
    return 0


def _model_folder(root: Path) -> Path:
    """The folder holding the weights: ``root`` itself, or for a shared run's collapse report (a folder
    ``dualsae align`` wrote with ``collapse.json`` and no model) the run it names (``source_run``)."""
    report = root / "collapse.json"
    if report.is_file() and not (root / "config.json").is_file():
        source = read_json_object(report, "dualsae align writes it for a shared run", CheckpointError).get("source_run")
        if not isinstance(source, str) or not source:
            raise CheckpointError(f"{report}: field 'source_run' must name the shared run this collapse report measured")
        return Path(source)
    return root


def _data_of(args: argparse.Namespace) -> str | None:
    """--data, else the store the run records (README: every command defaults to it); None, with a
    note on stderr saying why, when the folder records none on disk (a bare SAE folder)."""
    if args.data:
        return args.data
    try:
        return resolve_data(args, args.run)
    except ConfigError as e:
        why = str(e) if "--data" in str(e) else f"{e}; pass --data STORE"
        print(f"note: no reconstruction lines: {why}", file=sys.stderr)
        return None


def model_summary(root: Path) -> dict:
    """Training config (a run's config.json, or the source run's for an aligned folder) and, for an
    aligned / collapse folder, the alignment summary."""
    out: dict = {}
    aligned = None
    for name in ("alignment.json", "collapse.json"):
        if (root / name).is_file():
            aligned = json.loads((root / name).read_text())
            break
    run = root
    if aligned is not None and aligned.get("source_run"):
        run = Path(aligned["source_run"])
        out["source_run"] = str(run)
    cfg = run / "config.json"
    if cfg.is_file():
        try:
            out["config"] = flat_train_config(json.loads(cfg.read_text()).get("train") or {}) or None
        except ValueError:
            pass
    if aligned is not None:
        keys = ("rows", "data", "split", "live", "dead", "matched_count", "matched", "mean_matched_correlation", "solver",
                "collapse_rate", "collapse_rate_of_matched", "collapsed", "confidence", "sources")
        summary = {k: aligned[k] for k in keys if k in aligned and k != "matched"}
        if isinstance(aligned.get("matched"), int):
            summary["matched_count"] = aligned["matched"]
        if "unmatched" in aligned:
            summary["modality_only"] = {"image": len(aligned["unmatched"]["image_only"]), "text": len(aligned["unmatched"]["text_only"])}
        out["alignment"] = summary
    return out


def alignment_lines(a: dict) -> list[str]:
    lines = [f"  alignment on {a.get('rows', 0):,} rows of {a.get('data')} [{a.get('split')}]: "
             f"{a.get('matched_count', 0):,} matched pairs, mean correlation "
             + (f"{a['mean_matched_correlation']:.4f}" if a.get("mean_matched_correlation") is not None else "-")]
    if "live" in a:
        live = a["live"]
        lines.append("    live latents: " + ", ".join(f"{k} {v:,}" for k, v in live.items())
                     + ("; modality-only: " + ", ".join(f"{k} {v:,}" for k, v in a["modality_only"].items()) if "modality_only" in a else ""))
    if a.get("collapse_rate") is not None:
        lines.append(f"    collapse rate {100 * a['collapse_rate']:.2f}% of live latents, "
                     f"{100 * (a.get('collapse_rate_of_matched') or 0):.2f}% of matched pairs")
    conf = a.get("confidence")
    if conf:
        above = conf.get("above_null")
        lines.append(f"    support quartiles {conf.get('support_quartiles')}; above permutation null: "
                     f"{above if above is not None else '-'}; thresholds min_correlation={conf.get('min_correlation')} "
                     f"min_support={conf.get('min_support')} (dropped {conf.get('dropped_by_threshold', 0)})")
    for mod, src in (a.get("sources") or {}).items():  # SAEs imported by 'dualsae align --image A --text B'
        padded = f", padded to {src['padded_to']:,}" if src.get("padded_to") else ""
        lines.append(f"    {mod} SAE imported from {src.get('format')} {src.get('path')} ({src.get('latents', '?')} latents{padded})")
    return lines
