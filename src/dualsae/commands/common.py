"""Helpers shared by the CLI subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from dualsae.data import PairedEmbeddings


def open_data(path: str | Path, check_values: bool = True) -> PairedEmbeddings:
    """Open a store folder in any supported layout (dualsae store or clip-retrieval folders)."""
    try:
        from dualsae.readers import open_store
    except ImportError:
        return PairedEmbeddings.open(path, check_values=check_values)
    return open_store(path)


def add_split_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--split", default=default,
                   help=f"rows to use: a value of meta.jsonl's 'split' field, or train/test drawn by seed when the store has none, or 'all' (default: {default})")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="test share of the seeded split when the store has no 'split' field (default: 0.2)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of that split (default: 0)")


def select_split(store: PairedEmbeddings, args: argparse.Namespace) -> PairedEmbeddings:
    return store.split(args.split, test_fraction=args.test_fraction, seed=args.split_seed)
