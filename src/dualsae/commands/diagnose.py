"""``dualsae diagnose``: which Fig. 5 regime a store is in (modality gap, quick collapse rate, quick
heterogeneity, placed on the distance axis) and the method the paper's results recommend."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dualsae.commands.common import add_split_args, open_data, select_split
from dualsae.core.errors import ConfigError
from dualsae.diagnose.advice import CALIBRATION_FILE, QuickConfig
from dualsae.files.atomic import write_json, write_text
from dualsae.diagnose.advice import CALIBRATION_DISTANCES, CALIBRATION_SEEDS, Calibration, calibrate, diagnose, format_report, plot_placement, replace_calibration
from dualsae.files.jsonfiles import read_json_object


def register(sub: argparse._SubParsersAction) -> None:

    q = QuickConfig()
    p = sub.add_parser(
        "diagnose", help="which regime of Fig. 5 a store is in, and which method to train",
        description="Before a long training: measure the store's modality gap, train a quick shared SAE "
        "(App. F.2 collapse rate) and a quick pair of modality-specific SAEs aligned post hoc (Fig. 2 "
        "heterogeneity), place the store on Fig. 5's cosine-distance axis through a calibration measured "
        "with the same quick diagnostic on synthetic stores of known distance, and recommend a method. "
        "With --calibrate FILE, remake that calibration table instead.",
    )
    p.add_argument("store", nargs="?", default=None, help="store folder with image.npy and text.npy (paired rows)")
    add_split_args(p, "all", model_default=False)
    p.add_argument("--rows", type=int, default=q.rows, help=f"at most this many pairs, drawn at random (default {q.rows:,})")
    p.add_argument("--latents", type=int, default=None,
                   help="m of the quick shared SAE, m/2 per specific SAE (default: largest power of 2 <= rows/4, at most 1024)")
    p.add_argument("--k", type=int, default=q.k, help=f"TopK K (default {q.k})")
    p.add_argument("--steps", type=int, default=q.steps, help=f"target optimiser steps per training (default {q.steps})")
    p.add_argument("--epochs", type=int, default=None, help="epochs per training (default: from --steps and the rows)")
    p.add_argument("--batch-size", type=int, default=q.batch_size, help=f"pairs per step (default {q.batch_size})")
    p.add_argument("--top-fraction", type=float, default=q.top_fraction,
                   help=f"share of best-correlated matched pairs for the heterogeneity median (default {q.top_fraction})")
    p.add_argument("--seed", type=int, default=q.seed, help=f"seed of the subsample and the trainings (default {q.seed})")
    p.add_argument("--calibration", type=Path, default=None, help=f"calibration table (default: the packaged {CALIBRATION_FILE.name})")
    p.add_argument("--out", type=Path, default=None, help="also write diagnose.json, report.txt and diagnose.png (the placement on the Fig. 5 axis) into this folder")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                   help="instead of diagnosing a store: place a saved diagnose.json again with the current (or "
                        "--calibration) table, without training")
    p.add_argument("--calibrate", type=Path, default=None, metavar="FILE",
                   help="instead of diagnosing a store: run the quick diagnostic on synthetic stores at distances "
                        "0, 0.1, 0.2, 0.3, 0.5, 0.7, 1 and write the calibration table to FILE")
    p.add_argument("--calibration-seeds", type=int, nargs="+", default=None,
                   help="seeds of --calibrate's synthetic stores and trainings (default 0; more seeds add a spread column)")
    p.add_argument("--calibration-distances", type=float, nargs="+", default=None,
                   help="distances 1 - alpha of --calibrate's stores (default 0 0.1 0.2 0.3 0.5 0.7 1)")
    p.add_argument("--work", type=Path, default=Path("runs/diagnose-calibration"),
                   help="scratch folder for --calibrate's synthetic stores (default runs/diagnose-calibration)")
    p.set_defaults(func=run)


def _quick(args: argparse.Namespace):

    return QuickConfig(rows=args.rows, latents=args.latents, k=args.k, steps=args.steps, epochs=args.epochs,
                       batch_size=args.batch_size, top_fraction=args.top_fraction, seed=args.seed)


def run(args: argparse.Namespace) -> int:

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    quick = _quick(args)
    quick.validate()
    if args.calibrate is not None:
        if args.store is not None:
            raise ConfigError("diagnose: give either STORE or --calibrate FILE, not both")
        command = "dualsae diagnose --calibrate " + str(args.calibrate)
        seeds = tuple(args.calibration_seeds) if args.calibration_seeds else CALIBRATION_SEEDS
        dists = tuple(args.calibration_distances) if args.calibration_distances else CALIBRATION_DISTANCES
        table = calibrate(args.calibrate, args.work, quick=quick, seeds=seeds, distances=dists, device=args.device,
                          progress=not args.no_progress, log=log, command=command)
        print(f"wrote the calibration table ({len(table['per_seed'])} runs, {table['source']['seconds']:.0f} s) to {args.calibrate}")
        return 0
    if args.from_json is not None:
        if args.store is not None:
            raise ConfigError("diagnose: give either STORE or --from-json FILE, not both")

        saved = read_json_object(args.from_json)
        calibration = Calibration.load(args.calibration) if args.calibration else Calibration.load()
        report = replace_calibration(saved, calibration)
    else:
        if args.store is None:
            raise ConfigError("diagnose: a STORE folder is required (or --from-json FILE, or --calibrate FILE)")
        store = select_split(open_data(args.store), args)
        store.require_pairs("the diagnostic")
        quick.resolve(store.n)  # size errors before anything is loaded or trained
        calibration = Calibration.load(args.calibration) if args.calibration else Calibration.load()
        report = diagnose(store, quick, calibration, device=args.device, progress=not args.no_progress, log=log)
    text = format_report(report)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "diagnose.json", report)
        write_text(args.out / "report.txt", text + "\n")
        plot_placement(report, args.out / "diagnose.png")
        print(f"-> {args.out / 'diagnose.json'}, {args.out / 'report.txt'}, {args.out / 'diagnose.png'}")
    return 0
