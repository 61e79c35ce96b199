"""Creating output folders with one-line errors (a file in the way, a read-only or full disk).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from dualsae.core.errors import ConfigError, DualSAEError


def os_reason(e: OSError) -> str:
    """A short reason for an OSError a user can act on (a full or read-only disk)."""
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno == errno.EROFS:
        return "read-only file system"
    return e.strerror or str(e)


def make_folder(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) or raise one line: it is a file, it lies under a file, or the file
    system refuses (read-only, full, no permission)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: is an existing file; expected a folder (or a path that does not exist yet)")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{path}: cannot be created because {parent} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DualSAEError(f"{path}: cannot create the folder ({os_reason(e)})") from None
    return path


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Write, flush and delete a small probe file in ``folder``, so a read-only or full file system
    fails before any work, not after it."""
    probe = Path(folder) / f".dualsae-probe-{os.getpid()}.tmp"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise DualSAEError(f"{folder}: cannot write here ({os_reason(e)})") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
