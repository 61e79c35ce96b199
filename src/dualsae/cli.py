"""The ``dualsae`` command: a thin shell over the library (parsing, progress, files)."""

from __future__ import annotations

import argparse
import sys

from dualsae import __version__
from dualsae.commands import COMMAND_MODULES
from dualsae.core.distributed import record_rank_error
from dualsae.core.errors import DualSAEError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualsae",
        description="Modality-specific sparse autoencoders with post-hoc cross-modal alignment for "
        "vision-language embeddings. Run 'dualsae COMMAND --help' for each command.",
    )
    parser.add_argument("--version", action="version", version=f"dualsae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DualSAEError as e:
        print(f"dualsae: error: {e}", file=sys.stderr)
        record_rank_error(f"dualsae: error: {e}", e)  # for python -m dualsae.launch's last line
        return 2
    except KeyboardInterrupt:
        print("dualsae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
