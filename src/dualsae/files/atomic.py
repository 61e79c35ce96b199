"""Atomic file writes: write to a temporary file in the same folder, then ``os.replace``.

A reader never sees a half-written file: either the old version or the complete new one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import save_file

from dualsae.core.errors import DualSAEError
from dualsae.files.faults import fault_point
from dualsae.files.folders import os_reason


def _plain_mode(path: str | os.PathLike[str]) -> None:
    """chmod ``path`` to what a plain open() creates: 0666 minus the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary name keeps the suffix so libraries that look at it (``np.save``) behave.
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; give the file the permissions a plain open() would (0666 minus umask).
    _plain_mode(tmp)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as e:  # a full or read-only disk mid-write: one line; the old file is untouched
            raise DualSAEError(f"{path}: cannot write it ({os_reason(e)}); the previous version, if any, is kept") from None
        fault_point("before-replace", str(path))
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write a ``.npy`` file atomically (never pickled)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def save_tensors(path: str | os.PathLike[str], tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write a dict of torch tensors as safetensors atomically."""

    with atomic_path(path) as tmp:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        except SafetensorError as e:  # safetensors wraps the OSError of a full disk in its own error
            raise OSError(_errno_of(str(e)), str(e).splitlines()[0] if str(e) else "write failed") from None
        # safetensors re-creates the file with mode 0600; give it the mode of the JSON files beside it.
        _plain_mode(tmp)


def append_jsonl(path: str | os.PathLike[str], row: dict) -> None:
    """Append one JSON line and flush it (metrics logs are append-only, not rewritten). On a full disk
    the line may be torn: readers of such logs drop a torn last line (``truncate_metrics`` does)."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
    except OSError as e:
        raise DualSAEError(f"{path}: cannot append to it ({os_reason(e)})") from None


def _errno_of(message: str) -> int:
    """The errno inside a safetensors I/O error's text (``os error 28``, ``Os { code: 28, ... }``), else EIO."""
    m = re.search(r"(?:code: |os error )(\d+)", message)
    return int(m.group(1)) if m else errno.EIO
