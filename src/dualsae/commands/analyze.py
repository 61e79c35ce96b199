"""``dualsae analyze``: heterogeneity of matched feature directions (Fig. 2) and top-activating
examples of a latent."""

from __future__ import annotations

import argparse
from pathlib import Path

from dualsae.commands.common import (
    check_batch_size,
    check_width,
    resolve_data,
)
from dualsae.core.distributed import resolve_device
from dualsae.core.errors import ConfigError
from dualsae.evaluation.heterogeneity import (
    heterogeneity_from_folder,
    plot_heterogeneity,
)
from dualsae.evaluation.top_rows import top_examples_many
from dualsae.files.atomic import write_json
from dualsae.files.outdir import written_output
from dualsae.models.load import load_model
from dualsae.store.paired import open_store


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="heterogeneity of feature directions, top-activating examples",
        description="Analyses of a trained or aligned model. Run 'dualsae analyze WHAT --help'.",
    )
    what = p.add_subparsers(dest="analysis", metavar="WHAT")
    p.set_defaults(func=lambda args: _usage(p))

    h = what.add_parser(
        "heterogeneity", help="cosine distance of image/text decoder directions by coactivation bin (Fig. 2)",
        description="For every live image latent i and live text latent j: the cosine distance "
        "1 - cos(phi_i, psi_j) of their decoder columns, grouped by the coactivation correlation c_ij "
        "(eq. 5) into [0,0.2), [0.2,0.4), [0.4,0.6), [0.6,0.8), [0.8,1.0]; pairs with c < 0 are only "
        "counted. Uses the correlation.safetensors that 'dualsae align' stored, or recomputes C from "
        "--data (required for a plain run folder or a folder aligned with --no-correlation). Writes "
        "heterogeneity.json and heterogeneity.png into --out.",
    )
    h.add_argument("model", help="aligned folder (dualsae align) or run folder (then --data is required)")
    h.add_argument("--data", default=None, help="store to recompute C on (default: use the stored correlation)")
    h.add_argument("--split", default="train", help="rows of --data to use: a meta 'split' value, train/test by seed, or all (default: train)")
    h.add_argument("--out", required=True, help="folder for heterogeneity.json and heterogeneity.png")
    h.add_argument("--batch-size", type=int, default=4096)
    h.add_argument("--device", default="cpu")
    h.add_argument("--title", default="", help="figure title")
    h.add_argument("--no-progress", action="store_true")
    h.add_argument("--overwrite", action="store_true", help="replace the content of an --out folder that holds something else")
    h.set_defaults(func=run_heterogeneity)

    t = what.add_parser(
        "top", help="captions of the rows that activate latents most",
        description="Print the rows of --data on which each latent J (shared index of an aligned model) is "
        "most active, with their captions from meta.jsonl, for one or both modalities: the share of rows "
        "on which the latent fires, then the top rows with identical captions merged (xN = N rows share "
        "the caption; the strongest is shown). One pass over the store serves every latent given.",
    )
    t.add_argument("model", help="aligned folder or run folder")
    t.add_argument("--data", default=None, help="store folder (meta.jsonl gives the captions; default: the store recorded in the model's folder)")
    t.add_argument("--latent", type=int, nargs="+", required=True, help="latent index J (several allowed)")
    t.add_argument("--no-collapse", action="store_true", help="list every row, identical captions included")
    t.add_argument("--modality", choices=("image", "text", "both"), default="both", help="encoder to use (default: both)")
    t.add_argument("-n", type=int, default=10, help="examples per modality (default: 10)")
    t.add_argument("--split", default="all", help="rows of --data to search (default: all)")
    t.add_argument("--batch-size", type=int, default=4096)
    t.add_argument("--device", default="cpu")
    t.set_defaults(func=run_top)


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def run_heterogeneity(args: argparse.Namespace) -> int:

    check_batch_size(args.batch_size)
    resolve_device(args.device)
    out = Path(args.out)
    job = {"model": str(Path(args.model).resolve()), "data": str(Path(args.data).resolve()) if args.data else None, "split": args.split}
    store = open_store(args.data).split(args.split) if args.data else None
    with written_output(out, "analyze heterogeneity", job, "this analysis", overwrite=args.overwrite):
        result, source = heterogeneity_from_folder(args.model, store, batch_size=args.batch_size, device=args.device,
                                                   progress=not args.no_progress)
        summary = {**result.to_json(), "model": str(args.model), "correlation_source": source}
        write_json(out / "heterogeneity.json", summary)
        plot_heterogeneity(result, out / "heterogeneity.png", title=args.title or f"Heterogeneity: {Path(args.model).name}")
    print(f"{args.model}: live image {result.live_image:,}, text {result.live_text:,}; {result.pairs:,} pairs; C from {source}")
    print(f"  {'c bin':<12} {'pairs':>12} {'mean':>7} {'q1':>7} {'median':>7} {'q3':>7}")
    fmt = lambda v: f"{v:7.4f}" if v is not None else f"{'-':>7}"  # noqa: E731
    for b in result.bins:
        print(f"  {b['bin']:<12} {b['count']:>12,} {fmt(b['mean'])} {fmt(b['q1'])} {fmt(b['median'])} {fmt(b['q3'])}"
              + ("" if b["quantiles_exact"] else "  (quartiles from a 1e-4 histogram)")
              + ("" if b.get("complete", True) else "  (pruned C: listed pairs only)"))
    print(f"  {'c < 0':<12} {result.negative_count:>12,}  (in no bin)")
    if result.matched:
        m = result.matched
        print(f"  matched pairs: {m['count']:,}, cosine distance mean {m['mean']:.4f}, median {m['median']:.4f}")
    print(f"  -> {out / 'heterogeneity.json'}, {out / 'heterogeneity.png'}")
    return 0


def run_top(args: argparse.Namespace) -> int:

    if args.n < 1:
        raise ConfigError(f"-n must be >= 1, found {args.n}")
    check_batch_size(args.batch_size)
    resolve_device(args.device)
    pair = load_model(args.model, device=args.device)
    data = resolve_data(args, args.model)
    store = open_store(data).split(args.split)
    check_width(pair, store, args.model)
    mods = [m for m in (("image", "text") if args.modality == "both" else (args.modality,)) if store.has(m)]
    found = {mod: top_examples_many(pair, store, args.latent, mod, n=args.n, collapse=not args.no_collapse,
                                    batch_size=args.batch_size, device=args.device) for mod in mods}
    for a, latent in enumerate(args.latent):
        match = _matched_info(pair, latent)
        print(f"latent {latent} of {args.model}" + (f" ({match})" if match else ""))
        for mod in mods:
            ex = found[mod][a]
            print(f"  {mod}: fires on {ex.fired:,} of {ex.n_rows:,} rows ({100 * ex.frequency:.2f}%)" + (":" if ex.rows else ""))
            for r in ex.rows:
                rid = str(r["meta"].get("id", r["meta"].get("key", r["meta"].get("image_path", ""))))
                rid = rid if len(rid) <= 20 else rid[:19] + "…"
                count = f"x{r['count']}" if r["count"] > 1 else ""
                print(f"    {r['activation']:8.4f}  row {r['row']:>7}  {rid!s:<14} {count:>5} {r['caption'] if r['caption'] is not None else ''}")
    return 0


def _matched_info(pair, latent: int) -> str | None:
    """'matched c = ..., support ...' of the matched pair at this shared index, if the model is aligned."""
    alignment = getattr(pair, "alignment", None)
    if not alignment or "matched" not in alignment:
        return None
    matched = alignment["matched"]
    try:
        pos = matched["image"].index(latent)
    except ValueError:
        return "not matched: modality-only or dead"
    text = f"matched c = {float(matched['correlation'][pos]):.3f}"
    if "support" in matched:
        text += f", co-fires on {matched['support'][pos]:,} rows"
    null = matched.get("null_threshold", [None] * (pos + 1))[pos]
    if null is not None:
        text += f", null threshold {null:.3f}"
    return text
