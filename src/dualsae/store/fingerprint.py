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
from typing import Any

import numpy as np

from dualsae.store.paired import PairedEmbeddings

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


