"""``dualsae diagnose``: a pilot head-to-head of the methods on the store's own rows (held-out split,
several seeds) and a recommendation per objective from it, with the store's place on the synthetic
Fig. 5 regime curve beside it as context."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from dualsae.commands.common import add_split_args, prepare_out_folder, resolve_split
from dualsae.commands.flags import add_flags, dataclass_flags, flag_named, given
from dualsae.core.errors import ConfigError, DataError
from dualsae.diagnose.head_to_head import PilotConfig, resolve_label_field
from dualsae.diagnose.pilot_report import format_markdown, format_report
from dualsae.diagnose.pilots import QuickConfig
from dualsae.diagnose.regime_curve import (
    REGIME_CURVE_DISTANCES,
    REGIME_CURVE_FILE,
    REGIME_CURVE_SEEDS,
    RegimeCurve,
    measure_regime_curve,
)
from dualsae.diagnose.regime_report import plot_placement
from dualsae.diagnose.store_diagnosis import OBJECTIVE_CHOICES, diagnose_store, objectives_of, redo_report
from dualsae.diagnose.verdicts import recommend, units_from_table1
from dualsae.files.atomic import write_json, write_text
from dualsae.files.jsonfiles import read_json_object
from dualsae.files.outdir import written_output
from dualsae.files.unit_job import UnitJob
from dualsae.store.paired import open_store

#: The quick diagnostic's flags (the synthetic placement), generated from :class:`QuickConfig`.
QUICK_FLAGS = dataclass_flags(QuickConfig)
#: The pilot head-to-head's flags, generated from :class:`PilotConfig`.
PILOT_FLAGS = dataclass_flags(PilotConfig)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diagnose", help="which method to train on a store: a pilot head-to-head on its own rows, per objective",
        description="Before a long training: train a shared SAE and a pair of modality-specific SAEs (aligned post hoc; "
        "--baselines adds group-sparse / Iso-Energy) with a small budget on the store's training rows over several seeds, "
        "measure them on its held-out rows (reconstruction, retrieval R@1/5/10, zero-shot and steering where labels exist, "
        "MS with --external, collapse, heterogeneity) and recommend a method per objective, or 'no clear winner' when "
        "the difference is within the spread over seeds. Beside it, as synthetic context, the store is placed on Fig. 5's "
        "cosine-distance axis through a regime curve measured on synthetic stores of known distance. "
        "With --regime-curve-out FILE (alias --calibrate), measure that curve again instead.",
    )
    p.add_argument("store", nargs="?", default=None, help="store folder with image.npy and text.npy (paired rows)")
    p.add_argument("--objective", default="all", choices=OBJECTIVE_CHOICES,
                   help="what the model is for: reconstruction | retrieval | interpretability (steering mAP, MS) | all (default: all)")
    pilot = p.add_argument_group("pilot head-to-head (measured on the store)")
    add_flags(pilot, PILOT_FLAGS)
    pilot.add_argument("--external", type=Path, default=None,
                       help="store of an external encoder's embeddings of the same rows: adds monosemanticity (MS) to interpretability")
    pilot.add_argument("--workers", type=int, default=1, help="pilot trainings run at once, in processes (default 1)")
    pilot.add_argument("--threads", type=int, default=1,
                       help="torch threads of each training (default 1: on a busy machine one thread is several times faster in "
                            "wall-clock time than two competing for the cores; 0 = torch's default)")
    add_split_args(p, "all", model_default=False)
    add_flags(p.add_argument_group("synthetic placement (context): the quick SAEs placed on the regime curve"), QUICK_FLAGS)
    p.add_argument("--regime-curve", "--calibration", dest="regime_curve", type=Path, default=None,
                   help=f"regime curve file (default: the packaged {REGIME_CURVE_FILE.name}); files of the former "
                        "'calibration' format are read too")
    p.add_argument("--out", type=Path, default=None,
                   help="write diagnose.json, diagnose.md, report.txt and diagnose.png (the synthetic placement) into this folder, "
                        "written as a unit; it also holds the pilot's finished trainings, so a rerun after a kill resumes "
                        "(default: a temporary folder, nothing kept)")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it holds another job's files")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                   help="instead of diagnosing a store: remake a saved diagnose.json's verdicts (--objective, --spread) "
                        "and its synthetic placement (--regime-curve), without training")
    p.add_argument("--table1", type=Path, default=None, metavar="FOLDER",
                   help="instead of diagnosing a store: judge a 'reproduce table1' folder's full trainings (its units/) by the "
                        "pilot's rule (--objective, --spread; shared vs specific + post hoc, and --baselines), to compare with a pilot")
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


def _flag_errors(check, flags=None) -> None:
    """Run a QuickConfig (or, with ``flags``, a PilotConfig) check; its errors name the flag the user typed,
    not the config field."""
    try:
        check()
    except ConfigError as e:
        raise ConfigError(flag_named(str(e), QUICK_FLAGS if flags is None else flags)) from None


def refuse_constant_rows(store, sample: int = 4096) -> None:
    """One line, before any training, for a modality whose rows are all one vector (all zero, or a
    constant): no latent could be live, so the diagnostic would run its three stages and fail at the
    matching with a misleading "raise --steps". Checked on up to ``sample`` rows."""
    for mod in ("image", "text"):
        x = store.sample(mod, sample).double()
        if len(x) > 1 and float((x - x[0]).abs().max()) == 0.0:
            what = "all zero" if float(x.abs().max()) == 0.0 else "one constant vector"
            raise DataError(f"{store.root}: every {mod} row sampled ({len(x):,}) is {what}; the diagnostic needs embeddings that vary between rows")


def _write(out: Path, report: dict, text: str) -> None:
    write_json(out / "diagnose.json", report)
    write_text(out / "diagnose.md", format_markdown(report))
    write_text(out / "report.txt", text + "\n")
    plot_placement(report["synthetic_reference"], out / "diagnose.png")


def _diagnose(args: argparse.Namespace, quick: QuickConfig, log) -> int:
    pilot = PilotConfig(**given(args, PILOT_FLAGS))
    _flag_errors(pilot.validate, PILOT_FLAGS)
    objectives_of(args.objective)
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, found {args.workers}")
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, found {args.threads}")
    split, fraction, seed = resolve_split(args)
    store = open_store(args.store).split(split, test_fraction=fraction, seed=seed)
    store.require_pairs("the diagnostic")
    resolve_label_field(store, pilot.label_field)  # a misspelt field first: it is what the user typed
    _flag_errors(lambda: quick.resolve(store.n))  # size errors before anything is loaded or trained
    refuse_constant_rows(store)
    external = open_store(args.external, same_width=False) if args.external is not None else None
    curve = RegimeCurve.load(args.regime_curve) if args.regime_curve else RegimeCurve.load()

    def measure(work: Path) -> dict:
        return diagnose_store(store, work, pilot, quick, curve, objective=args.objective, test_fraction=fraction,
                              split_seed=seed, external=external, device=args.device, workers=args.workers,
                              threads=args.threads or None, log=log)

    if args.out is None:
        with tempfile.TemporaryDirectory(prefix="dualsae-diagnose-") as tmp:
            report = measure(Path(tmp))
        print(format_report(report))
        return 0
    job = {"store": str(Path(args.store).resolve()), "split": split, "test_fraction": fraction, "split_seed": seed,
           "pilot": given(args, PILOT_FLAGS), "quick": given(args, QUICK_FLAGS),
           "external": str(args.external.resolve()) if args.external else None, "device": args.device}
    with written_output(args.out, "diagnose", job, "this diagnosis", overwrite=args.overwrite,
                        resumes=("pilot", "placement")) as out:  # the pilot and placement units resume
        report = measure(out)
        text = format_report(report)
        _write(out, report, text)
    print(text)
    print(f"-> {args.out / 'diagnose.md'}, {args.out / 'diagnose.json'}, {args.out / 'diagnose.png'}")
    return 0


def _judge_table1(args: argparse.Namespace) -> int:
    if args.store is not None:
        raise ConfigError("diagnose: give either STORE or --table1 FOLDER, not both")
    docs = list(UnitJob(args.table1).finished(ConfigError).values())
    pilot = PilotConfig(**given(args, PILOT_FLAGS))
    wanted = set(pilot.methods())
    units = [u for u in units_from_table1(docs) if u["method"] in wanted]
    if not {u["method"] for u in units} >= {"shared", "specific"}:
        raise ConfigError(f"{args.table1 / 'units'}: needs finished shared and specific+posthoc units of 'dualsae reproduce table1', "
                          f"found {sorted({str(d.get('method')) for d in docs}) or 'none'}")
    rec = recommend(units, objectives_of(args.objective), pilot.spread)
    print(f"{args.table1}: {len(units)} full trainings judged by diagnose's rule (mean ± std over seeds, spread {pilot.spread:g})")
    for name, v in rec["objectives"].items():
        print(f"  {name}: {v['verdict']}")
        for c in v["metrics"]:
            print(f"      {c['text']}")
    if rec.get("disagreement"):
        print(f"  {rec['disagreement']}")
    print(f"recommendation: {rec['overall']}")
    return 0


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
    if args.table1 is not None:
        return _judge_table1(args)
    if args.from_json is None:
        if args.store is None:
            raise ConfigError("diagnose: a STORE folder is required (or --from-json FILE, or --regime-curve-out FILE)")
        return _diagnose(args, quick, log)
    if args.store is not None:
        raise ConfigError("diagnose: give either STORE or --from-json FILE, not both")
    saved = read_json_object(args.from_json)
    curve = RegimeCurve.load(args.regime_curve) if args.regime_curve else RegimeCurve.load()
    spread = getattr(args, "spread", None)
    report = redo_report(saved, curve, args.objective, spread)
    text = format_report(report)
    print(text)
    if args.out is not None:
        with written_output(args.out, "diagnose", {"from_json": str(args.from_json.resolve())}, "this diagnosis",
                            overwrite=args.overwrite) as out:
            if "pilot" in report:
                _write(out, report, text)
            else:
                write_text(out / "report.txt", text + "\n")
                plot_placement(report["synthetic_reference"], out / "diagnose.png")
        print(f"-> {args.out}")
    return 0
