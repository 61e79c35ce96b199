"""Fixtures shared by the test modules (builders that are plain functions live in tests/helpers.py)."""

from __future__ import annotations

import pytest

from dualsae.store.paired import PairedEmbeddings
from tests.helpers import EMOJI, make_store


@pytest.fixture()
def store(tmp_path) -> PairedEmbeddings:
    """The training split of a small planted store (400 pairs, d = 16; :func:`tests.helpers.make_store`)."""
    make_store(tmp_path / "data", n=400, d=16)
    return PairedEmbeddings.open(tmp_path / "data").split("train")


@pytest.fixture(scope="session")
def emoji() -> PairedEmbeddings:
    """The real emoji store (8,280 pairs, 512-d); the test is skipped where ../shared is absent."""
    if not (EMOJI / "image.npy").is_file():
        pytest.skip(f"{EMOJI} not present (../shared beside the checkout)")
    return PairedEmbeddings.open(EMOJI)
