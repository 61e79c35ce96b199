"""``dualsae train``: train one of the four methods on a store."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from dualsae.commands.common import add_split_args
from dualsae.commands.flags import Flag, add_flags, dataclass_flags, given
from dualsae.core.distributed import Distributed, resolve_device
from dualsae.core.errors import CheckpointError, ConfigError, DataError, DualSAEError
from dualsae.evaluation.generalization import generalization_lines, train_test_reconstruction
from dualsae.files.lock import output_lock
from dualsae.files.outdir import (
    check_output,
    claim_output,
    commit_output,
    read_claim,
    read_manifest,
    remove_if_unused,
    sweep_temporaries,
)
from dualsae.models.load import load_model, read_run_config
from dualsae.models.sae import SAEConfig
from dualsae.store.paired import open_store
from dualsae.training.config import METHODS, PRESETS, TrainConfig
from dualsae.training.guards import row_norm_check
from dualsae.training.run_folder import drop_checkpoint, saved_completely
from dualsae.training.trainer import train

#: Every TrainConfig field a user may set (the SAE fields in the place of ``sae``), from the fields' metadata.
FLAGS: list[Flag] = dataclass_flags(TrainConfig, nested={"sae": SAEConfig})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train SAEs with one of the four methods",
        description="Train modality-specific SAEs (the paper's method) or a shared-SAE baseline on a "
        "paired-embedding store. Writes config.json, metrics.jsonl, checkpoints, and the trained SAE "
        "folder(s) into --out. Interrupted runs continue with --resume.",
    )
    p.add_argument("--data", required=True, help="store folder (image.npy, text.npy, optional meta.jsonl)")
    p.add_argument("--out", required=True, help="run folder to create (or to continue with --resume)")
    add_flags(p, FLAGS, default_text)
    add_split_args(p, None, model_default=False)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out (flags you give must match its config)")
    p.add_argument("--overwrite", action="store_true", help="replace the content of an --out folder that holds something else")
    p.add_argument("--allow-outliers", action="store_true",
                   help="train even on rows whose norm is over 1000x the median row norm (refused by default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto (under torchrun, cuda means each rank's own GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def default_text(flag: Flag) -> str:
    """The real default of a flag's field as help text: one value, or one per preset."""
    if flag.default_note is not None:
        return f"default: {flag.default_note}"
    if flag.dest in ("method", "preset"):  # not preset values: what an unset flag means
        return f"default: {getattr(TrainConfig(), flag.dest)}"
    values = {p: TrainConfig.from_preset(p, method="shared").flat_dict()[flag.dest] for p in PRESETS}
    if len(set(map(repr, values.values()))) == 1:
        return f"default: {values['real']}"
    return "default: " + ", ".join(f"{v} with --preset {p}" for p, v in values.items())


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    explicit = given(args, FLAGS)
    # The split fields' flags are the shared ones of commands.common.add_split_args.
    explicit.update({k: getattr(args, k) for k in ("split", "test_fraction", "split_seed") if getattr(args, k, None) is not None})
    cfg_path = Path(args.out) / "config.json"
    if args.resume and cfg_path.is_file():
        saved = read_run_config(Path(args.out))["train"]
        if not isinstance(saved, dict):
            raise CheckpointError(f"{cfg_path}: field 'train' must be a JSON object, found {json.dumps(saved)}")
        try:
            return TrainConfig.from_dict(saved, str(cfg_path)).with_overrides(**explicit)
        except ConfigError as e:  # a flag's value out of range: say which run it was laid over
            raise CheckpointError(f"{cfg_path}: {e}") from None
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
    if args.resume and _finish_saved_run(out):
        return 0
    if args.resume and _stopped_before_config(out, config):
        print(f"note: {out} was stopped before its config.json was written; starting the run afresh", file=sys.stderr)
        args.resume = False
    # The config's split (the saved one on --resume) picks the rows, so a resumed run sees the same rows.
    store = open_store(args.data).split(config.split, test_fraction=config.test_fraction, seed=config.split_seed)
    dist = Distributed.from_env(device)  # a torchrun rank, or one process (torch.distributed untouched)
    claimed: list[bool] = []  # rank 0 holds the lock and wrote the claim (only then may it remove the folder)
    with contextlib.ExitStack() as held:
        def claim() -> None:  # rank 0 (or the one process) only; under torchrun rank 0 alone writes the folder
            for line in _data_notes(store, config, args.allow_outliers):
                print(line, file=sys.stderr)
            _claim_run(out, config, args, check_only=True)  # refuse before the lock file is created in someone's folder
            held.enter_context(output_lock(out, "this run"))  # held until the folder is committed
            _claim_run(out, config, args)
            claimed.append(True)

        try:
            dist.on_main(claim, str(out))  # every rank stops if rank 0 refuses the folder or the data
            train(store, config, out, resume=args.resume, device=device, progress=not args.no_progress, dist=dist)
        except DualSAEError:
            # Refused before anything was written (batch larger than the split, a missing modality...):
            # leave no folder holding only the unfinished claim, which the corrected rerun would refuse.
            if claimed and not args.resume:
                remove_if_unused(out)
            raise
        finally:
            dist.close()
        if dist.is_main:
            commit_output(out)
    if not dist.is_main:
        return 0
    summary = json.loads((out / "summary.json").read_text())
    final = summary.get("final", {})
    parts = ", ".join(f"{k}={v:.4g}" for k, v in final.items() if k.startswith("mse_") or k in ("l0", "dead_frac"))
    scaled = {name: c for name, c in summary.get("input_scale", {}).items() if c != 1.0}
    if scaled:  # the logged losses are those of the scaled rows; the saved SAEs take raw rows
        parts += "; losses of the rows x " + ", ".join(f"{c:.4g} ({name})" for name, c in scaled.items()) + ", folded into the saved weights"
    print(f"trained {config.method} ({config.latents_per_sae} latents per SAE, k={config.sae.k}) in {summary['seconds']:.1f}s, "
          f"{summary['steps']} steps -> {args.out}  [{parts}]")
    for line in _generalization(out, args.data, config, device):
        print(line)
    return 0


#: Rows per split measured after training (an evenly spaced subset beyond it): seconds on any store.
CHECK_ROWS = 20_000


def _generalization(out: Path, data: str, config: TrainConfig, device) -> list[str]:
    """Train and held-out reconstruction side by side, flagging over-fitting
    (:mod:`dualsae.evaluation.generalization`); nothing when the run trained on every row."""
    if config.split != "train":
        return []
    full = open_store(data)
    try:
        train_rows = full.split("train", test_fraction=config.test_fraction, seed=config.split_seed)
        test_rows = full.split("test", test_fraction=config.test_fraction, seed=config.split_seed)
    except DataError:
        return []
    if not train_rows.n or not test_rows.n:
        return []
    result = train_test_reconstruction(load_model(out, device=device), train_rows, test_rows, max_rows=CHECK_ROWS, device=str(device))
    return [f"reconstruction of the final model (eq. 4 MSE, up to {CHECK_ROWS:,} rows per split; "
            f"over-fitting: test/train MSE > {result['overfit_ratio']:g}):", *generalization_lines(result)]


def _finish_saved_run(out: Path) -> bool:
    """``--resume`` of a run killed after its weights and ``summary.json`` were saved but before its
    manifest was committed (while the checkpoint was removed, or in the commit itself): finish those
    last steps instead of calling it both unfinished (readers) and finished (resume). Returns whether
    it did; a committed run is refused as finished, as before."""
    manifest = read_manifest(out)
    if manifest is None or manifest.get("complete") or not saved_completely(out):
        return False
    with output_lock(out, "this run"):
        sweep_temporaries(out)
        drop_checkpoint(out)
        commit_output(out)
    print(f"{out}: training had finished (summary.json and the SAE folders were saved); completed its last step (manifest)")
    return True


def _stopped_before_config(out: Path, config: TrainConfig) -> bool:
    """A folder this very run claimed (its unfinished manifest names this job) but was killed in before
    ``config.json`` existed: nothing to resume, so ``--resume`` starts it (as the same run without it would)."""
    manifest = read_claim(out)
    return (not (out / "config.json").exists() and manifest is not None and not manifest.get("complete")
            and manifest.get("command") == "train" and manifest.get("job") == check_job(config))


def _data_notes(store, config: TrainConfig, allow_outliers: bool) -> list[str]:
    """Refuse outlier rows; say once which modality is missing and when the input scale is far from 1."""
    notes = row_norm_check(store, allow_outliers, config.input_scale)
    missing = [m for m in ("image", "text") if not store.has(m)]
    if missing:
        have = "image" if store.has("image") else "text"
        what = f"the {have} SAE only" if config.method == "specific" else f"the shared SAE on {have} rows only"
        notes.insert(0, f"note: {store.root} has no {missing[0]}.npy; training {what}")
    return notes


def check_job(config: TrainConfig) -> dict:
    """The job a run folder's manifest records (as JSON reads it back)."""
    return json.loads(json.dumps({"config": config.to_dict()}, default=str))


def _claim_run(out: Path, config: TrainConfig, args: argparse.Namespace, check_only: bool = False) -> None:
    """Make ``out`` this run's folder (:mod:`dualsae.files.outdir`): a fresh run refuses a folder holding
    anything (a run: pass --resume; else --overwrite); a resume keeps the folder's unfinished manifest
    (a run folder without one, from before manifests, is adopted). ``check_only``: only refuse."""
    job = check_job(config)
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
