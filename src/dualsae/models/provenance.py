"""Which store and rows a model was trained on, read back from its folder: warnings when a command
uses it on other rows (align) or on its own training rows (eval, info).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dualsae.core.errors import DualSAEError
from dualsae.models.load import recorded_data, training_rows
from dualsae.store.fingerprint import _row_ids, resume_mismatch, rows_hash, same_store
from dualsae.store.paired import PairedEmbeddings


def recorded_fingerprint(model: str | Path) -> dict | None:
    """The fingerprint a run folder (``config.json``) or an aligned folder (``alignment.json``) recorded."""

    root = Path(model)
    for name, keys in (("config.json", ("data", "fingerprint")), ("alignment.json", ("fingerprint",))):
        try:
            found: Any = json.loads((root / name).read_text())
            for key in keys:
                found = found[key]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(found, dict):
            return found
    return None


def training_overlap(recorded: dict, model: str | Path, view: PairedEmbeddings) -> int:
    """How many rows of ``view`` the model was trained on (0 when ``view`` is of another store). The
    training rows are rebuilt from the split the model records and checked against the recorded hash."""

    if not same_store(recorded, view):
        return 0
    spec = training_rows(model)
    try:
        train = replace(view, index=None).split(spec["split"], test_fraction=spec["test_fraction"], seed=spec["split_seed"])
    except Exception:  # noqa: BLE001 - a split that no longer resolves: nothing to compare against
        return 0
    if rows_hash(train) != recorded.get("train_rows_sha256"):
        return 0
    return int(np.isin(_row_ids(view), _row_ids(train), assume_unique=True).sum())


def _changed_training_store(recorded: dict, model: str | Path, view: PairedEmbeddings) -> str | None:
    """A warning when ``view`` is read from the very folder ``model`` records as its training store but
    that store is no longer the one it was trained on (rows added or removed, or rewritten): the held-out
    split is then drawn over other rows, and may hold training rows. Another folder is simply another store."""
    try:
        recorded_path = recorded_data(model)
    except DualSAEError:
        return None
    if view.root is None or Path(view.root).resolve() != recorded_path.resolve() or same_store(recorded, view):
        return None
    then, now = recorded.get("store_rows"), view.n_total
    what = f"{now:,} rows, {model} was trained on it when it had {then:,}" if then != now else \
        f"other contents than when {model} was trained on it (its sampled rows hash differently)"
    return f"warning: {view.root}: the training store of {model} now has {what}; its split may mix training rows into these numbers"


def store_warnings(model: str | Path, view: PairedEmbeddings, purpose: str) -> list[str]:
    """Loud one-line warnings about using ``view`` with ``model`` for ``purpose``:

    * ``align``: the store is not the training store, or the rows are not the training rows;
    * ``eval``: some evaluated rows were training rows.
    """
    recorded = recorded_fingerprint(model)
    if recorded is None:
        return []
    where = view.root if view.root is not None else "the store"
    if purpose == "align":
        why = resume_mismatch(recorded, view)
        return [f"warning: {where}: {why}; aligning {model} on rows it was not trained on"] if why else []
    changed = _changed_training_store(recorded, model, view)
    if changed:
        return [changed]
    overlap = training_overlap(recorded, model, view)
    if overlap:
        return [f"warning: {where}: {overlap:,} of the {view.n:,} rows used here were training rows of {model}; "
                f"these numbers are not held-out numbers"]
    return []
