"""``dualsae diagnose``: which Fig. 5 regime a store is in (modality gap, quick collapse rate, quick
heterogeneity, placed on the distance axis) and the method the paper's results recommend."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dualsae.commands.common import add_split_args, prepare_out_folder, select_split
from dualsae.commands.flags import add_flags, dataclass_flags, flag_named, given
from dualsae.core.errors import ConfigError, DataError
from dualsae.diagnose.pilots import QuickConfig
from dualsae.diagnose.placement import diagnose, place_report
from dualsae.diagnose.regime_curve import (
    REGIME_CURVE_DISTANCES,
    REGIME_CURVE_FILE,
    REGIME_CURVE_SEEDS,
    RegimeCurve,
    measure_regime_curve,
)
from dualsae.diagnose.regime_report import format_report, plot_placement
from dualsae.files.atomic import write_json, write_text
from dualsae.files.jsonfiles import read_json_object
from dualsae.store.paired import open_store

#: The quick diagnostic's flags, generated from :class:`QuickConfig`.
QUICK_FLAGS = dataclass_flags(QuickConfig)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diagnose", help="which regime of Fig. 5 a store is in, and which method to train",
        description="Before a long training: measure the store's modality gap, train a quick shared SAE "
        "(App. F.2 collapse rate) and a quick pair of modality-specific SAEs aligned post hoc (Fig. 2 "
        "heterogeneity), place the store on Fig. 5's cosine-distance axis through a regime curve measured "
        "with the same quick diagnostic on synthetic stores of known distance, and recommend a method. "
        "With --regime-curve-out FILE (alias --calibrate), measure that curve again instead.",
    )
    p.add_argument("store", nargs="?", default=None, help="store folder with image.npy and text.npy (paired rows)")
    add_split_args(p, "all", model_default=False)
    add_flags(p, QUICK_FLAGS)
    p.add_argument("--regime-curve", "--calibration", dest="regime_curve", type=Path, default=None,
                   help=f"regime curve file (default: the packaged {REGIME_CURVE_FILE.name}); files of the former "
                        "'calibration' format are read too")
    p.add_argument("--out", type=Path, default=None, help="also write diagnose.json, report.txt and diagnose.png (the placement on the Fig. 5 axis) into this folder")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                   help="instead of diagnosing a store: place a saved diagnose.json again with the current (or "
                        "--regime-curve) curve, without training")
    p.add_argument("--regime-curve-out", "--calibrate", dest="regime_curve_out", type=Path, default=None, metavar="FILE",
                   help="instead of diagnosing a store: run the quick diagnostic on synthetic stores at distances "
                        "0, 0.1, 0.2, 0.3, 0.5, 0.7, 1 and write the regime curve to FILE")
    p.add_argument("--regime-curve-seeds", "--calibration-seeds", dest="regime_curve_seeds", type=int, nargs="+", default=None,
                   help="seeds of --regime-curve-out's synthetic stores and trainings (default 0; more seeds add a spread column)")
    p.add_argument("--regime-curve-distances", "--calibration-distances", dest="regime_curve_distances", type=float,
                   nargs="+", default=None,
                   help="distances 1 - alpha of --regime-curve-out's stores (default 0 0.1 0.2 0.3 0.5 0.7 1)")
    p.add_argument("--work", type=Path, default=Path("runs/diagnose-calibration"),
                   help="resumable work folder for --regime-curve-out's synthetic stores (default runs/diagnose-calibration)")
    p.set_defaults(func=run)


def _quick(args: argparse.Namespace) -> QuickConfig:
    return QuickConfig(**given(args, QUICK_FLAGS))


def _flag_errors(check) -> None:
    """Run a QuickConfig check; its errors name the flag the user typed, not the config field."""
    try:
        check()
    except ConfigError as e:
        raise ConfigError(flag_named(str(e), QUICK_FLAGS)) from None


def refuse_constant_rows(store, sample: int = 4096) -> None:
    """One line, before any training, for a modality whose rows are all one vector (all zero, or a
    constant): no latent could be live, so the diagnostic would run its three stages and fail at the
    matching with a misleading "raise --steps". Checked on up to ``sample`` rows."""
    for mod in ("image", "text"):
        x = store.sample(mod, sample).double()
        if len(x) > 1 and float((x - x[0]).abs().max()) == 0.0:
            what = "all zero" if float(x.abs().max()) == 0.0 else "one constant vector"
            raise DataError(f"{store.root}: every {mod} row sampled ({len(x):,}) is {what}; the diagnostic needs embeddings that vary between rows")


def run(args: argparse.Namespace) -> int:
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    quick = _quick(args)
    _flag_errors(quick.validate)
    prepare_out_folder(args.out)  # a file, a path under a file, a read-only or full disk: one line before the work
    if args.regime_curve_out is not None:
        if args.store is not None:
            raise ConfigError("diagnose: give either STORE or --regime-curve-out FILE, not both")
        command = "dualsae diagnose --regime-curve-out " + str(args.regime_curve_out)
        seeds = tuple(args.regime_curve_seeds) if args.regime_curve_seeds else REGIME_CURVE_SEEDS
        dists = tuple(args.regime_curve_distances) if args.regime_curve_distances else REGIME_CURVE_DISTANCES
        table = measure_regime_curve(args.regime_curve_out, args.work, quick=quick, seeds=seeds, distances=dists,
                                     device=args.device, progress=not args.no_progress, log=log, command=command)
        print(f"wrote the regime curve ({len(table['per_seed'])} runs, {table['source']['seconds']:.0f} s) to {args.regime_curve_out}")
        return 0
    if args.from_json is not None:
        if args.store is not None:
            raise ConfigError("diagnose: give either STORE or --from-json FILE, not both")
        saved = read_json_object(args.from_json)
        curve = RegimeCurve.load(args.regime_curve) if args.regime_curve else RegimeCurve.load()
        report = place_report(saved, curve)
    else:
        if args.store is None:
            raise ConfigError("diagnose: a STORE folder is required (or --from-json FILE, or --regime-curve-out FILE)")
        store = select_split(open_store(args.store), args)
        store.require_pairs("the diagnostic")
        _flag_errors(lambda: quick.resolve(store.n))  # size errors before anything is loaded or trained
        refuse_constant_rows(store)
        curve = RegimeCurve.load(args.regime_curve) if args.regime_curve else RegimeCurve.load()
        report = diagnose(store, quick, curve, device=args.device, progress=not args.no_progress, log=log)
    text = format_report(report)
    print(text)
    if args.out is not None:
        write_json(args.out / "diagnose.json", report)
        write_text(args.out / "report.txt", text + "\n")
        plot_placement(report, args.out / "diagnose.png")
        print(f"-> {args.out / 'diagnose.json'}, {args.out / 'report.txt'}, {args.out / 'diagnose.png'}")
    return 0
