"""``dualsae eval``: the real-data evaluations of paper Sec. 6.2 for one model -> metrics.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dualsae.commands.common import (
    add_split_args,
    data_arg,
    resolve_data,
    resolve_split,
)
from dualsae.commands.flags import add_flag_groups, dataclass_flags, given
from dualsae.core.distributed import resolve_device
from dualsae.core.errors import ConfigError
from dualsae.evaluation.eval_table import markdown_table, text_table
from dualsae.evaluation.tasks import (
    EvalOptions,
    evaluate_model,
    parse_tasks,
)
from dualsae.files.atomic import write_text
from dualsae.files.outdir import written_output

DESCRIPTION = """\
Evaluate a trained or aligned model on the rows of --data (default: the test split):
  recon            reconstruction MSE (eq. 4: sum over d, mean over rows), MSE per dim, explained
                   variance, mean L0, dead-latent fraction, per modality
  retrieval        cross-modal Recall@1/5/10 from the cosine of latent codes (and of the raw
                   embeddings, for reference); --positives picks which gallery items count as hits
  zeroshot         latent zero-shot top-1 and mean-per-class accuracy: --zeroshot STORE (class prompt embeddings), or caption
                   prototypes of --label-field FIELD built from the training split
  steering         concept steering mAP/MRR over the values of --concept-field FIELD
  monosemanticity  monosemanticity score per latent against --external STORE (same rows, another
                   encoder); sorted curves (.npy) and a plot (.png) beside --out
Without --tasks, a task whose inputs are missing is skipped with a message. A task named in --tasks
that is skipped makes the command exit with status 1 (after writing metrics.json, which lists it
under "skipped"). A --label-field / --concept-field that no row of the store holds is an error
(exit 2, listing the store's fields). --out is a folder: metrics.json (written atomically),
metrics.md (the table printed: rows = task metrics, columns = this model, the raw embeddings, a
baseline: mean embedding, chance, majority class or random ranking), and monosemanticity curves
and plot beside it."""


#: The evaluation options' flags, generated from :class:`EvalOptions` (``--tasks`` is parsed by :func:`parse_tasks`).
EVAL_FLAGS = dataclass_flags(EvalOptions)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="reconstruction, retrieval, zero-shot, steering, monosemanticity -> metrics.json",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder (dualsae train), aligned folder (dualsae align) or SAE folder")
    data_arg(p, "paired-embedding store to evaluate on")
    add_split_args(p, "test")
    p.add_argument("--tasks", default=None,
                   help="comma-separated subset of recon,retrieval,zeroshot,steering,monosemanticity, or 'all'; a task "
                        "named here that cannot run is an error (default: every task whose inputs are given)")
    p.add_argument("--out", required=True, help="folder for metrics.json (monosemanticity curves and plot go beside it)")
    add_flag_groups(p, EVAL_FLAGS)
    p.add_argument("--zeroshot", default=None, help="zero-shot store: image.npy, meta label/class_name, classes.json, class_text.npy [C,T,d]")
    p.add_argument("--external", default=None, help="store with an external encoder's embeddings of the same rows as --data (monosemanticity)")
    g = p
    g.add_argument("--overwrite", action="store_true", help="replace the content of an --out folder that holds something else")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    if args.max_concepts is not None and args.max_concepts < 0:
        raise ConfigError(f"--max-concepts must be >= 0, found {args.max_concepts}")

    split, test_fraction, split_seed = resolve_split(args, args.model)
    data = resolve_data(args, args.model)
    out = Path(args.out)
    if out.suffix == ".json" or out.is_file():
        raise ConfigError(f"--out {out}: expected a folder (metrics.json is written inside it), found a file name")
    kw = given(args, EVAL_FLAGS)
    if "max_concepts" in kw:
        kw["max_concepts"] = kw["max_concepts"] or None  # --max-concepts 0: every concept
    kw["device"] = str(resolve_device(kw.get("device", "cpu")))
    options = EvalOptions(tasks=parse_tasks(args.tasks or "all"), **kw)
    job = {"model": str(Path(args.model).resolve()), "data": str(Path(data).resolve()), "split": split,
           "test_fraction": test_fraction, "split_seed": split_seed}
    with written_output(out, "eval", job, "this evaluation", overwrite=args.overwrite):
        doc = evaluate_model(args.model, data, out / "metrics.json", split=split, options=options, zeroshot=args.zeroshot,
                             external=args.external, test_fraction=test_fraction, split_seed=split_seed,
                             log=lambda s: print(s, file=sys.stderr))
        write_text(out / "metrics.md", markdown_table(doc))
    print(f"{args.model} ({doc['method']}, m={doc['m']:,}) on {data} [{split}: {doc['n_rows']:,} rows]")
    print(text_table(doc))
    print(f"-> {out / 'metrics.json'}, {out / 'metrics.md'}")
    asked = args.tasks is not None and doc.get("skipped")
    if asked:
        print(f"dualsae: {len(doc['skipped'])} requested task(s) skipped: {', '.join(doc['skipped'])}", file=sys.stderr)
        return 1
    return 0

