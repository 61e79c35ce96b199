"""Reading a ``.safetensors`` file with the one-line error every reader gives: missing, or not a
readable safetensors file (torn, truncated, another format). The counterpart of
:func:`dualsae.files.atomic.save_tensors`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.numpy
import safetensors.torch
from safetensors import SafetensorError, safe_open

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


def check_tensor_file(path: str | os.PathLike[str], error: type[DualSAEError]) -> list[str]:
    """The tensor names of ``path`` after checking, without reading the tensors, that its header parses
    and that the file holds every byte the header promises (a truncated or torn file fails here);
    raise ``error`` in one line naming the file otherwise. Costs one header read."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {'is a folder' if path.is_dir() else 'missing'}; expected a safetensors file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            return list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise error(f"{path}: not a readable safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                    "truncated or damaged") from None


__all__ = ["check_tensor_file", "read_tensors"]
