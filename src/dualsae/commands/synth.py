"""``dualsae synth``: generate synthetic paired embeddings (App. E.2) and score a model on them (App. E.3)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from dualsae.commands.flags import add_flags, dataclass_flags, given
from dualsae.core.distributed import resolve_device
from dualsae.evaluation.metrics.ground_truth import evaluate_synthetic
from dualsae.files.atomic import write_json
from dualsae.files.lock import output_lock
from dualsae.files.outdir import claim_output, commit_output
from dualsae.models.load import load_model
from dualsae.store.generator import EVAL_SPLIT, SynthConfig, write_synthetic

#: The generator's flags, generated from :class:`SynthConfig` (``--alpha`` / ``--distance`` are written here: one of the two).
SYNTH_FLAGS = dataclass_flags(SynthConfig)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="synthetic data with known feature directions (App. E.2) and its five metrics (App. E.3)",
        description="Generate synthetic paired embeddings with ground-truth feature directions, or "
        "compute the five synthetic metrics of a trained model.",
    )
    sub = p.add_subparsers(dest="synth_command", metavar="SUBCOMMAND", required=True)

    g = sub.add_parser(
        "generate",
        help="write a synthetic store (image.npy, text.npy, meta.jsonl, ground_truth.safetensors, synth.json)",
        description="x = Phi z + eps_I, y = Psi z + eps_T (paper eq. 1, App. E.2). Defaults are the paper's.",
    )
    which = g.add_mutually_exclusive_group(required=True)
    which.add_argument("--alpha", type=float, help="cos(phi_i, psi_i) of every shared concept, in [-1, 1]")
    which.add_argument("--distance", type=float, help="cosine distance 1 - alpha between phi_i and psi_i (the paper's x-axis)")
    g.add_argument("--out", required=True, type=Path, help="output folder")
    add_flags(g, SYNTH_FLAGS)
    g.add_argument("--overwrite", action="store_true", help="replace the content of an --out folder that holds something else")
    g.set_defaults(func=run_generate)

    m = sub.add_parser(
        "metrics",
        help="the five synthetic metrics of a trained model (App. E.3)",
        description="Reconstruction, feature recovery, alignment, feature alignment errors and the "
        "collapse rate (plus same_index_rate) of MODEL on a synthetic store.",
    )
    m.add_argument("model", type=Path, metavar="MODEL", help="run folder from 'dualsae train' or aligned folder from 'dualsae align'")
    m.add_argument("--data", required=True, type=Path, help="synthetic store from 'dualsae synth generate'")
    m.add_argument("--split", default=EVAL_SPLIT, help=f"split for the embedding metrics (default {EVAL_SPLIT})")
    m.add_argument("--batch-size", type=int, default=4096, help="rows per encoding batch (default 4096)")
    m.add_argument("--device", default="cpu", help="torch device (default cpu)")
    m.add_argument("--out", type=Path, default=None, help="folder to also write the metrics into (metrics.json)")
    m.set_defaults(func=run_metrics)


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    alpha = args.alpha if args.alpha is not None else 1.0 - args.distance
    return SynthConfig(alpha=alpha, **given(args, SYNTH_FLAGS))


def run_generate(args: argparse.Namespace) -> int:



    config = config_from_args(args)
    with output_lock(args.out, "this store"):
        claim_output(args.out, "synth generate", asdict(config), overwrite=args.overwrite)
        out = write_synthetic(config, args.out)
        commit_output(args.out)
    print(f"wrote {config.n_rows:,} synthetic pairs (d={config.d}, alpha={config.alpha:g}, "
          f"{config.n_concepts:,} concepts) to {out}")
    return 0


def run_metrics(args: argparse.Namespace) -> int:


    resolve_device(args.device)
    pair = load_model(args.model, device=args.device)
    metrics = evaluate_synthetic(pair, args.data, split=args.split, batch_size=args.batch_size)
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:.6f}")
    if args.out is not None:
        write_json(args.out / "metrics.json", {"model": str(args.model), "data": str(args.data), "split": args.split, **metrics})
    sys.stdout.flush()
    return 0
