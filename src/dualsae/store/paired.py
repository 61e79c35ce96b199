"""Paired-embedding store: ``image.npy`` [N, d], ``text.npy`` [N, d], optional ``meta.jsonl``.

Row i of ``image.npy`` and row i of ``text.npy`` are one image-caption pair. Arrays are float16 or
float32 and are opened memory-mapped: nothing reads the whole store into memory, training reads
only the rows of each batch. ``meta.jsonl`` holds one JSON object per row (caption, image id or
path, labels, ``split`` = train/test/...). A store may hold only one of the two arrays; methods that
need pairs say so.

Row arrays only need ``shape``, ``dtype``, ``len`` and numpy indexing by a slice or a sorted
integer array, so other layouts (sharded ``.npy`` files, see ``dualsae.extract.sources``) can be wrapped
without copying.
"""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from dualsae.core.errors import DataError
from dualsae.core.modalities import MODALITIES
from dualsae.files.atomic import write_npy, write_text
from dualsae.store.arrays import _madvise, check_finite, check_store_finished, open_npy, read_meta, read_rows
from dualsae.store.clip_retrieval import ShardedRows, read_clip_retrieval


@dataclass
class PairedEmbeddings:
    """Paired image/text embeddings, memory-mapped.

    image: [N, d] array-like or None; text: [N, d] array-like or None; meta: N dicts or None.
    index: optional row selection (a subset view) into the arrays; ``None`` means all rows.
    """

    image: Any
    text: Any
    meta: list[dict] | None = None
    root: Path | None = None
    index: np.ndarray | None = None

    # -------------------------------------------------------------- construction
    @classmethod
    def open(cls, folder: str | Path, check_values: bool = True, same_width: bool = True) -> "PairedEmbeddings":
        """Open and validate a store folder (see module docstring): dualsae's layout (``image.npy``,
        ``text.npy``, ``meta.jsonl``) or clip-retrieval's (``img_emb/``, ``text_emb/``, ``metadata/``).
        ``same_width=False`` accepts image and text arrays of different widths (an external encoder's
        store: one encoder per modality; dualsae layout only)."""
        root = Path(folder)
        if (root / "img_emb").is_dir() or (root / "text_emb").is_dir():

            img, txt, meta = read_clip_retrieval(root)
            store = cls(img, txt, None, root)
            store.validate(check_values=check_values)
            store.meta = meta
            return store
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; expected a store folder with image.npy and/or text.npy")
        check_store_finished(root)
        arrays = {}
        for mod in MODALITIES:
            p = root / f"{mod}.npy"
            arrays[mod] = open_npy(p) if p.exists() else None
        if arrays["image"] is None and arrays["text"] is None:
            raise DataError(f"{root}: holds neither image.npy nor text.npy")
        meta_path = root / "meta.jsonl"
        store = cls(arrays["image"], arrays["text"], None, root)
        store.validate(check_values=check_values, same_width=same_width)
        if meta_path.exists():
            store.meta = read_meta(meta_path, store.n_total)
        return store

    def validate(self, check_values: bool = True, same_width: bool = True) -> None:
        img, txt = self.image, self.text
        base = self.root if self.root is not None else Path("<memory>")
        if img is not None and txt is not None:
            if len(img) != len(txt):
                raise DataError(f"{base}: text.npy has {len(txt):,} rows, image.npy has {len(img):,}; row i of each must be one pair")
            if same_width and img.shape[1] != txt.shape[1]:
                raise DataError(f"{base}: text.npy has dimension {txt.shape[1]}, image.npy has {img.shape[1]}; both must be [N, d] with the same d")
        if check_values:
            for mod in MODALITIES:
                arr = getattr(self, mod)
                if isinstance(arr, ShardedRows):  # name the shard file (and its row) that holds the bad value
                    for shard, path in zip(arr.shards, arr.paths):
                        check_finite(shard, str(path))
                elif arr is not None:
                    check_finite(arr, str(base / f"{mod}.npy"))

    # -------------------------------------------------------------- shape
    @property
    def n_total(self) -> int:
        arr = self.image if self.image is not None else self.text
        return len(arr)

    @property
    def n(self) -> int:
        return self.n_total if self.index is None else len(self.index)

    def __len__(self) -> int:
        return self.n

    @property
    def d(self) -> int:
        arr = self.image if self.image is not None else self.text
        return int(arr.shape[1])

    @property
    def has_pairs(self) -> bool:
        return self.image is not None and self.text is not None

    def has(self, modality: str) -> bool:
        return getattr(self, modality) is not None

    def require(self, modality: str, why: str) -> None:
        if not self.has(modality):
            where = self.root if self.root is not None else "the store"
            raise DataError(f"{where}: has no {modality}.npy, which {why} needs")

    def require_pairs(self, why: str) -> None:
        for mod in MODALITIES:
            self.require(mod, why)

    def require_width(self, d: int, what: str) -> None:
        """Rows must be ``d`` wide for ``what`` (an SAE, named: "the image SAE"); one line naming the
        store otherwise, instead of a matmul error deep inside."""
        if self.d != d:
            where = self.root if self.root is not None else "the store"
            raise DataError(f"{where}: embeddings have dimension d={self.d}, but {what} expects d={d}")

    def require_model_width(self, pair, what: str = "the model's") -> None:
        """:meth:`require_width` for every SAE of ``pair`` (an SAEPair) on a modality this store has."""
        for mod in MODALITIES:
            sae = getattr(pair, mod, None)
            if sae is not None:
                self.require_width(sae.d, f"{what} {mod} SAE")

    # -------------------------------------------------------------- subsets and splits
    def rows_of(self, positions: np.ndarray) -> np.ndarray:
        """Absolute row numbers of positions in this view."""
        positions = np.asarray(positions, dtype=np.int64)
        return positions if self.index is None else self.index[positions]

    def positions_of(self, rows: Sequence[int] | np.ndarray, what: str = "row") -> np.ndarray:
        """Positions in this view of absolute row numbers (the inverse of :meth:`rows_of`); a row that is
        not in the view is a DataError naming it (``what``: how the caller calls it, e.g. ``--rows``)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if self.index is None:
            bad = rows[(rows < 0) | (rows >= self.n)]
            if bad.size:
                raise DataError(f"{self.root}: {what} {int(bad[0])} is out of range; the store has {self.n:,} rows")
            return rows
        order = np.argsort(self.index, kind="stable")
        ordered = self.index[order]
        at = np.searchsorted(ordered, rows).clip(0, max(self.n - 1, 0))
        found = ordered[at] == rows if self.n else np.zeros(len(rows), dtype=bool)
        if not found.all():
            raise DataError(f"{self.root}: {what} {int(rows[~found][0])} is not a row of the chosen split ({self.n:,} rows)")
        return order[at]

    def read_row_ids(self, modality: str, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Rows of one modality by *absolute* row number, as :func:`dualsae.top_examples`,
        :func:`dualsae.use.translation.nearest_rows` and the CLI's ``--rows`` give them: [b, d].
        (:meth:`read` takes positions within this view; on a split they differ.)"""
        return self.read(modality, self.positions_of(rows))

    def subset(self, positions: Sequence[int] | np.ndarray) -> "PairedEmbeddings":
        """A view of some rows (positions relative to this view). No data is copied."""
        return PairedEmbeddings(self.image, self.text, self.meta, self.root, self.rows_of(np.asarray(positions)))

    def meta_rows(self) -> list[dict]:
        """Meta dicts of the rows of this view (empty dicts if the store has no meta)."""
        if self.meta is None:
            return [{} for _ in range(self.n)]
        if self.index is None:
            return self.meta
        return [self.meta[i] for i in self.index]

    def split(self, name: str, test_fraction: float = 0.2, seed: int = 0) -> "PairedEmbeddings":
        """Rows of split ``name``: from meta's ``split`` field when every row has one, else a seeded
        random split with ``test_fraction`` of rows in ``test`` and the rest in ``train``."""
        if name in ("all", "", None):
            return self
        metas = self.meta_rows()
        if self.meta is not None and all("split" in r for r in metas):
            pos = np.array([i for i, r in enumerate(metas) if r["split"] == name], dtype=np.int64)
            if len(pos) == 0:
                found = sorted({str(r["split"]) for r in metas})
                raise DataError(f"{self.root}/meta.jsonl: no row has split '{name}'; found splits {found}")
            return self.subset(pos)
        if name not in ("train", "test"):
            raise DataError(f"{self.root}: has no 'split' field in meta.jsonl, so only 'train'/'test' (seeded) splits exist, asked for '{name}'")
        rng = np.random.default_rng(seed)
        perm = rng.permutation(self.n)
        n_test = int(round(self.n * test_fraction))
        pos = np.sort(perm[:n_test] if name == "test" else perm[n_test:])
        return self.subset(pos)

    # -------------------------------------------------------------- reading
    def read(self, modality: str, positions: np.ndarray | slice | None = None) -> torch.Tensor:
        """Rows of one modality as float32 tensor [b, d] at ``positions`` within this view (absolute row
        numbers: :meth:`read_row_ids`); reads only those rows from disk."""
        arr = getattr(self, modality)
        if arr is None:
            self.require(modality, "reading")
        if positions is None:
            positions = np.arange(self.n)
        elif isinstance(positions, slice):
            positions = np.arange(self.n)[positions]
        rows = self.rows_of(positions)
        # Sorted reads touch each memory-mapped page once; then restore the requested order.
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        out = np.empty((len(rows), arr.shape[1]), dtype=np.float32)
        if len(rows):
            out[order] = read_rows(arr, sorted_rows).astype(np.float32, copy=False)
        return torch.from_numpy(out)

    def iter_rows(self, modality: str, batch_size: int = 8192) -> Iterator[torch.Tensor]:
        """Consecutive row batches [b, d] of one modality, in order."""
        for start in range(0, self.n, batch_size):
            yield self.read(modality, np.arange(start, min(start + batch_size, self.n)))

    def release_pages(self) -> None:
        """Drop this process's mapping of pages read through numpy indexing (sharded stores; plain
        ``.npy`` rows are read with ``preadv`` and never mapped). They stay in the OS page cache."""
        for arr in (self.image, self.text):
            if arr is None:
                continue
            # Sharded arrays (clip-retrieval layout, readers.ShardedRows) expose their memory maps as ``shards``.
            for part in getattr(arr, "shards", [arr]):
                _madvise(part, mmap.MADV_DONTNEED)

    def sample(self, modality: str, n: int, seed: int = 0) -> torch.Tensor:
        """Up to ``n`` random rows of one modality [<=n, d] (e.g. for the decoder-bias init)."""
        rng = np.random.default_rng(seed)
        pos = np.sort(rng.choice(self.n, size=min(n, self.n), replace=False))
        return self.read(modality, pos)


def open_store(path: str | Path, check_values: bool = True, same_width: bool = True) -> PairedEmbeddings:
    """Open a store folder of any layout the CLI opens (see :meth:`PairedEmbeddings.open`)."""
    return PairedEmbeddings.open(path, check_values=check_values, same_width=same_width)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled row order of one epoch; a pure function of (seed, epoch) so a resumed run
    sees exactly the batches an uninterrupted one would."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def write_store(
    folder: str | Path,
    image: np.ndarray | None,
    text: np.ndarray | None,
    meta: list[dict] | None = None,
    dtype: np.dtype | str = np.float32,
) -> Path:
    """Write a store folder (each file atomically). image, text: [N, d]."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = None
    for name, arr in (("image", image), ("text", text)):
        if arr is None:
            continue
        arr = np.asarray(arr, dtype=dtype)
        if n is not None and len(arr) != n:
            raise DataError(f"write_store: text has {len(arr):,} rows, image has {n:,}")
        n = len(arr)
        write_npy(folder / f"{name}.npy", arr)
    if meta is not None:
        if n is not None and len(meta) != n:
            raise DataError(f"write_store: meta has {len(meta):,} rows, the embeddings have {n:,}")
        write_text(folder / "meta.jsonl", "".join(json.dumps(r) + "\n" for r in meta))
    return folder

