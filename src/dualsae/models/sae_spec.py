"""Naming one SAE of a folder on the command line: ``PATH`` or ``PATH:MEMBER``.

A run folder of a shared method, a bare SAE folder (``config.json`` with field ``sae``) and a folder in
another library's format (SAELens, sparsify, overcomplete, dictionary_learning) each hold one SAE:
``PATH`` names it (``PATH:image`` / ``PATH:text`` name it too and choose the store column). A specific run folder and an
aligned folder hold an image and a text SAE: ``PATH:image`` or ``PATH:text`` names one of them (the
aligned folder's text SAE is the permuted one of eq. 7). For a folder of one shared SAE, ``PATH:image``,
``PATH:text`` and ``PATH:shared`` all name it (the modality then is the store column ``compare --data``
encodes by default).
The suffix is split off only when it is one of these member names, so a path holding a colon still works.

:func:`open_sae` is the one place that turns such a name into an :class:`SAE`; folders of other
libraries are opened through :func:`dualsae.models.formats.load_sae` (format detected).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dualsae.core.errors import CheckpointError
from dualsae.models.formats import load_sae
from dualsae.models.load import load_model
from dualsae.models.sae import SAE

MEMBERS = ("image", "text", "shared")


@dataclass(frozen=True)
class NamedSAE:
    """An SAE and how the user named it. spec: the name as given; path: the folder; member: image, text,
    shared or None (the folder's only SAE)."""

    spec: str
    path: Path
    member: str | None
    sae: SAE

    def describe(self) -> dict:
        """The JSON record of ``compare.json`` (``a`` / ``b``)."""
        cfg = self.sae.config
        return {"spec": self.spec, "path": str(self.path.resolve()), "member": self.member, "m": self.sae.m, "d": self.sae.d,
                "activation": cfg.activation, "k": cfg.k}


def split_spec(spec: str) -> tuple[Path, str | None]:
    """``'runs/a:image'`` -> ``(Path('runs/a'), 'image')``; ``'runs/a'`` -> ``(Path('runs/a'), None)``."""
    head, sep, tail = str(spec).rpartition(":")
    if sep and head and tail in MEMBERS:
        return Path(head), tail
    return Path(spec), None


def is_dualsae_folder(path: Path) -> bool:
    """A folder dualsae wrote: an aligned folder, or a run / SAE folder (``config.json`` with ``train`` or ``sae``)."""
    if (path / "alignment.json").is_file():
        return True
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(raw, dict) and ("train" in raw or "sae" in raw)


def open_sae(spec: str, device: str | torch.device = "cpu") -> NamedSAE:
    """The SAE that ``spec`` (``PATH`` or ``PATH:MEMBER``, module docstring) names; one-line errors
    (:class:`CheckpointError`) for a missing folder, an unknown member or a folder of two SAEs named
    without a member."""
    path, member = split_spec(spec)
    if not path.exists():
        raise CheckpointError(f"{path}: no such folder; expected a run folder, an aligned folder or an SAE folder "
                              f"(add ':image' or ':text' to name one SAE of a pair)")
    if not is_dualsae_folder(path):
        # Another library's folder (or a foreign file): load_sae detects the format or names what it found.
        return NamedSAE(str(spec), path, member, load_sae(path).to(device))
    pair = load_model(path, device=device)
    present = [m for m in ("image", "text") if getattr(pair, m) is not None]
    if member is None:
        if pair.shared or len(present) == 1:
            return NamedSAE(str(spec), path, None, pair.sae_for(present[0]))
        raise CheckpointError(f"{path}: holds two SAEs ({pair.method}: image and text); name one as {path}:image or {path}:text")
    if member == "shared":
        if not pair.shared:
            raise CheckpointError(f"{spec}: {path} holds no shared SAE ({pair.method}: {' and '.join(present)}); "
                                  f"use {path}:image or {path}:text")
        return NamedSAE(str(spec), path, member, pair.sae_for("image"))
    if member not in present:
        raise CheckpointError(f"{spec}: {path} holds no {member} SAE (it holds: {', '.join(present)})")
    return NamedSAE(str(spec), path, member, pair.sae_for(member))


__all__ = ["MEMBERS", "NamedSAE", "is_dualsae_folder", "open_sae", "split_spec"]
