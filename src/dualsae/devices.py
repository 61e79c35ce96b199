"""The ``--device`` flag of every command: cpu, cuda, cuda:N, or auto; checked before any work."""

from __future__ import annotations

import re

import torch

from dualsae.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """auto -> cuda when available, else cpu. Unknown names and CUDA without a CUDA device (or with
    fewer devices than the index asked for) raise a one-line :class:`ConfigError`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", device or "")
    if m is None:
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, found {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available (use --device cpu or auto)")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0 ...)")
    return torch.device(device)
