"""The arrays of a store folder: memory-mapped ``.npy`` files checked for dtype, shape and finite values,
rows read in sorted runs, and the ``meta.jsonl`` rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dualsae.core.errors import DataError
from dualsae.files.jsonfiles import iter_jsonl_objects
from dualsae.files.outdir import check_finished

SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


_CHECK_CHUNK = 65_536


def open_npy(path: Path) -> np.ndarray:
    """Open a ``.npy`` memory-mapped and check it is a non-empty float16/float32 [N, d] array."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes); expected a .npy array [N, d]")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":  # np.load would take any other bytes for a pickle and say "needs pickle"
        raise DataError(f"{path}: not a .npy file (it does not start with the NumPy header); expected a float16/float32 array [N, d] saved with numpy.save")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        msg = str(e)
        if "pickle" in msg.lower() or "object" in msg.lower():
            raise DataError(f"{path}: holds Python objects (needs pickle); expected float16 or float32 numbers") from None
        raise DataError(f"{path}: truncated or not a valid .npy file ({msg})") from None
    except (EOFError, OSError) as e:
        raise DataError(f"{path}: truncated or not a valid .npy file ({e})") from None
    if arr.dtype not in SUPPORTED_DTYPES:
        raise DataError(f"{path}: dtype is {arr.dtype}, expected float16 or float32")
    if arr.ndim != 2:
        raise DataError(f"{path}: shape is {list(arr.shape)}, expected 2 dimensions [N, d]")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{path}: shape is {list(arr.shape)}, expected at least one row and one column")
    return arr


def check_store_finished(root: Path) -> None:
    """Refuse a store whose writer did not finish: an extraction killed while assembling (its
    ``.shards/`` work folder is still there) or a folder whose manifest says unfinished."""

    if (root / ".shards").is_dir():  # dualsae.extract.extraction.SHARDS_DIR, removed as the extraction's last step
        raise DataError(f"{root}: holds an unfinished extraction (.shards/ is still there); rerun the same "
                        "'dualsae extract' command to finish it")
    check_finished(root, DataError)


def read_rows(arr: Any, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted ascending) of a [N, d] array, in that order.

    For a C-ordered ``.npy`` memory map the rows are read with ``preadv``, one call per run of
    consecutive rows, so they land in the OS page cache but are never mapped into this process:
    a pass over a store larger than RAM keeps a resident size of a few batches. (Reading through
    the map instead maps read-ahead and fault-around pages too: one batch of 1,024 random rows
    mapped ~270 MB of a 300 MB file here.) Other array-likes use numpy indexing.
    """
    if not (isinstance(arr, np.memmap) and arr.filename and arr.flags.c_contiguous and arr.ndim == 2):
        return np.asarray(arr[rows])
    out = np.empty((len(rows), arr.shape[1]), dtype=arr.dtype)
    row_bytes = arr.shape[1] * arr.dtype.itemsize
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    fd = os.open(arr.filename, os.O_RDONLY)
    try:
        flat = out.reshape(-1).view(np.uint8)
        for a, b in zip(starts.tolist(), ends.tolist()):
            want = (b - a) * row_bytes
            got = os.preadv(fd, [flat[a * row_bytes : b * row_bytes]], arr.offset + int(rows[a]) * row_bytes)
            if got != want:
                raise DataError(f"{arr.filename}: short read at row {int(rows[a]):,} ({got} of {want} bytes); the file changed or is truncated")
    finally:
        os.close(fd)
    return out


def check_finite(arr: Any, name: str) -> None:
    """Raise naming the first row with NaN or inf. Streams in chunks (the store may be larger than RAM)."""
    n = len(arr)
    for start in range(0, n, _CHECK_CHUNK):
        chunk = read_rows(arr, np.arange(start, min(start + _CHECK_CHUNK, n)))
        ok = np.isfinite(chunk).all(axis=1)
        if not ok.all():
            row = start + int(np.argmin(ok))
            bad = "NaN" if np.isnan(chunk[row - start]).any() else "inf"
            raise DataError(f"{name}: row {row:,} contains {bad}; expected finite values in every row")


def read_meta(path: Path, n_rows: int) -> list[dict]:
    """Read ``meta.jsonl``: exactly ``n_rows`` JSON objects, one per line."""
    rows = [obj for _, obj in iter_jsonl_objects(path)]
    if len(rows) != n_rows:
        raise DataError(f"{path}: has {len(rows):,} rows, the embeddings have {n_rows:,}")
    return rows


def _madvise(arr: Any, option: int) -> None:
    """madvise the memory map behind a numpy memmap (a no-op for in-memory arrays)."""
    mm = getattr(arr, "_mmap", None)
    if mm is None and getattr(arr, "base", None) is not None:
        mm = getattr(arr.base, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        try:
            mm.madvise(option)
        except (OSError, ValueError):
            pass
