"""Fingerprint of the store a model was trained on, and the checks that use it.

A run records (in ``config.json``'s ``data`` section) which store and which of its rows it was
trained on: the store's row count and width, a SHA-256 of 64 rows sampled evenly over the whole
store (every modality), and a SHA-256 of the training view's row ids. Then

* ``train --resume`` refuses a store whose fingerprint differs (a resumed run must see the same
  rows to end with the weights an uninterrupted run would have);
* ``align`` warns when the store is not the training store, or the rows are not the training rows;
* ``eval`` / ``info`` warn when the rows they measure on include rows the model was trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dualsae.data import PairedEmbeddings

SAMPLED_ROWS = 64


def _row_ids(view: PairedEmbeddings) -> np.ndarray:
    return view.rows_of(np.arange(view.n)).astype(np.int64)


def rows_hash(view: PairedEmbeddings) -> str:
    """SHA-256 of the absolute row ids of a view (which rows, not their contents)."""
    return hashlib.sha256(np.ascontiguousarray(_row_ids(view)).tobytes()).hexdigest()


def content_hash(store: PairedEmbeddings) -> str:
    """SHA-256 of ``SAMPLED_ROWS`` rows spread evenly over the whole store, every modality (float32)."""
    full = replace(store, index=None)
    pos = np.unique(np.linspace(0, full.n - 1, min(SAMPLED_ROWS, full.n)).astype(np.int64))
    h = hashlib.sha256(f"{full.n_total}x{full.d}".encode())
    for mod in ("image", "text"):
        if full.has(mod):
            h.update(mod.encode())
            h.update(np.ascontiguousarray(full.read(mod, pos).numpy()).tobytes())
    return h.hexdigest()


def store_fingerprint(view: PairedEmbeddings) -> dict[str, Any]:
    """What a run records of its training rows ``view`` (a split of a store)."""
    return {"store_rows": view.n_total, "d": view.d, "content_sha256": content_hash(view),
            "train_rows": view.n, "train_rows_sha256": rows_hash(view)}


def recorded_fingerprint(model: str | Path) -> dict | None:
    """The fingerprint a run folder (``config.json``) or an aligned folder (``alignment.json``) recorded."""
    import json

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


def same_store(recorded: dict, store: PairedEmbeddings) -> bool:
    return recorded.get("store_rows") == store.n_total and recorded.get("content_sha256") == content_hash(store)


def resume_mismatch(recorded: dict, view: PairedEmbeddings) -> str | None:
    """Why ``view`` is not the training rows a run recorded (None when it is)."""
    if recorded.get("store_rows") != view.n_total:
        return f"the run was trained on a store of {recorded.get('store_rows'):,} rows, this one has {view.n_total:,}"
    if recorded.get("content_sha256") != content_hash(view):
        return "the store has the same shape but other contents (its sampled rows hash differently)"
    if recorded.get("train_rows_sha256") != rows_hash(view):
        return "the training rows differ (another split, test fraction or split seed)"
    return None


def training_overlap(recorded: dict, model: str | Path, view: PairedEmbeddings) -> int:
    """How many rows of ``view`` the model was trained on (0 when ``view`` is of another store). The
    training rows are rebuilt from the split the model records and checked against the recorded hash."""
    from dualsae.run import training_rows

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
    overlap = training_overlap(recorded, model, view)
    if overlap:
        return [f"warning: {where}: {overlap:,} of the {view.n:,} rows used here were training rows of {model}; "
                f"these numbers are not held-out numbers"]
    return []
