"""``dualsae align``: post-hoc alignment of a trained run (eqs. 5-7), or the collapse diagnostic of a
shared-SAE run (App. F.2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dualsae.commands.common import add_split_args, open_data, resolve_split
from dualsae.devices import resolve_device
from dualsae.errors import ConfigError
from dualsae.fingerprint import recorded_fingerprint, store_warnings
from dualsae.outdir import check_output, claim_output, commit_output
from dualsae.runlock import output_lock


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
    p.add_argument("--data", required=True, help="store folder with paired image.npy and text.npy")
    p.add_argument("--out", required=True, help="folder to write the aligned model or collapse report to")
    add_split_args(p, None)
    p.add_argument("--batch-size", type=int, default=4096, help="rows encoded per step (default: 4096)")
    p.add_argument("--solver", default="auto", choices=("auto", "scipy", "lapjv"),
                   help="assignment solver: lapjv (lapx), scipy, or auto = lapjv when lapx is installed (default: auto)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--no-correlation", action="store_true",
                   help="do not write correlation.safetensors (the live block of C; 'dualsae analyze heterogeneity' then needs --data)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace the content of an --out folder that holds something else")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dualsae.align import align
    from dualsae.run import load_model

    run_dir, out = Path(args.run), Path(args.out)
    if out.resolve() == run_dir.resolve():
        raise ConfigError(f"--out {out} is the run folder itself; choose a new folder so the trained SAEs are kept unpermuted")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, found {args.batch_size}")
    resolve_device(args.device)
    pair = load_model(run_dir, device=args.device)
    store = open_data(args.data)
    store.require_pairs("alignment (the coactivation correlation of eq. 5)")
    split, test_fraction, split_seed = resolve_split(args, run_dir)
    rows = store.split(split, test_fraction=test_fraction, seed=split_seed)
    for line in store_warnings(run_dir, rows, "align"):
        print(line, file=sys.stderr)
    job = {"run": str(run_dir.resolve()), "data": str(Path(args.data).resolve()), "split": split,
           "test_fraction": test_fraction, "split_seed": split_seed}
    check_output(out, "align", job, overwrite=args.overwrite)  # before the lock file is created in someone's folder
    with output_lock(out, "this aligned model"):
        check_output(out, "align", job, overwrite=args.overwrite)  # again, holding the lock, before the work
        result = align(pair, rows, batch_size=args.batch_size, solver=args.solver, device=args.device,
                       source=str(run_dir), progress=not args.no_progress)
        result.report.update({"data": str(args.data), "split": split, "test_fraction": test_fraction, "split_seed": split_seed,
                              "fingerprint": recorded_fingerprint(run_dir)})
        claim_output(out, "align", job, overwrite=args.overwrite)  # unfinished until commit_output
        result.save(out, save_correlation=not args.no_correlation)
        commit_output(out)
    rep = result.report
    t = rep["timing"]
    if result.kind == "collapse":
        live = rep["live"]
        rate = rep["collapse_rate"]
        print(f"{run_dir} ({rep['source_method']}, shared SAE, m={rep['m']}) on {rep['rows']:,} rows [{split}]")
        print(f"  live latents: image {live['image']:,}, text {live['text']:,}, either {live['either']:,}, both {live['both']:,}")
        print(f"  matched {rep['matched']:,}; collapsed (P(i) = i) {rep['collapsed']:,}")
        print(f"  collapse rate {100 * rate:.2f}% of live latents" if rate is not None else "  collapse rate: undefined (no live latents)")
        if rep["mean_matched_correlation"] is not None:
            print(f"  mean matched correlation {rep['mean_matched_correlation']:.4f}")
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
    print(f"  -> {out}  (correlation {t['correlation_s']:.1f}s, assignment {t['assignment_s']:.1f}s)")
    return 0
