"""Which library wrote an SAE folder, and the one entry point that opens any of them.

``detect_format(path)`` looks at the file names (and, for ``config.json``, its top-level fields):

================== ===========================================================================
dualsae            ``config.json`` with field ``sae`` + ``model.safetensors`` (``dualsae.sae/1``)
saelens            ``cfg.json`` + ``sae_weights.safetensors``
sparsify           ``cfg.json`` + ``sae.safetensors`` (or a folder of such per-hookpoint folders)
dictionary_learning ``config.json`` with field ``trainer`` + ``ae.pt``
overcomplete       ``overcomplete.json`` + the state dict it names
================== ===========================================================================

``load_sae(path, format=None)`` returns a dualsae :class:`~dualsae.models.sae.SAE` that encodes and
decodes as the source library does; ``sae_source`` records where it came from (format, path, the
SHA-256 of each file read) for the provenance of whatever is built from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from dualsae.core.errors import CheckpointError, ConfigError
from dualsae.models.formats import dictionary_learning, overcomplete, saelens, sparsify
from dualsae.models.formats.reading import file_hashes
from dualsae.models.sae import SAE

FORMATS = ("dualsae", "saelens", "sparsify", "overcomplete", "dictionary_learning")


def _read_dualsae(folder: Path) -> SAE:
    return SAE.load(folder).eval()


READERS: dict[str, Callable[[Path], SAE]] = {
    "dualsae": _read_dualsae,
    "saelens": saelens.read_saelens,
    "sparsify": sparsify.read_sparsify,
    "overcomplete": overcomplete.read_overcomplete,
    "dictionary_learning": dictionary_learning.read_dictionary_learning,
}


def _top_fields(path: Path) -> set[str]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return set()
    return set(raw) if isinstance(raw, dict) else set()


def detect_format(path: str | Path) -> str:
    """The format of the SAE folder ``path`` (one of :data:`FORMATS`); one line naming what was found otherwise."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; expected an SAE folder ({', '.join(FORMATS)})")
    has = {p.name for p in folder.iterdir()}
    if "cfg.json" in has and saelens.WEIGHTS_FILE in has:
        return "saelens"
    if "cfg.json" in has and sparsify.WEIGHTS_FILE in has:
        return "sparsify"
    if "config.json" in has:
        fields = _top_fields(folder / "config.json")
        if "sae" in fields and "model.safetensors" in has:
            return "dualsae"
        if "trainer" in fields and dictionary_learning.WEIGHTS_FILE in has:
            return "dictionary_learning"
    if overcomplete.CFG_FILE in has:
        return "overcomplete"
    if sparsify.hookpoints(folder):
        return "sparsify"
    shown = ", ".join(sorted(has)[:8]) or "nothing"
    raise CheckpointError(f"{folder}: not an SAE folder of a known format (found {shown}); expected cfg.json + sae_weights.safetensors "
                          "(SAELens), cfg.json + sae.safetensors (sparsify), config.json + ae.pt (dictionary_learning), "
                          "overcomplete.json + a state dict (overcomplete) or config.json + model.safetensors (dualsae)")


def check_format(format: str | None, flag: str = "--format") -> None:
    if format is not None and format not in FORMATS:
        raise ConfigError(f"{flag} must be one of {', '.join(FORMATS)}, found {format!r}")


def load_sae(path: str | Path, format: str | None = None) -> SAE:
    """The SAE in folder ``path`` written by any supported library (``format`` overrides detection), in
    eval mode on the CPU. Raises one-line :class:`~dualsae.core.errors.CheckpointError` s naming the file
    and field."""
    check_format(format)
    folder = Path(path)
    fmt = format or detect_format(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; expected a {fmt} SAE folder")
    return READERS[fmt](folder)


def source_files(folder: Path, fmt: str) -> list[str]:
    """The files an SAE of format ``fmt`` in ``folder`` is read from."""
    if fmt == "dualsae":
        return ["config.json", "model.safetensors"]
    if fmt == "overcomplete":
        return [overcomplete.CFG_FILE, overcomplete.state_dict_file(folder)]
    return list({"saelens": saelens.FILES, "sparsify": sparsify.FILES, "dictionary_learning": dictionary_learning.FILES}[fmt])


def sae_source(path: str | Path, format: str | None = None) -> dict:
    """Where an SAE came from: ``{"format", "path" (absolute), "files": {name: sha256}}``."""
    folder = Path(path)
    fmt = format or detect_format(folder)
    names = [n for n in source_files(folder, fmt) if (folder / n).is_file()]
    return {"format": fmt, "path": str(folder.resolve()), "files": file_hashes(folder, names)}
