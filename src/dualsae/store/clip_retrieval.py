"""The layout clip-retrieval writes (``img_emb/img_emb_<i>.npy``, ``text_emb/``, ``metadata/*.parquet``),
read in place: :class:`ShardedRows` presents the numbered shards of one modality as one [N, d] array.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from dualsae.core.errors import DataError
from dualsae.store.arrays import open_npy, read_rows


class ShardedRows:
    """Several [n_i, d] ``.npy`` shards, memory-mapped, presented as one [sum n_i, d] array.

    Supports ``shape``, ``dtype``, ``len`` and indexing by an int, a slice or an integer array
    (any order; sorted arrays read each shard's pages in order). Nothing is copied until indexed.
    """

    def __init__(self, paths: Sequence[str | Path]):
        if not paths:
            raise DataError("ShardedRows: no shard given")
        self.paths = [Path(p) for p in paths]
        self.shards = [open_npy(p) for p in self.paths]
        d, dt = self.shards[0].shape[1], self.shards[0].dtype
        for p, a in zip(self.paths, self.shards):
            if a.shape[1] != d:
                raise DataError(f"{p}: dimension {a.shape[1]}, {self.paths[0].name} has {d}; every shard must have the same d")
            if a.dtype != dt:
                raise DataError(f"{p}: dtype {a.dtype}, {self.paths[0].name} has {dt}; every shard must have the same dtype")
        self.lengths = np.array([len(a) for a in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])  # shard i holds rows [off[i], off[i+1])
        self.shape = (int(self.offsets[-1]), int(d))
        self.dtype = dt
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ShardedRows(shape={self.shape}, dtype={self.dtype}, shards={len(self.shards)})"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[0 : len(self)]
        return out if dtype is None else out.astype(dtype)

    def _take_range(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as one array [stop - start, d]."""
        if stop <= start:
            return np.empty((0, self.shape[1]), dtype=self.dtype)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.offsets, stop - 1, side="right")) - 1
        parts = []
        for s in range(first, last + 1):
            lo = max(start, int(self.offsets[s])) - int(self.offsets[s])
            hi = min(stop, int(self.offsets[s + 1])) - int(self.offsets[s])
            parts.append(self.shards[s][lo:hi])
        return np.array(parts[0]) if len(parts) == 1 else np.concatenate(parts, axis=0)

    def __getitem__(self, key) -> np.ndarray:
        n = len(self)
        if isinstance(key, tuple):  # arr[rows, cols]: rows first, then numpy does the rest
            return self[key[0]][(slice(None),) + key[1:]]
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"row {key} out of range for {n} rows")
            return self._take_range(i, i + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return self._take_range(start, max(start, stop))
            key = np.arange(start, stop, step)
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).ravel()
        idx = np.where(idx < 0, idx + n, idx)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        order = np.argsort(idx, kind="stable")
        sidx = idx[order]
        shard_of = np.searchsorted(self.offsets, sidx, side="right") - 1
        out = np.empty((len(idx), self.shape[1]), dtype=self.dtype)
        bounds = np.searchsorted(shard_of, np.arange(len(self.shards) + 1))
        for s in range(len(self.shards)):
            a, b = bounds[s], bounds[s + 1]
            if a < b:
                # preadv per run of consecutive rows, as for a one-file store: only these rows are
                # read (never the whole shard), and nothing is mapped into this process.
                out[order[a:b]] = read_rows(self.shards[s], sidx[a:b] - self.offsets[s])
        return out


def _numbered(folder: Path, prefix: str, suffix: str) -> list[Path]:
    """``folder/prefix_<i><suffix>`` files sorted by the number i (so 10 follows 9: the order
    clip-retrieval wrote the rows in). The numbers must be 0, 1, ..., n-1: a gap means a shard is
    missing, and reading on would silently shift every later row's position (and the split)."""
    pat = re.compile(rf"^{re.escape(prefix)}_(\d+){re.escape(suffix)}$")
    hits = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pat.match(p.name)))
    for expected, (number, path) in enumerate(hits):
        if number != expected:
            where = f"{path.name} follows {hits[expected - 1][1].name}" if expected else f"{path.name} is the first shard"
            raise DataError(f"{folder / f'{prefix}_{expected}{suffix}'}: missing ({where}); expected shards numbered 0, 1, 2, ... "
                            "without a gap (a missing shard would shift every later row)")
        if not path.is_file():
            raise DataError(f"{path}: is {'a folder' if path.is_dir() else 'not a regular file'}; expected a {suffix} shard file")
    return [p for _, p in hits]


def _shard_number(p: Path) -> str:
    return p.stem.rsplit("_", 1)[-1]


def read_clip_retrieval(folder: str | Path) -> tuple[ShardedRows | None, ShardedRows | None, list[dict] | None]:
    """Read clip-retrieval output (``img_emb/``, ``text_emb/``, ``metadata/``), no copy: (image, text, meta).
    :meth:`dualsae.store.paired.PairedEmbeddings.open` builds the store from them and validates it.

    image/text become :class:`ShardedRows` over the memory-mapped shards; meta rows carry every
    parquet column (caption, url, key, image_path, split, and any label such as category). Shard i of each
    modality (and of metadata) must have the same number of rows.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected clip-retrieval output with img_emb/ and text_emb/")
    lists = {}
    for sub, prefix, suffix in (("img_emb", "img_emb", ".npy"), ("text_emb", "text_emb", ".npy"), ("metadata", "metadata", ".parquet")):
        d = root / sub
        lists[sub] = _numbered(d, prefix, suffix) if d.is_dir() else []
        if d.is_dir() and not lists[sub]:
            raise DataError(f"{d}: holds no {prefix}_<i>{suffix} file")
    if not lists["img_emb"] and not lists["text_emb"]:
        raise DataError(f"{root}: holds neither img_emb/ nor text_emb/ shards")
    img = ShardedRows(lists["img_emb"]) if lists["img_emb"] else None
    txt = ShardedRows(lists["text_emb"]) if lists["text_emb"] else None
    if img is not None and txt is not None:
        _match_shards(img, txt)
    emb = img if img is not None else txt
    meta = _read_parquet_meta(lists["metadata"], emb) if lists["metadata"] else None
    return img, txt, meta


def _match_shards(img: ShardedRows, txt: ShardedRows) -> None:
    """Shard i of img_emb/ and text_emb/ must carry the same number and the same row count."""
    if len(img.paths) != len(txt.paths):
        more, fewer = ("img_emb", "text_emb") if len(img.paths) > len(txt.paths) else ("text_emb", "img_emb")
        extra = (img if more == "img_emb" else txt).paths[min(len(img.paths), len(txt.paths))]
        raise DataError(f"{extra}: has no counterpart in {fewer}/ ({len(img.paths)} img_emb shards, {len(txt.paths)} text_emb shards); expected one text shard per image shard")
    for pi, pt, ni, nt in zip(img.paths, txt.paths, img.lengths, txt.lengths):
        if _shard_number(pi) != _shard_number(pt):
            raise DataError(f"{pt}: pairs with {pi.name} by position but has another shard number; expected the same shard numbers in img_emb/ and text_emb/")
        if ni != nt:
            raise DataError(f"{pt}: has {nt:,} rows, {pi.name} has {ni:,}; row i of each shard must be one pair")
    if img.shape[1] != txt.shape[1]:
        raise DataError(f"{txt.paths[0]}: dimension {txt.shape[1]}, {img.paths[0].name} has {img.shape[1]}; both modalities must share d")


def _read_parquet_meta(paths: list[Path], emb: ShardedRows) -> list[dict]:
    try:  # optional: only clip-retrieval metadata needs it
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{paths[0].parent}: reading metadata_<i>.parquet needs pyarrow (pip install pyarrow)") from None

    if len(paths) != len(emb.paths):
        raise DataError(f"{paths[0].parent}: {len(paths)} metadata shards, {len(emb.paths)} embedding shards; expected one metadata_<i>.parquet per shard")
    rows: list[dict] = []
    for p, ep, n in zip(paths, emb.paths, emb.lengths):
        if _shard_number(p) != _shard_number(ep):
            raise DataError(f"{p}: shard number differs from {ep.name}; expected the same shard numbers")
        try:
            pf = pq.ParquetFile(p)
            cols = pf.schema_arrow.names
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DataError(f"{p}: not a readable parquet file ({_first_line(e)}); expected the metadata clip-retrieval writes") from None
        if pf.metadata.num_rows != n:
            raise DataError(f"{p}: has {pf.metadata.num_rows:,} rows, {ep.name} has {n:,}; expected one metadata row per embedding")
        if not cols:
            rows += [{} for _ in range(int(n))]
            continue
        try:
            rows += pf.read(columns=cols).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DataError(f"{p}: damaged parquet file ({_first_line(e)})") from None
    return rows


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
