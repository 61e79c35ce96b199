"""``dualsae align``: post-hoc alignment of a trained run (eqs. 5-7), or the collapse diagnostic of a
shared-SAE run (App. F.2); or of any two SAE folders (``--image A --text B``, in any format
:mod:`dualsae.models.formats` reads: SAELens, sparsify, overcomplete, dictionary_learning, dualsae)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from dualsae.alignment.assignment import ALIGN_SOLVERS
from dualsae.alignment.coactivation import STATS_MODES, encode_store
from dualsae.alignment.confidence import ConfidenceOptions
from dualsae.alignment.post_hoc import align
from dualsae.alignment.pruning import KEEP, PruneOptions
from dualsae.commands.common import (
    add_split_args,
    data_arg,
    resolve_data,
    resolve_split,
)
from dualsae.commands.flags import add_flags, build_from_flags, dataclass_flags, given
from dualsae.core.distributed import Distributed, resolve_device
from dualsae.core.errors import ConfigError
from dualsae.files.outdir import check_output, written_output
from dualsae.models.formats import FORMATS
from dualsae.models.formats.pairing import imported_pair
from dualsae.models.load import load_model
from dualsae.models.pair import SAEPair
from dualsae.models.provenance import recorded_fingerprint, store_warnings
from dualsae.store.paired import open_store


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align", help="align modality-specific SAEs post hoc (or measure a shared SAE's collapse rate)",
        description="Compute the coactivation correlation C (eq. 5) of the run's SAEs on paired rows, "
        "match live image and text latents with the Hungarian algorithm (eq. 6) and permute the text "
        "SAE (eq. 7). Writes an aligned folder (image/, text/, alignment.json, correlation.safetensors). "
        "For a shared-SAE run (shared, group-sparse, iso-energy) it writes collapse.json instead: the "
        "share of live latents matched to themselves (App. F.2). With --image A --text B instead of a run: "
        "align two SAE folders of any supported format, widths and activations (SAELens, sparsify, overcomplete, "
        "dictionary_learning or dualsae; detected, --format overrides) on the paired rows of --data.",
    )
    p.add_argument("run", nargs="?", default=None, help="run folder written by 'dualsae train' (or give --image and --text)")
    p.add_argument("--image", default=None, help="image SAE folder in any supported format (with --text, instead of a run)")
    p.add_argument("--text", default=None, help="text SAE folder in any supported format (with --image, instead of a run)")
    p.add_argument("--format", default=None, choices=FORMATS,
                   help="format of --image and --text (default: detected from each folder's files)")
    data_arg(p, "store folder with paired image.npy and text.npy")
    p.add_argument("--out", required=True, help="folder to write the aligned model or collapse report to")
    add_split_args(p, None)
    p.add_argument("--batch-size", type=int, default=4096, help="rows encoded per step (default: 4096)")
    p.add_argument("--solver", default="auto", choices=ALIGN_SOLVERS,
                   help="assignment solver (eq. 6): sparse (candidate pairs, certified optimal over all pairs by dual "
                        "potentials), dense (lapjv when lapx is installed, else scipy), scipy, lapjv, or auto = dense up to "
                        "4,096 x 4,096 live latents, sparse above (default: auto)")
    p.add_argument("--stats", default="auto", choices=STATS_MODES,
                   help="coactivation statistics (eq. 5): dense [m_I, m_T] sums, sparse (co-firing pairs only), pruned "
                        "(each latent's --keep strongest co-firing pairs, the rest bounded; still certified optimal over all "
                        "pairs), or auto = dense up to 4,096 x 4,096 latents, above it pruned when the store's "
                        "co-firing pairs could pass 4 GiB of sparse statistics, else sparse (default: auto)")
    p.add_argument("--keep", type=int, default=KEEP,
                   help=f"pruned statistics: co-firing pairs kept per latent, each side (default: {KEEP})")
    p.add_argument("--tiles", type=int, default=1,
                   help="with sparse statistics, stream the store once per block of image latents so only one block's "
                        "co-firing pairs are in memory (default: 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu; under torchrun cuda is each rank's own GPU)")
    p.add_argument("--no-correlation", action="store_true",
                   help="do not write correlation.safetensors (the live block of C; 'dualsae analyze heterogeneity' then needs --data)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_confidence_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace the content of an --out folder that holds something else")
    p.set_defaults(func=run)


def imported_pair_of(args: argparse.Namespace, device) -> tuple[SAEPair, dict]:
    """The pair of ``--image`` and ``--text`` (any supported format) and where each SAE came from."""
    if not (args.image and args.text):
        raise ConfigError("--image and --text go together: give both SAE folders, or a run folder instead")
    if args.data is None:
        raise ConfigError("--data is required with --image/--text (two imported SAEs record no store)")
    pair, sources = imported_pair(args.image, args.text, args.format)
    return SAEPair(pair.method, pair.image.to(device), pair.text.to(device)), sources


def run(args: argparse.Namespace) -> int:

    if args.run is not None and (args.image or args.text):
        raise ConfigError("give a run folder or --image and --text, not both")
    if args.run is None and not (args.image or args.text):
        raise ConfigError("expected a run folder, or --image A --text B (two SAE folders)")
    if args.format and args.run is not None:
        raise ConfigError("--format applies to --image and --text; a run folder is always dualsae's")
    run_dir, out = Path(args.run if args.run is not None else args.image), Path(args.out)
    if out.resolve() in {Path(p).resolve() for p in (args.run, args.image, args.text) if p}:
        raise ConfigError(f"--out {out} is an input folder itself; choose a new folder so the trained SAEs are kept unpermuted")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, found {args.batch_size}")
    if args.tiles < 1:
        raise ConfigError(f"--tiles must be >= 1, found {args.tiles}")
    if args.keep < 1:
        raise ConfigError(f"--keep must be >= 1, found {args.keep}")
    device = resolve_device(args.device)
    dist = Distributed.from_env(device)  # a torchrun rank, or one process
    device = dist.device(device)
    sources = None
    if args.run is None:
        pair, sources = imported_pair_of(args, device)
    else:
        pair = load_model(run_dir, device=device)
    confidence = confidence_options(args)
    data = resolve_data(args, run_dir)
    store = open_store(data)
    store.require_pairs("alignment (the coactivation correlation of eq. 5)")
    split, test_fraction, split_seed = resolve_split(args, run_dir if sources is None else None)
    rows = store.split(split, test_fraction=test_fraction, seed=split_seed)
    job = {"run": str(run_dir.resolve()), "data": str(Path(data).resolve()), "split": split,
           "test_fraction": test_fraction, "split_seed": split_seed}
    if sources is not None:  # two imported SAEs: the job is both folders and the files they were read from
        job = {"image": sources["image"], "text": sources["text"], **{k: v for k, v in job.items() if k != "run"}}
    def check() -> None:  # rank 0 (or the one process); under torchrun every rank stops if it refuses
        rows.require_model_width(pair, f"{run_dir}'s")
        for line in (store_warnings(run_dir, rows, "align") if sources is None else []):
            print(line, file=sys.stderr)
        check_output(out, "align", job, overwrite=args.overwrite)  # refuse someone else's folder before the work

    codes, encode_s = None, None
    try:
        dist.on_main(check, str(out))
        if dist.enabled:
            # Each rank encodes its share of the rows (the costly part at large m) and the codes are gathered:
            # rank 0 then computes the statistics (any --stats), the assignment and the match confidence from
            # the same codes one process would have, without encoding the store a second time.
            t0 = time.perf_counter()
            codes = encode_store(pair, rows, batch_size=args.batch_size, device=device,
                                 progress=not args.no_progress and dist.is_main, dist=dist)
            encode_s = time.perf_counter() - t0
    finally:
        dist.close()
    if not dist.is_main:
        return 0
    result = align(pair, rows, codes=codes, batch_size=args.batch_size, solver=args.solver, device=device,
                   source=str(run_dir) if sources is None else None, progress=not args.no_progress, confidence=confidence,
                   stats_mode=args.stats, tiles=args.tiles, release_stats=True, prune_options=PruneOptions(keep=args.keep))
    if encode_s is not None:  # the ranks encoded the store before align(): the statistics' time includes it, as in one process
        timing = result.report["timing"]
        timing["correlation_s"] = round(timing["correlation_s"] + encode_s, 3)
        timing["encoding_s"] = round(encode_s, 3)
        if "total_s" in timing:
            timing["total_s"] = round(timing["total_s"] + encode_s, 3)
    result.report.update({"data": str(data), "split": split, "test_fraction": test_fraction, "split_seed": split_seed,
                          "fingerprint": recorded_fingerprint(run_dir) if sources is None else None})
    if sources is not None:
        result.report["sources"] = sources  # format, absolute path and SHA-256 of each file of both SAEs
    with written_output(out, "align", job, "this aligned model", overwrite=args.overwrite):  # unfinished until the block ends
        result.save(out, save_correlation=not args.no_correlation)
    rep = result.report
    t = rep["timing"]
    if result.kind == "collapse":
        live = rep["live"]
        rate = rep["collapse_rate"]
        print(f"{run_dir} ({rep['source_method']}, shared SAE, m={rep['m']}) on {rep['rows']:,} rows [{split}]")
        print(f"  live latents: image {live['image']:,}, text {live['text']:,}, either {live['either']:,}, both {live['both']:,}")
        print(f"  matched {rep['matched']:,}; collapsed (P(i) = i) {rep['collapsed']:,}; modality-only: "
              f"image {len(result.matching.image_only):,}, text {len(result.matching.text_only):,}")
        print(f"  collapse rate {100 * rate:.2f}% of live latents" if rate is not None else "  collapse rate: undefined (no live latents)")
        of_matched = rep["collapse_rate_of_matched"]
        if of_matched is not None:
            print(f"  collapse rate {100 * of_matched:.2f}% of matched pairs")
        for line in match_summary_lines(result.matching.corr, rep["matching"], rep.get("confidence")):
            print(line)
        print(f"  -> {out / 'collapse.json'}  (correlation {t['correlation_s']:.1f}s, assignment {t['assignment_s']:.1f}s)")
        return 0
    live, dead = rep["live"], rep["dead"]
    mean = rep["mean_matched_correlation"]
    if sources is not None:
        run_dir = f"{sources['image']['format']} {args.image} + {sources['text']['format']} {args.text}"
    print(f"{run_dir} ({rep['source_method']}) on {rep['rows']:,} rows [{split}], solver {rep['solver']}")
    print(f"  live latents: image {live['image']:,}/{rep['m_image']:,}, text {live['text']:,}/{rep['m_text']:,} "
          f"(dead {dead['image']:,} / {dead['text']:,})")
    print(f"  matched {rep['matched_count']:,}; image-only {len(rep['unmatched']['image_only']):,}, "
          f"text-only {len(rep['unmatched']['text_only']):,}")
    print(f"  mean matched correlation {mean:.4f}" if mean is not None else "  mean matched correlation: none matched")
    for line in match_summary_lines(result.matching.corr, rep["matched"], rep.get("confidence")):
        print(line)
    cert = rep["solver_details"].get("certificate")
    if cert is not None:
        print(f"  certificate: largest dual violation {cert['max_dual_violation']:.2e} (tolerance {cert['tolerance']:.0e}), "
              f"duality gap {cert['duality_gap']:.2e}: {'optimal over all pairs' if cert['certified'] else 'NOT certified'}; "
              f"{rep['solver_details']['candidates_final']:,} candidate pairs, {rep['solver_details']['rounds']} round(s)")
    pr = rep["solver_details"].get("pruning")
    if pr is not None:
        print(f"  pruned statistics: {pr['kept_pairs']:,} of {pr['cofiring_pairs']:,} co-firing pairs kept ({pr['keep']} per latent, "
              f"{pr['tiles']} + {pr.get('text_tiles', 0)} tile(s) of image / text latents), "
              f"{rep['solver_details'].get('resolved_pairs', 0):,} more resolved from the codes")
    print(f"  -> {out}  (correlation {t['correlation_s']:.1f}s, assignment {t['assignment_s']:.1f}s)")
    return 0


#: Match-confidence flags, generated from :class:`ConfidenceOptions` (dualsae.alignment.confidence).
CONFIDENCE_FLAGS = dataclass_flags(ConfidenceOptions)


def add_confidence_args(p: argparse.ArgumentParser) -> None:
    add_flags(p.add_argument_group("match confidence"), CONFIDENCE_FLAGS)


def confidence_options(args: argparse.Namespace) -> ConfidenceOptions:
    """The ConfidenceOptions of the flags given (the rest: the dataclass's defaults); errors name the flag."""
    mc = given(args, CONFIDENCE_FLAGS).get("min_correlation")
    values = {}
    if mc is not None and mc != "null":
        try:
            values["min_correlation"] = float(mc)
        except ValueError:
            raise ConfigError(f"--min-correlation must be a number or 'null', found {mc!r}") from None
        # A correlation lies in [-1, 1]: 1.5 would leave every pair unmatched, nan none, silently.
        if not -1 <= values["min_correlation"] <= 1:
            raise ConfigError(f"--min-correlation must be a correlation in [-1, 1] or 'null', found {mc}")
    return build_from_flags(ConfidenceOptions, args, CONFIDENCE_FLAGS, **values)


def match_summary_lines(corr, matched: dict, confidence: dict | None) -> list[str]:
    """Console lines: quartiles of the matched correlations, support, how many beat the null."""

    if len(corr) == 0:
        return []
    q = np.quantile(corr, [0.1, 0.25, 0.5, 0.75, 0.9])
    bins = np.histogram(corr, bins=[-1, 0, 0.2, 0.4, 0.6, 0.8, 1.0001])[0]
    lines = [f"  matched correlation: p10 {q[0]:.3f}  q1 {q[1]:.3f}  median {q[2]:.3f}  q3 {q[3]:.3f}  p90 {q[4]:.3f}",
             "    c <0 / 0-.2 / .2-.4 / .4-.6 / .6-.8 / .8-1: " + " / ".join(f"{b:,}" for b in bins)]
    if confidence is not None and "support" in matched:
        sup = np.asarray(matched["support"])
        sq = np.quantile(sup, [0.25, 0.5, 0.75])
        lines.append(f"  co-firing support (rows): q1 {sq[0]:,.0f}  median {sq[1]:,.0f}  q3 {sq[2]:,.0f};  "
                     f"below 5 rows: {int((sup < 5).sum()):,}")
        if confidence.get("above_null") is not None:
            lines.append(f"  above their permutation-null threshold (q{confidence['quantile']:g}, {confidence['shuffles']} shuffles): "
                         f"{confidence['above_null']:,} of {len(sup):,}")
        if confidence.get("dropped_by_threshold"):
            lines.append(f"  left unmatched by --min-correlation {confidence['min_correlation']} / --min-support "
                         f"{confidence['min_support']}: {confidence['dropped_by_threshold']:,} pairs (now modality-only)")
    return lines
