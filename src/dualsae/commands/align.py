"""``dualsae align``: post-hoc alignment of a trained run (eqs. 5-7), or the collapse diagnostic of a
shared-SAE run (App. F.2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from dualsae.alignment.assignment import ALIGN_SOLVERS
from dualsae.alignment.confidence import ConfidenceOptions
from dualsae.alignment.correlation import STATS_MODES, coactivation_correlation
from dualsae.alignment.post_hoc import align
from dualsae.commands.common import (
    add_split_args,
    data_arg,
    resolve_data,
    resolve_split,
)
from dualsae.commands.flags import add_flags, dataclass_flags, given
from dualsae.core.distributed import Distributed, resolve_device
from dualsae.core.errors import ConfigError
from dualsae.files.outdir import check_output, written_output
from dualsae.models.load import load_model
from dualsae.models.provenance import recorded_fingerprint, store_warnings
from dualsae.store.paired import open_store


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align", help="align modality-specific SAEs post hoc (or measure a shared SAE's collapse rate)",
        description="Compute the coactivation correlation C (eq. 5) of the run's SAEs on paired rows, "
        "match live image and text latents with the Hungarian algorithm (eq. 6) and permute the text "
        "SAE (eq. 7). Writes an aligned folder (image/, text/, alignment.json, correlation.safetensors). "
        "For a shared-SAE run (shared, group-sparse, iso-energy) it writes collapse.json instead: the "
        "share of live latents matched to themselves (App. F.2).",
    )
    p.add_argument("run", help="run folder written by 'dualsae train'")
    data_arg(p, "store folder with paired image.npy and text.npy")
    p.add_argument("--out", required=True, help="folder to write the aligned model or collapse report to")
    add_split_args(p, None)
    p.add_argument("--batch-size", type=int, default=4096, help="rows encoded per step (default: 4096)")
    p.add_argument("--solver", default="auto", choices=ALIGN_SOLVERS,
                   help="assignment solver (eq. 6): sparse (candidate pairs, certified optimal over all pairs by dual "
                        "potentials), dense (lapjv when lapx is installed, else scipy), scipy, lapjv, or auto = dense up to "
                        "4,096 x 4,096 live latents, sparse above (default: auto)")
    p.add_argument("--stats", default="auto", choices=STATS_MODES,
                   help="coactivation statistics (eq. 5): dense [m_I, m_T] sums, sparse (co-firing pairs only), or auto = "
                        "dense up to 4,096 x 4,096 latents, sparse above (default: auto)")
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


def run(args: argparse.Namespace) -> int:

    run_dir, out = Path(args.run), Path(args.out)
    if out.resolve() == run_dir.resolve():
        raise ConfigError(f"--out {out} is the run folder itself; choose a new folder so the trained SAEs are kept unpermuted")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, found {args.batch_size}")
    if args.tiles < 1:
        raise ConfigError(f"--tiles must be >= 1, found {args.tiles}")
    device = resolve_device(args.device)
    dist = Distributed.from_env(device)  # a torchrun rank, or one process
    device = dist.device(device)
    pair = load_model(run_dir, device=device)
    confidence = confidence_options(args)
    data = resolve_data(args, run_dir)
    store = open_store(data)
    store.require_pairs("alignment (the coactivation correlation of eq. 5)")
    split, test_fraction, split_seed = resolve_split(args, run_dir)
    rows = store.split(split, test_fraction=test_fraction, seed=split_seed)
    job = {"run": str(run_dir.resolve()), "data": str(Path(data).resolve()), "split": split,
           "test_fraction": test_fraction, "split_seed": split_seed}
    def check() -> None:  # rank 0 (or the one process); under torchrun every rank stops if it refuses
        rows.require_model_width(pair, f"{run_dir}'s")
        for line in store_warnings(run_dir, rows, "align"):
            print(line, file=sys.stderr)
        check_output(out, "align", job, overwrite=args.overwrite)  # refuse someone else's folder before the work

    stats = None
    try:
        dist.on_main(check, str(out))
        if dist.enabled:  # each rank streams its batches; the eq. 5 sums are all-reduced; rank 0 goes on
            stats = coactivation_correlation(pair, rows, batch_size=args.batch_size, device=device,
                                             progress=not args.no_progress and dist.is_main, dist=dist,
                                             stats=args.stats, tiles=args.tiles)
    finally:
        dist.close()
    if not dist.is_main:
        return 0
    result = align(pair, rows, stats=stats, batch_size=args.batch_size, solver=args.solver, device=device,
                   source=str(run_dir), progress=not args.no_progress, confidence=confidence,
                   stats_mode=args.stats, tiles=args.tiles)
    result.report.update({"data": str(data), "split": split, "test_fraction": test_fraction, "split_seed": split_seed,
                          "fingerprint": recorded_fingerprint(run_dir)})
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
    print(f"  -> {out}  (correlation {t['correlation_s']:.1f}s, assignment {t['assignment_s']:.1f}s)")
    return 0


#: Match-confidence flags, generated from :class:`ConfidenceOptions` (dualsae.alignment.confidence).
CONFIDENCE_FLAGS = dataclass_flags(ConfidenceOptions)


def add_confidence_args(p: argparse.ArgumentParser) -> None:
    add_flags(p.add_argument_group("match confidence"), CONFIDENCE_FLAGS)


def confidence_options(args: argparse.Namespace) -> ConfidenceOptions:
    """The ConfidenceOptions of the flags given (the rest: the dataclass's defaults)."""
    kw = given(args, CONFIDENCE_FLAGS)
    mc = kw.get("min_correlation")
    if mc is not None and mc != "null":
        try:
            kw["min_correlation"] = float(mc)
        except ValueError:
            raise ConfigError(f"--min-correlation must be a number or 'null', found {mc!r}") from None
    return ConfidenceOptions(**kw)


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
