"""Sharded, resumable extraction output: each shard of records is embedded and written atomically into
``OUT/.shards/``; a rerun skips finished shards; the last step assembles the store's arrays and
``meta.jsonl`` from them.
"""

from __future__ import annotations

import json
import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from dualsae.core.errors import DataError
from dualsae.extract.encoder import DualEncoder
from dualsae.extract.records import (
    ImageLoadError,
    Record,
    _first_line,
    describe_ref,
    load_image,
)
from dualsae.files.atomic import atomic_path, write_json, write_npy, write_text

SHARDS_DIR = ".shards"


@dataclass
class ShardResult:
    """One shard's output. image/text: [rows, d] (None when the source has no such modality)."""

    image: np.ndarray | None
    text: np.ndarray | None
    meta: list[dict]
    failures: list[dict]
    images_embedded: int
    texts_embedded: int


def _prepare_record(encoder: DualEncoder, record: Record) -> dict[str, torch.Tensor] | str:
    """Decode + preprocess one image; an error message instead when it cannot be read."""
    try:
        return encoder.prepare_image(load_image(record.image))
    except ImageLoadError as e:
        return str(e)
    except (OSError, ValueError) as e:  # the processor rejected the decoded image (e.g. 1x1 pixel)
        return f"{describe_ref(record.image, record.meta)}: preprocessing failed ({_first_line(e)})"


def _prepared_batches(encoder: DualEncoder, records: list[Record], batch_size: int,
                      pool: ThreadPoolExecutor | None) -> Iterator[tuple[list[Record], list]]:
    """Batches of (records, prepared-or-error); the pool prepares two batches ahead of the model."""
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    if pool is None:
        for b in batches:
            yield b, [_prepare_record(encoder, r) for r in b]
        return
    pending: deque[tuple[list[Record], list[Future]]] = deque()
    for b in batches:
        pending.append((b, [pool.submit(_prepare_record, encoder, r) for r in b]))
        if len(pending) > 2:
            head, futs = pending.popleft()
            yield head, [f.result() for f in futs]
    while pending:
        head, futs = pending.popleft()
        yield head, [f.result() for f in futs]


def embed_shard(encoder: DualEncoder, records: list[Record], first_index: int, kind: str, batch_size: int,
                pool: ThreadPoolExecutor | None = None, on_images: Callable[[int], None] | None = None) -> ShardResult:
    """Embed one shard of records.

    kind ``paired``: one row per (image, caption); the image is embedded once and repeated for
    each caption. kind ``classes``: one image row per record, no text. Records that cannot be
    read (or, paired, have no caption) are skipped and listed in ``failures``.
    """
    failures: list[dict] = []
    todo: list[Record] = []
    for i, r in enumerate(records):
        if kind == "paired" and not r.captions:
            failures.append({"record": first_index + i, "image": describe_ref(r.image, r.meta), "error": "no caption"})
        else:
            todo.append(r)
    index_of = {id(r): first_index + i for i, r in enumerate(records)}
    kept: list[Record] = []
    image_parts: list[np.ndarray] = []
    for batch, prepared in _prepared_batches(encoder, todo, batch_size, pool):
        ok = []
        for r, p in zip(batch, prepared):
            if isinstance(p, str):
                failures.append({"record": index_of[id(r)], "image": describe_ref(r.image, r.meta), "error": p})
            else:
                ok.append(p)
                kept.append(r)
        if ok:
            image_parts.append(encoder.embed_prepared(ok))
        if on_images is not None:
            on_images(len(batch))
    if on_images is not None and len(todo) < len(records):
        on_images(len(records) - len(todo))
    failures.sort(key=lambda f: f["record"])
    images = np.concatenate(image_parts, axis=0) if image_parts else None
    if kind == "classes":
        return ShardResult(images, None, [dict(r.meta) for r in kept], failures, len(kept), 0)
    captions = [c for r in kept for c in r.captions]
    meta = [{**r.meta, "caption": c} for r in kept for c in r.captions]
    texts = encoder.embed_texts_batched(captions, batch_size) if captions else None
    if images is not None:
        images = np.repeat(images, [len(r.captions) for r in kept], axis=0)
    return ShardResult(images, texts, meta, failures, len(kept), len(captions))


class ShardDir:
    """``OUT/.shards``: ``progress.json`` (the settings) and the finished shards.

    A shard's files are written (each atomically) before its ``NNNNN.done.json`` (its entry), so
    a shard with an entry is complete; files of a shard without one are overwritten on resume.
    One entry file per shard (rather than one list) lets torchrun ranks finish shards in any
    order without sharing a file; a resume may use another number of ranks.
    """

    def __init__(self, out: Path, settings: dict):
        self.dir = out / SHARDS_DIR
        self.settings = settings
        self.progress_path = self.dir / "progress.json"
        self.shards: list[dict] = []
        if self.progress_path.is_file():
            state = json.loads(self.progress_path.read_text())
            if state.get("settings") != settings:
                diff = sorted(k for k in set(settings) | set(state.get("settings", {}))
                              if settings.get(k) != state.get("settings", {}).get(k))
                raise DataError(f"{self.progress_path}: an unfinished extraction with other settings ({', '.join(diff)}) "
                                f"is in this folder; rerun with the same settings to resume, or delete {self.dir}")
        if self.dir.is_dir():
            self.reload()

    def start(self) -> None:
        """Record the settings (before any shard is written)."""
        if not self.progress_path.is_file():
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(self.progress_path, {"settings": self.settings})

    def reload(self) -> None:
        """Read the entries of every finished shard (those of other ranks too), in shard order."""
        entries = [json.loads(p.read_text()) for p in self.dir.glob("[0-9]*.done.json")]
        self.shards = sorted(entries, key=lambda e: e["index"])

    @property
    def done(self) -> set[int]:
        return {s["index"] for s in self.shards}

    def path(self, index: int, part: str) -> Path:
        return self.dir / f"{index:05d}.{part}"

    def add(self, index: int, n_records: int, res: ShardResult, store_dtype: str) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, arr in (("image", res.image), ("text", res.text)):
            if arr is not None:
                write_npy(self.path(index, f"{name}.npy"), arr.astype(store_dtype))
        write_text(self.path(index, "meta.jsonl"), "".join(json.dumps(m) + "\n" for m in res.meta))
        entry = {"index": index, "records": n_records, "rows": len(res.meta),
                 "images_embedded": res.images_embedded, "texts_embedded": res.texts_embedded,
                 "has_image": res.image is not None, "has_text": res.text is not None, "failures": res.failures}
        write_json(self.path(index, "done.json"), entry)
        self.shards.append(entry)
        return entry

    @property
    def records_done(self) -> int:
        return sum(s["records"] for s in self.shards)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _assemble_array(shards: ShardDir, part: str, out_path: Path, dtype: str) -> int:
    """Concatenate the shards' ``part`` arrays into one .npy, streamed (never all in memory)."""
    arrays = [np.load(shards.path(s["index"], f"{part}.npy"), mmap_mode="r", allow_pickle=False)
              for s in shards.shards if s["rows"] > 0]
    n, d = sum(len(a) for a in arrays), arrays[0].shape[1]
    with atomic_path(out_path) as tmp:
        dest = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(n, d))
        pos = 0
        for a in arrays:
            dest[pos : pos + len(a)] = a
            pos += len(a)
        dest.flush()
        del dest
    return d


def _assemble_meta(shards: ShardDir, out_path: Path) -> None:
    with atomic_path(out_path) as tmp:
        with open(tmp, "w") as f:
            for s in shards.shards:
                with open(shards.path(s["index"], "meta.jsonl")) as g:
                    shutil.copyfileobj(g, f)
