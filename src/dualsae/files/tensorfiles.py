"""Reading a ``.safetensors`` file with the one-line error every reader gives: missing, or not a
readable safetensors file (torn, truncated, another format). The counterpart of
:func:`dualsae.files.atomic.save_tensors`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.numpy
import safetensors.torch
from safetensors import SafetensorError

from dualsae.core.errors import DualSAEError


def read_tensors(path: str | os.PathLike[str], error: type[DualSAEError], missing_hint: str = "",
                 framework: str = "torch") -> dict[str, Any]:
    """{name: tensor} of ``path`` (``framework`` "torch" or "numpy" arrays); raise ``error`` in one line
    naming the file when it is missing (``missing_hint`` says what to do) or cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing{'; ' + missing_hint if missing_hint else ''}")
    load = safetensors.torch.load_file if framework == "torch" else safetensors.numpy.load_file
    try:
        return load(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise error(f"{path}: not a readable safetensors file ({e})") from None


__all__ = ["read_tensors"]
