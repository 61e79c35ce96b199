"""Command-line flags generated from config dataclasses, so ``--help`` cannot drift from the config.

A field becomes a flag from its name (``batch_size`` -> ``--batch-size``), its annotation (``int``,
``float``, ``str``, ``X | None``; ``bool``: a switch that sets the opposite of the default) and its
``metadata``:

* ``help``: the help text (required; a field without a flag says ``"cli": False``);
* ``choices``: the accepted values, listed in the help (the config's validation refuses others,
  naming the field, so the error reads the same from the CLI and the library);
* ``flag``: another option string (e.g. ``--no-scale-free-lambda``);
* ``type``: the command-line type where the annotation has several (parsed further by the command);
* ``default``: the default as help text, where the field's own default says nothing (``None``);
* ``group``: the help section the flag is listed under (:func:`add_flag_groups`).

Every flag's argparse default is ``None``: :func:`given` returns only what the user typed, so a
command can lay it over a preset or a saved config. A field holding a nested config dataclass is
expanded in place (``nested={"sae": SAEConfig}``).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any, Callable, Iterable

from dualsae.core.errors import ConfigError

_SCALARS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


@dataclass(frozen=True)
class Flag:
    """One generated flag: ``option`` sets field ``dest`` of ``owner`` (a config dataclass)."""

    dest: str
    option: str
    type: type
    help: str
    owner: type
    choices: tuple[str, ...] | None = None
    default: Any = None
    default_note: str | None = None
    group: str | None = None

    @property
    def is_switch(self) -> bool:
        return self.type is bool


def _scalar(field: Field, cls: type) -> type:
    """int / float / str / bool of an annotation such as ``"int | None"``."""
    names = [a.strip() for a in str(field.type).split("|") if a.strip() != "None"]
    if len(names) != 1 or names[0] not in _SCALARS:
        raise TypeError(f"{cls.__name__}.{field.name}: annotation {field.type!r} has no command-line type; set metadata cli=False")
    return _SCALARS[names[0]]


def _default(field: Field) -> Any:
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return None


def dataclass_flags(cls: type, *, skip: Iterable[str] = (), nested: dict[str, type] | None = None) -> list[Flag]:
    """The flags of ``cls``'s fields in field order (``skip``: names left out; ``nested``: fields
    holding a config dataclass, whose own flags take their place)."""
    nested, skip = nested or {}, set(skip)
    out: list[Flag] = []
    for f in fields(cls):
        if f.name in skip:
            continue
        if f.name in nested:
            out += dataclass_flags(nested[f.name], skip=skip)
            continue
        meta = f.metadata
        if meta.get("cli") is False:
            continue
        if "help" not in meta:
            raise TypeError(f"{cls.__name__}.{f.name}: no metadata 'help' for its flag (or metadata cli=False)")
        typ, default = meta.get("type") or _scalar(f, cls), _default(f)
        switch = "--no-" if typ is bool and default else "--"
        option = meta.get("flag", switch + f.name.replace("_", "-"))
        out.append(Flag(f.name, option, typ, meta["help"], cls, tuple(meta["choices"]) if "choices" in meta else None,
                        default, meta.get("default"), meta.get("group")))
    return out


def field_default(flag: Flag) -> str:
    """``default: <value>`` from the field (or its metadata's ``default`` note)."""
    return f"default: {flag.default_note if flag.default_note is not None else flag.default}"


def add_flags(parser: argparse.ArgumentParser | Any, flags: list[Flag],
              default_text: Callable[[Flag], str] = field_default) -> None:
    """Add ``flags`` to ``parser`` (or an argument group); the help ends with ``(default_text(flag))``."""
    for flag in flags:
        text = flag.help + (f": {' | '.join(flag.choices)}" if flag.choices else "")
        text = (text if flag.is_switch else f"{text} ({default_text(flag)})").replace("%", "%%")
        if flag.is_switch:
            parser.add_argument(flag.option, dest=flag.dest, action="store_const", const=not flag.default, default=None, help=text)
        else:
            parser.add_argument(flag.option, dest=flag.dest, type=flag.type, default=None, help=text)


def add_flag_groups(parser: argparse.ArgumentParser, flags: list[Flag],
                    default_text: Callable[[Flag], str] = field_default) -> None:
    """:func:`add_flags`, each flag under the help section its field's metadata ``group`` names."""
    groups: dict[str | None, list[Flag]] = {}
    for flag in flags:
        groups.setdefault(flag.group, []).append(flag)
    for name, members in groups.items():
        add_flags(parser.add_argument_group(name) if name else parser, members, default_text)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's ``(default: X)`` suffix, left off a help text that already states its default
    (``"... (default: one in the model folder)"`` must not read ``... (default: None)`` after it)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        return text if "default" in text.lower() else super()._get_help_string(action)


def given(args: argparse.Namespace, flags: list[Flag]) -> dict[str, Any]:
    """{field: value} of the flags the user gave (every generated flag defaults to None)."""
    return {f.dest: getattr(args, f.dest) for f in flags if getattr(args, f.dest, None) is not None}


def build_from_flags(cls: type, args: argparse.Namespace, flags: list[Flag], **values: Any) -> Any:
    """``cls(**given flags, **values)``; a :class:`ConfigError` of its checks that opens with a field's
    name (``shuffles must be >= 0``) is re-raised naming the flag the user typed (``--shuffles``)."""
    kw = {**given(args, flags), **values}
    try:
        return cls(**kw)
    except ConfigError as e:
        raise ConfigError(flag_named(str(e), flags)) from None


def flag_named(message: str, flags: list[Flag]) -> str:
    """``message`` with a leading config field name (``min_support must ...``) replaced by its flag."""
    m = re.match(r"^(?:\w+ )?field '(\w+)' |^(\w+) ", message)  # "shuffles must", "diagnose field 'rows' must"
    name = m and (m.group(1) or m.group(2))
    for flag in flags:
        if flag.dest == name:
            return f"{flag.option} " + message[m.end():]
    return message


__all__ = ["DefaultsHelpFormatter", "Flag", "add_flag_groups", "add_flags", "build_from_flags", "dataclass_flags", "field_default", "flag_named", "given"]
