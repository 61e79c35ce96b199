"""``dualsae reproduce``: the paper's experiments end to end."""

from __future__ import annotations

import argparse
import time
from dataclasses import fields, replace
from pathlib import Path

from dualsae.commands.flags import DefaultsHelpFormatter
from dualsae.core.errors import ConfigError
from dualsae.experiments.synthetic.job import run_plan
from dualsae.experiments.synthetic.plan import QUICK, QUICK_SETTINGS, SyntheticPlan, plan_from_json
from dualsae.experiments.synthetic.results import markdown_table
from dualsae.experiments.table1 import table as table1
from dualsae.files.jsonfiles import read_json_object
from dualsae.files.outdir import resumable_output
from dualsae.files.unit_job import PLAN_FILE

#: What 'reproduce synthetic' writes, so a folder it wrote before manifests existed is adopted.
SYNTHETIC_OUTPUTS = ("plan.json", "units", "data", "results.csv", "results.json", "results.md", "fig5.png", "fig6.png")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run the paper's experiments (synthetic Figs. 5-6, real-data Table 1)",
                       description="Run the paper's experiments end to end.")
    rsub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    s = rsub.add_parser(
        "synthetic", help="Sec. 6.1 / App. E.2-E.3: Figs. 5 and 6 on synthetic data",
        description="Generate the App. E.2 synthetic data, train shared vs modality-specific SAEs over cosine "
        "distances (Fig. 5) and the auxiliary-loss baselines over multipliers at distance 0.5 (Fig. 6), align "
        "post hoc, measure the five App. E.3 metrics, and write results.csv/json/md, fig5.png, fig6.png and the "
        "claim checks into --out. Interrupted runs resume: rerun the same command.",
        formatter_class=DefaultsHelpFormatter,
    )
    s.add_argument("--out", default="runs/synthetic", help="output folder")
    s.add_argument("--quick", action="store_true",
                   help=f"demo: a reduced App. E.2 problem with the paper's ratios (d {QUICK.data.d}, {QUICK.data.n_train} training "
                        f"pairs, {QUICK_SETTINGS['latents']} shared latents), distances {list(QUICK.distances)}, "
                        f"{QUICK.epochs[0]} epochs (converged), one seed; about 3.5 minutes on 2 CPU cores with --workers 2")
    s.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (paper: 0 1 2)")
    s.add_argument("--distances", type=float, nargs="+", default=None, help="cosine distances 1-alpha for Fig. 5")
    s.add_argument("--multipliers", type=float, nargs="+", default=None,
                   help="auxiliary-loss multipliers of both baselines for Fig. 6 (default: --gs-multipliers / --iso-multipliers)")
    s.add_argument("--gs-multipliers", type=float, nargs="+", default=None,
                   help=f"group-sparse multipliers (default {list(SyntheticPlan().group_sparse_multipliers)})")
    s.add_argument("--iso-multipliers", type=float, nargs="+", default=None,
                   help=f"Iso-Energy multipliers (default {list(SyntheticPlan().iso_energy_multipliers)})")
    s.add_argument("--fig6-distance", type=float, default=None, help="distance of Fig. 6 (paper: 0.5)")
    s.add_argument("--n-train", type=int, default=None, help="training pairs (paper: 50000)")
    s.add_argument("--n-eval", type=int, default=None, help="evaluation pairs (paper: 10000)")
    s.add_argument("--latents", type=int, default=None, help="shared SAE latents m; specific gets m/2 each (paper: 8192)")
    s.add_argument("--k", type=int, default=None, help="TopK K (paper: 16)")
    s.add_argument("--epochs", type=int, nargs="+", default=None,
                   help="training budgets in epochs; Fig. 5 is trained at each, Fig. 6 at the first (paper: 10)")
    s.add_argument("--keep-data", action="store_true", help="keep the generated data sets under OUT/data")
    s.add_argument("--max-units", type=int, default=None, help="stop after this many trainings (resume later)")
    s.add_argument("--workers", type=int, default=1,
                   help="trainings run at once, each in its own process with an equal share of the cores "
                        "(on 2 cores, 2 workers finish about 1.3x more trainings per hour)")
    s.add_argument("--threads-per-worker", type=int, default=None,
                   help="torch threads of each worker (default: usable cores / workers)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=run_synthetic)
    register_table1(rsub)


def run_synthetic(args: argparse.Namespace) -> int:
    over = {
        "seeds": tuple(args.seeds) if args.seeds else None,
        "distances": tuple(args.distances) if args.distances else None,
        "group_sparse_multipliers": tuple(args.gs_multipliers or args.multipliers or ()) or None,
        "iso_energy_multipliers": tuple(args.iso_multipliers or args.multipliers or ()) or None,
        "fig6_distance": args.fig6_distance, "n_train": args.n_train, "n_eval": args.n_eval,
        "latents": args.latents, "k": args.k, "epochs": tuple(args.epochs) if args.epochs else None,
    }
    given = {k: v for k, v in over.items() if v is not None}
    plan = resumed_plan(Path(args.out), given, args.quick)
    t0 = time.time()
    # One job per folder at a time (lock), temporaries of a killed call swept, folder marked finished at the end.
    with resumable_output(args.out, "reproduce synthetic", {"experiment": "synthetic"}, keep=SYNTHETIC_OUTPUTS):
        report = run_plan(plan, args.out, keep_data=args.keep_data, progress=not args.no_progress, max_units=args.max_units,
                          workers=args.workers, threads_per_worker=args.threads_per_worker)
    print(markdown_table(report))
    print(f"{report['units_done']}/{report['units_total']} trainings done; this call took {time.time() - t0:.0f} s; "
          f"results in {args.out}/ (results.csv, results.json, results.md, fig5.png, fig6.png, curves.png)")
    return 0


#: The plan's own fields (not the data set's or the training's): a resume may change these alone on the saved plan.
_PLAN_FIELDS = {f.name for f in fields(SyntheticPlan)} - {"data", "train"}


def resumed_plan(out: Path, given: dict, quick: bool) -> SyntheticPlan:
    """The plan to run in ``out``: resuming a job folder (``plan.json`` there, no ``--quick``), every setting
    the user did not give is the folder's (so ``dualsae reproduce synthetic --out docs/synthetic`` resumes a
    job planned with ``--epochs 10 40`` without repeating them); settings of the plan's axes given on the
    command line replace the saved ones (extending an axis keeps the finished units). Otherwise (a new folder,
    ``--quick``, or data / training settings given) the plan of the flags and defaults, which the job folder
    then accepts only if it extends the saved one."""
    path = out / PLAN_FILE
    if path.is_file() and not quick and set(given) <= _PLAN_FIELDS:
        saved = plan_from_json(read_json_object(path, "delete it to start the job afresh", ConfigError))
        return replace(saved, **given)
    return SyntheticPlan.from_settings(**{**(QUICK_SETTINGS if quick else {}), **given})


def register_table1(rsub: argparse._SubParsersAction) -> None:
    """``dualsae reproduce table1`` (Sec. 6.2, App. E.4; :mod:`dualsae.experiments.table1.table`)."""
    p = rsub.add_parser(
        "table1", help="Sec. 6.2 / App. E.4: the five rows of Table 1 on real paired embeddings",
        description="Train the five rows of Table 1 (shared; + Iso-Energy; + group-sparse; specific; specific + "
        "post-hoc alignment) with the paper's real-data protocol over several seeds, evaluate them on the "
        "evaluation rows, and write table1.md / table1.csv / table1.json (mean ± std, best and second best "
        "marked) into --out. Rerunning the same command resumes.",
        formatter_class=DefaultsHelpFormatter,
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
    p.add_argument("--methods", nargs="+", default=list(table1.TRAINED), choices=table1.TRAINED,
                   help="trained rows this call works on (the others are left as they are; post-hoc comes with specific)")
    p.add_argument("--out", default="runs/table1")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_table1)


def run_table1(args: argparse.Namespace) -> int:
    same = Path(args.train).resolve() == Path(args.eval).resolve()
    plan = table1.Table1Plan.from_settings(
        train=str(args.train), eval=str(args.eval),
        train_split=args.train_split or ("train" if same else "all"),
        eval_split=args.eval_split or ("test" if same else "all"),
        zeroshot=args.zeroshot, external=args.external, label_field=args.label_field, concept_field=args.concept_field,
        positives=args.positives, seeds=tuple(args.seeds), latents=args.latents, k=args.k, epochs=args.epochs,
        batch_size=args.batch_size, steering_alpha=args.steering_alpha,
    )
    with resumable_output(args.out, "reproduce table1", {"experiment": "table1"},
                          keep=("plan.json", "units", "table1.md", "table1.csv", "table1.json")):
        report = table1.run_table1(plan, args.out, progress=not args.no_progress, methods=tuple(args.methods))
    print(table1.markdown(report))
    print(f"written: {args.out}/table1.md, table1.csv, table1.json")
    return 0
