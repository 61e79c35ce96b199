"""Reading the JSON and JSON-lines files users hand us, with errors that name the file and line."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Iterator

from dualsae.core.errors import ConfigError, DataError, DualSAEError


def read_json_object(path: str | Path, missing_hint: str = "", error: type[DualSAEError] = DataError) -> dict:
    """The JSON object in ``path``; raises ``error`` naming the file if it is missing, not JSON, or not an object."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing" + (f"; {missing_hint}" if missing_hint else ""))
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: expected a JSON object, found a JSON {type(obj).__name__}")
    return obj


def text_lines(path: str | Path, error: type[DualSAEError] = DataError) -> Iterator[str]:
    """The lines of a UTF-8 text file (line ends kept, as ``csv`` wants them); a folder or bytes that
    are not UTF-8 raise ``error`` naming the file instead of a traceback mid-read."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a folder; expected a UTF-8 text file")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            yield from f
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason}: byte 0x{e.object[e.start]:02x}); re-save it as UTF-8") from None


def iter_jsonl_objects(path: str | Path, error: type[DualSAEError] = DataError) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file."""
    for lineno, line in enumerate(text_lines(path, error), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}: line {lineno} is not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise error(f"{path}: line {lineno} is a JSON {type(obj).__name__}, expected an object")
        yield lineno, obj


def config_from_dict(cls, data: dict, source: str, what: str, error: type[DualSAEError] = DataError,
                     required: tuple[str, ...] = ()):
    """Build the frozen config dataclass ``cls`` from a JSON dict, naming unknown or missing fields."""

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{source}: unknown {what} field(s) {unknown}; expected only {sorted(known)}")
    missing = [n for n in required if n not in data]
    if missing:
        raise error(f"{source}: {what} is missing field(s) {missing}")
    annotations = {f.name: f.type for f in fields(cls)}
    for name, value in data.items():
        expected = str(annotations[name])
        if not _matches(value, expected):
            raise error(f"{source}: {what} field '{name}' must be {expected}, found {json.dumps(value)} ({_json_type(value)})")

    try:
        return cls(**data)
    except ConfigError as e:  # a value out of range: say which file holds it
        raise error(f"{source}: {e}") from None


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _matches(value, annotation: str) -> bool:
    """Whether a JSON value fits a dataclass field's annotation (``int``, ``float | None``...); other
    annotations are not checked. ``bool`` is not an ``int`` here (JSON ``true`` is no latent count)."""
    options = [a.strip() for a in annotation.split("|")]
    if value is None:
        return "None" in options or not any(o in _TYPES for o in options)
    known = [o for o in options if o in _TYPES]
    if not known:
        return True
    if isinstance(value, bool):
        return "bool" in known
    return any(isinstance(value, _TYPES[o]) for o in known)


def _json_type(value) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object",
            type(None): "null"}.get(type(value), type(value).__name__)
