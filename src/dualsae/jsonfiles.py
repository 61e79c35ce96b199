"""Reading the JSON and JSON-lines files users hand us, with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from dualsae.errors import DataError, DualSAEError


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


def iter_jsonl_objects(path: str | Path, error: type[DualSAEError] = DataError) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file."""
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
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
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{source}: unknown {what} field(s) {unknown}; expected only {sorted(known)}")
    missing = [n for n in required if n not in data]
    if missing:
        raise error(f"{source}: {what} is missing field(s) {missing}")
    return cls(**data)
