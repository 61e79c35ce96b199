"""``dualsae report``: a static latent browser (HTML + JS data files) for a model on a store."""

from __future__ import annotations

import argparse
from pathlib import Path

from dualsae.commands.common import check_finite_flag, data_arg, resolve_data, resolve_split
from dualsae.commands.flags import DefaultsHelpFormatter
from dualsae.core.distributed import resolve_device
from dualsae.core.errors import ConfigError, DataError
from dualsae.report import ReportOptions, build_report
from dualsae.report.counterparts import read_counterparts
from dualsae.store.paired import open_store


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="static HTML latent browser: overview, sortable latent table, latent pages, search",
        description="Build a static site in --out that opens from file:// with no server (index.html plus "
        "data/*.js): an overview (config, explained variance on the test split, live/dead latents, matched-"
        "correlation histogram, modality-only latents, collapse rate, Fig. 2, training curve, eval table), a "
        "sortable, filterable latent table, one page per latent with the top images (thumbnails) and captions "
        "of its image and text sides, and a caption-word search. Works for an aligned folder, a shared-SAE run "
        "and a specific run (whose indices are unrelated until aligned). Thumbnails come from meta.jsonl's "
        "thumb/image/image_path fields or a thumbs/<id>.png folder beside the store (--images overrides).",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("model", help="aligned folder (dualsae align), run folder (dualsae train), SAE folder, or the folder "
                   "'dualsae align' wrote for a shared-SAE run (its collapse.json is then shown as align counted it)")
    data_arg(p, "store folder whose rows the report shows")
    p.add_argument("--out", required=True, help="folder for the site (new, empty, or this report's earlier folder, which is replaced)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out folder that holds anything else (another model's report included)")
    p.add_argument("--images", default=None, help="folder of images: meta thumb/image/image_path relative to it, or <id>.png")
    p.add_argument("--split", default="all", help="rows to show: a meta 'split' value, train/test (seeded), or all")
    p.add_argument("--top", type=int, default=12, help="top-activating rows shown as thumbnails per latent and modality")
    p.add_argument("--captions", type=int, default=40, help="top rows whose captions are listed (identical ones collapsed)")
    p.add_argument("--probe-latents", type=int, default=6,
                   help="latents (highest support-aware score) whose pages show translation and steering; 0 = none")
    p.add_argument("--probe", default="", help="comma-separated latents to show translation and steering for instead")
    p.add_argument("--alpha", type=float, default=1.0, help="steering strength relative to the mean image embedding norm")
    p.add_argument("--caption-field", default="caption", help="meta field holding the caption")
    d = ReportOptions()
    p.add_argument("--low-support", type=int, default=d.low_support, help="flag matches co-firing on fewer rows as 'low support'")
    p.add_argument("--label-words", type=int, default=d.label_words, help="caption words per automatic label (0 = no labels)")
    p.add_argument("--interval-bins", type=int, default=d.interval_bins, help="quantile bins of a latent's activations on its page")
    p.add_argument("--interval-rows", type=int, default=d.interval_per_bin, help="rows shown per quantile bin")
    p.add_argument("--overfit-ratio", type=float, default=d.overfit_ratio, help="test MSE / train MSE above which over-fitting is flagged")
    p.add_argument("--eval", dest="eval_file", default=None, help="metrics.json of 'dualsae eval' to show (default: one in the model folder)")
    p.add_argument("--compare", default=None,
                   help="--out folder of 'dualsae compare MODEL[:image|:text] B': adds each latent's counterpart in B (decoder cosine) to the table and pages")
    p.add_argument("--test-fraction", type=float, default=None, help="test share of the seeded split when the store has no 'split' field (default: the model's, else 0.2)")
    p.add_argument("--split-seed", type=int, default=None, help="seed of that split (default: the model's, else 0)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    for name in ("top", "captions", "batch_size", "interval_bins", "interval_rows"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, found {getattr(args, name)}")
    for name in ("probe_latents", "low_support", "label_words"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, found {getattr(args, name)}")
    if not args.overfit_ratio > 0:
        raise ConfigError(f"--overfit-ratio must be > 0, found {args.overfit_ratio}")
    check_finite_flag(args.alpha, "--alpha")
    resolve_device(args.device)
    try:
        probe = tuple(int(x) for x in args.probe.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--probe must be comma-separated latent numbers, found {args.probe!r}") from None
    images = Path(args.images) if args.images else None
    if images is not None and not images.is_dir():
        raise DataError(f"--images {images}: not a folder")
    counterparts = read_counterparts(args.compare) if args.compare else None
    if counterparts is not None and Path(counterparts.a_path).resolve() != Path(args.model).resolve():
        print(f"warning: {counterparts.source} compares {counterparts.a_path}, not {args.model}; its counterparts are shown by latent number")
    data = resolve_data(args, args.model)
    store = open_store(data)
    rows = store.split(args.split, *resolve_split(args, args.model)[1:]) if args.split != "all" else store
    # Explained variance is measured on the test split (the model's held-out rows), whatever --split shows.
    split_args = argparse.Namespace(split="test", test_fraction=args.test_fraction, split_seed=args.split_seed)
    _, fraction, seed = resolve_split(split_args, args.model)
    try:
        test = store.split("test", test_fraction=fraction, seed=seed)
    except DataError:
        test = None  # a store whose 'split' field has no test rows: the overview says so
    try:
        train = store.split("train", test_fraction=fraction, seed=seed)  # beside test: the over-fitting check
    except DataError:
        train = None
    options = ReportOptions(top=args.top, captions=args.captions, probe_latents=args.probe_latents, probe=probe,
                            alpha=args.alpha, caption_field=args.caption_field, images=images,
                            eval_file=Path(args.eval_file) if args.eval_file else None, batch_size=args.batch_size,
                            device=args.device, progress=not args.no_progress, low_support=args.low_support,
                            label_words=args.label_words, interval_bins=args.interval_bins, interval_per_bin=args.interval_rows,
                            overfit_ratio=args.overfit_ratio, counterparts=counterparts)
    summary = build_report(args.model, store, args.out, rows=rows, test=test, train=train, options=options,
                           data_label=str(data), split_label=args.split, overwrite=args.overwrite)
    for w in summary["warnings"]:
        print(f"warning: {w}")
    t = summary["timing"]
    print(f"{args.model} ({summary['kind']}, m={summary['m']:,}) on {summary['rows']:,} rows of {data} [{args.split}]: "
          f"{summary['thumbnails']:,} thumbnails, translation/steering for latents {summary['probes'] or 'none'}  ({t['total_s']:.1f}s)")
    print(f"  -> {Path(args.out) / 'index.html'}  (open it in a browser; no server needed)")
    return 0
