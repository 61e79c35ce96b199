"""CLI subcommands. Each module exposes ``register(subparsers)`` which adds its parser(s) and sets
``func`` (a callable taking the parsed args and returning an exit code). ``dualsae.cli`` imports
the modules listed in ``COMMAND_MODULES``; a module that is missing is skipped."""

COMMAND_MODULES = (
    "train",
    "info",
    "align",
    "analyze",
    "synth",
    "extract",
    "evaluate",
    "reproduce",
    "translate",
    "diagnose",
    "report",
)
