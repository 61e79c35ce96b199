"""An exclusive lock on an output folder for the life of a writing command.

Two ``dualsae train`` (or ``--resume``, ``align``, ``reproduce``...) into one folder would interleave
their logs and silently lose one run. Every writing command holds ``fcntl.flock`` on
``FOLDER/.dualsae.lock`` while it runs; a second one fails at once, naming the holder's pid. The
kernel drops the lock when the holder exits, however it exits (a SIGKILL included), so a stale
lock file never blocks a rerun. The file itself is left in place: deleting it on release would let
a waiter lock a deleted inode while a third process locks a new file.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dualsae.core.errors import DualSAEError
from dualsae.files.folders import make_folder

LOCK_NAME = ".dualsae.lock"


class FolderBusyError(DualSAEError):
    """Another process holds the folder's lock."""


def file_lock_name(output_file: str | os.PathLike[str]) -> str:
    """The lock file name of a single-file output (``eval --out metrics.json`` -> ``.metrics.json.lock``
    beside it), so two outputs in one folder do not block each other."""
    return f".{Path(output_file).name}.lock"


@contextmanager
def output_lock(folder: str | os.PathLike[str], what: str = "this output", name: str = LOCK_NAME,
                wait: bool = False, output: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Hold the exclusive lock ``folder/name`` (folder and file created if needed) for the ``with`` block.

    ``wait``: block until the holder releases it (parallel workers of one job that need the same
    file, e.g. a data set one of them generates) instead of failing at once. ``output``: the path the
    busy error names (default ``folder``): a lock kept beside its output (a report) names the output."""

    path = make_folder(folder) / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DualSAEError(f"{path}: cannot create the lock file of {what} ({e.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise FolderBusyError(f"{output if output is not None else path.parent}: in use by another dualsae process (pid {holder}); "
                                  f"wait for it to finish or write {what} elsewhere") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, only its pid is not recorded
            pass
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock
