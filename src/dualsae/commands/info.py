"""``dualsae info``: what a trained model is and how well it reconstructs a store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dualsae.commands.common import add_split_args, check_batch_size, check_width, open_data, select_split
from dualsae.fingerprint import store_warnings
from dualsae.guards import non_finite_tensors
from dualsae.metrics.reconstruction import reconstruction_metrics
from dualsae.run import load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="print a model's config, size, live/dead latents and reconstruction",
        description="Print the configuration, parameter count, live/dead latents and (with --data) "
        "reconstruction MSE and explained variance per modality of a run or aligned folder.",
    )
    p.add_argument("run", help="run folder (dualsae train) or aligned folder (dualsae align)")
    p.add_argument("--data", default=None, help="store to measure reconstruction and live latents on")
    add_split_args(p, "test")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_batch_size(args.batch_size)
    pair = load_model(args.run)
    root = Path(args.run)
    info: dict = {"path": str(root), "method": pair.method}
    cfg = root / "config.json"
    if cfg.is_file():
        info["config"] = json.loads(cfg.read_text()).get("train")
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
    if args.data:
        store = select_split(open_data(args.data), args, args.run)
        check_width(pair, store, args.run)
        for line in store_warnings(args.run, store, "eval"):
            print(line, file=sys.stderr)
        stats = reconstruction_metrics(pair, store, batch_size=args.batch_size)
        stats.pop("mean", None)
        info["data"] = {"path": args.data, "split": args.split, **stats}
    for name, s in info["saes"].items():
        if s["non_finite_tensors"]:
            print(f"warning: {root}: the {name} SAE has NaN or inf in {', '.join(s['non_finite_tensors'])}; "
                  "this model is unusable (training diverged)", file=sys.stderr)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{root}  method={pair.method}  parameters={info['parameters']:,}")
    if "config" in info and info["config"]:
        c = info["config"]
        print("  config: " + ", ".join(f"{k}={c[k]}" for k in ("latents", "k", "activation", "preset", "lr", "batch_size", "epochs", "seed") if k in c))
    for name, s in info["saes"].items():
        print(f"  {name} SAE: d={s['d']} m={s['m']} k={s['k']} {s['activation']}  params={s['parameters']:,}  dead at end of training={s['dead_in_training']}")
    for mod, st in info.get("data", {}).items():
        if isinstance(st, dict):
            print(f"  {mod:5s} on {args.data} [{args.split}, {st['n_rows']:,} rows]: MSE={st['mse']:.5f}  explained variance={st['explained_variance']:.4f}  "
                  f"L0={st['mean_l0']:.1f}  live latents={st['live_latents']:,} (dead fraction {st['dead_fraction']:.3f})")
    return 0
