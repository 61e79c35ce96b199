"""CLI subcommands, one module each. Each exposes ``register(subparsers)``, which adds its parser(s) and
sets ``func`` (a callable taking the parsed args and returning an exit code); ``dualsae.cli`` registers
them in this order (the order of ``dualsae --help``)."""

from dualsae.commands import (
    align,
    analyze,
    compare,
    diagnose,
    evaluate,
    export,
    extract,
    info,
    report,
    reproduce,
    synth,
    train,
    translate,
)

COMMAND_MODULES = (train, info, align, compare, analyze, synth, extract, evaluate, reproduce, translate, diagnose, report, export)
