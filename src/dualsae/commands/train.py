"""``dualsae train``: train one of the four methods on a store."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import fields
from pathlib import Path

from dualsae.commands.common import add_split_args, open_data
from dualsae.core.distributed import Distributed, resolve_device
from dualsae.core.errors import CheckpointError, ConfigError
from dualsae.training.guards import row_norm_check
from dualsae.files.jsonfiles import config_from_dict
from dualsae.files.outdir import check_output, claim_output, commit_output, read_manifest, sweep_temporaries
from dualsae.models.load import read_run_config
from dualsae.files.lock import output_lock
from dualsae.training.config import METHODS, PRESETS, TrainConfig
from dualsae.training.trainer import train

# CLI flag -> TrainConfig field, for every field a user may override.
_FLAGS: dict[str, tuple[str, type, str]] = {
    "latents": ("--latents", int, "latents m of the shared SAE; each specific SAE gets m/2"),
    "k": ("--k", int, "active latents per input, TopK's K"),
    "activation": ("--activation", str, "topk | batchtopk | relu"),
    "lr": ("--lr", float, "learning rate"),
    "beta1": ("--beta1", float, "AdamW beta1"),
    "beta2": ("--beta2", float, "AdamW beta2"),
    "eps": ("--eps", float, "AdamW epsilon"),
    "weight_decay": ("--weight-decay", float, "AdamW weight decay"),
    "batch_size": ("--batch-size", int, "pairs per step"),
    "epochs": ("--epochs", int, "passes over the training rows"),
    "warmup_frac": ("--warmup-frac", float, "linear warm-up share of the steps"),
    "schedule": ("--schedule", str, "cosine | constant"),
    "grad_clip": ("--grad-clip", float, "max gradient norm per SAE, 0 = off"),
    "seed": ("--seed", int, "random seed of initialisation and batch order"),
    "aux_k": ("--aux-k", int, "dead latents used by AuxK"),
    "aux_coef": ("--aux-coef", float, "AuxK coefficient"),
    "dead_window": ("--dead-window", int, "samples without firing before a latent counts as dead"),
    "dec_bias_init": ("--dec-bias-init", str, "geometric_median | mean | zero"),
    "l1_coef": ("--l1-coef", float, "L1 coefficient for --activation relu"),
    "group_sparse_lambda": ("--group-sparse-lambda", float, "group-sparse lambda (scale-free lambda-tilde of Prop. 3 by default)"),
    "group_sparse_scale_warmup": ("--group-sparse-scale-warmup", float,
                                  "share of the steps the warm-up that measures the group-sparse scale runs, once before training"),
    "iso_energy_beta": ("--iso-energy-beta", float, "Iso-Energy beta"),
    "iso_energy_form": ("--iso-energy-form", str, "cosine (official code) | dot (Prop. 4)"),
    "checkpoint_every": ("--checkpoint-every", int, "steps between checkpoints"),
    "log_every": ("--log-every", int, "steps between metrics.jsonl rows"),
    "selection_dtype": ("--selection-dtype", str, "float32 | bfloat16: dtype of the product that picks the active latents only; values and gradients stay float32"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train SAEs with one of the four methods",
        description="Train modality-specific SAEs (the paper's method) or a shared-SAE baseline on a "
        "paired-embedding store. Writes config.json, metrics.jsonl, checkpoints, and the trained SAE "
        "folder(s) into --out. Interrupted runs continue with --resume.",
    )
    p.add_argument("--data", required=True, help="store folder (image.npy, text.npy, optional meta.jsonl)")
    p.add_argument("--method", default=None, help=f"one of {', '.join(METHODS)} (default: specific)")
    p.add_argument("--out", required=True, help="run folder to create (or to continue with --resume)")
    p.add_argument("--preset", default=None, help=f"hyper-parameter preset: {', '.join(PRESETS)} (default: real)")
    for field_name, (flag, typ, text) in _FLAGS.items():
        p.add_argument(flag, dest=field_name, type=typ, default=None, help=f"{text} ({default_text(field_name)})")
    p.add_argument("--no-scale-free-lambda", dest="group_sparse_scale_free", action="store_const", const=False, default=None,
                   help="use --group-sparse-lambda as a raw coefficient instead of Prop. 3's scale-free lambda-tilde")
    add_split_args(p, None, model_default=False)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out (flags you give must match its config)")
    p.add_argument("--overwrite", action="store_true", help="replace the content of an --out folder that holds something else")
    p.add_argument("--allow-outliers", action="store_true",
                   help="train even on rows whose norm is over 1000x the median row norm (refused by default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto (under torchrun, cuda means each rank's own GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def default_text(name: str) -> str:
    """The real default of TrainConfig field ``name`` as help text: one value, or one per preset."""
    per_preset = {p: TrainConfig.from_preset(p, method="shared") for p in PRESETS}
    values = {p: getattr(c, name) for p, c in per_preset.items()}
    extra = {"aux_k": "min(d/2, m)", "iso_energy_beta": "4e-4 for the cosine form, 1.0 for the dot form"}
    if name in extra:
        return f"default: {extra[name]}"
    if len(set(map(repr, values.values()))) == 1:
        return f"default: {values['real']}"
    return "default: " + ", ".join(f"{v} with --preset {p}" for p, v in values.items())


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    explicit = {k: getattr(args, k) for k in known if getattr(args, k, None) is not None}
    cfg_path = Path(args.out) / "config.json"
    if args.resume and cfg_path.is_file():
        saved = read_run_config(Path(args.out))["train"]
        if not isinstance(saved, dict):
            raise CheckpointError(f"{cfg_path}: field 'train' must be a JSON object, found {json.dumps(saved)}")
        return config_from_dict(TrainConfig, {**saved, **explicit}, str(cfg_path), "training", CheckpointError)
    explicit.setdefault("method", "specific")
    preset = explicit.pop("preset", "real")
    return TrainConfig.from_preset(preset, **explicit)


def run(args: argparse.Namespace) -> int:
    if args.method is not None and args.method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, found {args.method!r}")
    if args.preset is not None and args.preset not in PRESETS:
        raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}, found {args.preset!r}")
    device = resolve_device(args.device)
    out = Path(args.out)
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it; pass one of them")
    config = _config_from_args(args)
    # The config's split (the saved one on --resume) picks the rows, so a resumed run sees the same rows.
    store = open_data(args.data).split(config.split, test_fraction=config.test_fraction, seed=config.split_seed)
    dist = Distributed.from_env(device)  # a torchrun rank, or one process (torch.distributed untouched)
    with contextlib.ExitStack() as held:
        def claim() -> None:  # rank 0 (or the one process) only; under torchrun rank 0 alone writes the folder
            for line in _data_notes(store, config, args.allow_outliers):
                print(line, file=sys.stderr)
            _claim_run(out, config, args, check_only=True)  # refuse before the lock file is created in someone's folder
            held.enter_context(output_lock(out, "this run"))  # held until the folder is committed
            _claim_run(out, config, args)

        try:
            dist.on_main(claim, str(out))  # every rank stops if rank 0 refuses the folder or the data
            train(store, config, out, resume=args.resume, device=device, progress=not args.no_progress, dist=dist)
        finally:
            dist.close()
        if dist.is_main:
            commit_output(out)
    if not dist.is_main:
        return 0
    summary = json.loads((out / "summary.json").read_text())
    final = summary.get("final", {})
    parts = ", ".join(f"{k}={v:.4g}" for k, v in final.items() if k.startswith("mse_") or k in ("l0", "dead_frac"))
    print(f"trained {config.method} ({config.latents_per_sae} latents per SAE, k={config.k}) in {summary['seconds']:.1f}s, "
          f"{summary['steps']} steps -> {args.out}  [{parts}]")
    return 0


def _data_notes(store, config: TrainConfig, allow_outliers: bool) -> list[str]:
    """Refuse outlier rows; say once which modality is missing and when the input scale is far from 1."""
    notes = row_norm_check(store, allow_outliers)
    missing = [m for m in ("image", "text") if not store.has(m)]
    if missing:
        have = "image" if store.has("image") else "text"
        what = f"the {have} SAE only" if config.method == "specific" else f"the shared SAE on {have} rows only"
        notes.insert(0, f"note: {store.root} has no {missing[0]}.npy; training {what}")
    return notes


def _claim_run(out: Path, config: TrainConfig, args: argparse.Namespace, check_only: bool = False) -> None:
    """Make ``out`` this run's folder (:mod:`dualsae.files.outdir`): a fresh run refuses a folder holding
    anything (a run: pass --resume; else --overwrite); a resume keeps the folder's unfinished manifest
    (a run folder without one, from before manifests, is adopted). ``check_only``: only refuse."""
    job = {"config": config.to_dict()}
    if args.resume:
        if check_only or not out.is_dir():
            return
        sweep_temporaries(out)
        if read_manifest(out) is None and (out / "config.json").is_file() and not (out / "summary.json").exists():
            claim_output(out, "train", job, keep=[p.name for p in out.iterdir()])
        return
    if (out / "config.json").exists() and not args.overwrite:
        raise CheckpointError(f"{out}: already holds a run (config.json); pass --resume to continue it, --overwrite to replace it, "
                              "or choose a new --out")
    if check_only:
        check_output(out, "train", job, overwrite=args.overwrite)
    else:
        claim_output(out, "train", job, overwrite=args.overwrite)
