"""Helpers shared by the CLI subcommands."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from dualsae.core.errors import ConfigError, DataError
from dualsae.files.folders import check_writable, make_folder
from dualsae.models.load import recorded_data, training_rows
from dualsae.store.paired import PairedEmbeddings


def data_arg(p: argparse.ArgumentParser, what: str = "store folder (image.npy, text.npy, meta.jsonl; or clip-retrieval output)") -> None:
    """--data, defaulting to the store the model was trained / aligned on (see :func:`resolve_data`)."""
    p.add_argument("--data", default=None, help=f"{what} (default: the store recorded in the model's folder)")


def resolve_data(args: argparse.Namespace, model: str | Path) -> str:
    """``--data`` if given, else the store ``model``'s folder records (:func:`dualsae.models.load.recorded_data`)."""

    if getattr(args, "data", None):
        return args.data
    return str(recorded_data(model))


def add_split_args(p: argparse.ArgumentParser, default: str | None, model_default: bool = True) -> None:
    """--split / --test-fraction / --split-seed. ``default`` None: the split the model was trained on.
    With ``model_default`` the seeded split's fraction and seed default to the model's (see
    :func:`resolve_split`), so held-out rows stay held out."""
    whose = "the model's training run, else " if model_default else ""
    p.add_argument("--split", default=default,
                   help="rows to use: a value of meta.jsonl's 'split' field, or train/test drawn by seed when the store "
                        f"has none, or 'all' (default: {default or whose + 'train'})")
    p.add_argument("--test-fraction", type=float, default=None,
                   help=f"test share of the seeded split when the store has no 'split' field (default: {whose}0.2)")
    p.add_argument("--split-seed", type=int, default=None, help=f"seed of that split (default: {whose}0)")


def resolve_split(args: argparse.Namespace, model: str | Path | None = None) -> tuple[str, float, int]:
    """(split, test_fraction, seed): the flags given, else what ``model``'s folder records
    (:func:`dualsae.models.load.training_rows`), else train / 0.2 / 0."""

    spec = training_rows(model)
    split = args.split or spec["split"]
    fraction = spec["test_fraction"] if args.test_fraction is None else args.test_fraction
    seed = spec["split_seed"] if args.split_seed is None else args.split_seed
    if not 0 < fraction < 1:
        raise ConfigError(f"--test-fraction must be in (0, 1), found {fraction}")
    return split, fraction, seed


def select_split(store: PairedEmbeddings, args: argparse.Namespace, model: str | Path | None = None) -> PairedEmbeddings:
    split, fraction, seed = resolve_split(args, model)
    return store.split(split, test_fraction=fraction, seed=seed)


def check_batch_size(value: int, flag: str = "--batch-size") -> None:
    if value < 1:
        raise ConfigError(f"{flag} must be >= 1, found {value}")


def check_width(pair, store: PairedEmbeddings, model: str | Path) -> None:
    """The store's rows must have the width the model's SAEs embed (one line instead of a matmul error)."""
    store.require_model_width(pair, f"{model}'s")


def read_embeddings_file(path: str | Path, d: int, flag: str = "--embeddings") -> np.ndarray:
    """The [q, d] float32 queries of a user's ``.npy`` file, refused in one line naming the file and
    ``flag`` when they are not a non-empty 1-D/2-D array of finite floats of width ``d`` (strings,
    integers, objects, no rows, NaN or inf would give exit 0 and meaningless neighbours)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {flag} {'is a folder' if path.is_dir() else 'missing'}; expected a .npy file of [q, {d}] embeddings")
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: {flag} is not a readable .npy file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        kind = type(x).__name__ if not isinstance(x, np.ndarray) else f"dtype {x.dtype}"
        raise DataError(f"{path}: {flag} holds {kind}; expected floating-point embeddings (float16/32/64)")
    x = np.atleast_2d(x)
    if x.ndim != 2 or x.shape[1] != d or x.shape[0] == 0:
        raise DataError(f"{path}: {flag} has shape {list(x.shape)}; expected [q, {d}] embeddings with q >= 1")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise DataError(f"{path}: {flag} row {row} contains {'NaN' if np.isnan(x[row]).any() else 'inf'}; expected finite values")
    return x.astype(np.float32)


def check_finite_flag(value: float, flag: str) -> None:
    """A float flag (``--alpha``) must be a finite number: argparse's ``float`` accepts 'nan' and 'inf'."""
    if not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, found {value}")


def prepare_out_folder(out: str | Path | None, flag: str = "--out") -> Path | None:
    """Create ``--out`` (a folder a command writes one small file into) and check it is writable, before
    any work: an existing file, a path under a file, a read-only or full disk are one line."""
    if out is None:
        return None
    folder = make_folder(out)
    check_writable(folder)
    return folder
