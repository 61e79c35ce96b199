"""``correlation.safetensors``: the live block of C (eq. 5) beside an aligned folder.

Format ``dualsae.correlation/1``: the dense live block C [n_I, n_T] (float32) with ``live_image``,
``live_text`` (text latents in the shared index space, after eq. 7) and ``live_text_original``.
Format ``dualsae.correlation/2`` (:func:`dualsae.alignment.sparse_correlation.save_sparse_correlation`):
the co-firing entries and the rank-one marginals, any size. :func:`load_correlation` reads both (a /2
file densified when small), :func:`load_sparse_correlation` both without densifying.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dualsae.alignment.sparse_correlation import DENSE_ENTRIES_LIMIT, SparseCorrelation, sparse_from_tensors
from dualsae.core.errors import CheckpointError
from dualsae.files.atomic import save_tensors
from dualsae.files.tensorfiles import read_tensors

CORRELATION_FORMAT = "dualsae.correlation/1"


def save_correlation(folder: str | Path, c: torch.Tensor, live_image: Any, live_text: Any,
                     live_text_original: Any) -> Path:
    """Write ``folder/correlation.safetensors``: the live block of C [n_I, n_T] as float32 with
    ``live_image`` (shared index = image index), ``live_text`` (text latents in the shared index space,
    after eq. 7) and ``live_text_original`` (before it)."""
    path = Path(folder) / "correlation.safetensors"
    save_tensors(path, {"C": c.to(torch.float32), "live_image": torch.as_tensor(live_image),
                        "live_text": torch.as_tensor(live_text), "live_text_original": torch.as_tensor(live_text_original)},
                 metadata={"format": CORRELATION_FORMAT})
    return path


def _read_correlation_file(folder: str | Path) -> tuple[Path, dict]:
    path = Path(folder) / "correlation.safetensors"
    return path, read_tensors(path, CheckpointError, "run 'dualsae align' without --no-correlation, or pass --data to recompute C")


def load_sparse_correlation(folder: str | Path) -> SparseCorrelation:
    """``correlation.safetensors`` of an aligned folder as a :class:`SparseCorrelation` (text latents in the
    shared index space): a /2 file as stored, a /1 (dense) file with every entry explicit."""
    path, t = _read_correlation_file(folder)
    if "pair_values" in t:
        return sparse_from_tensors(path, t)
    c, li, lt = _dense_from_tensors(path, t)
    return SparseCorrelation.from_dense(c, li.numpy(), lt.numpy())


def load_stored_correlation(folder: str | Path) -> SparseCorrelation | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``correlation.safetensors`` as stored: a :class:`SparseCorrelation` for a /2 file, else the /1
    triple ``(C, live_image, live_text)`` of :func:`load_correlation` (text latents in the shared index space)."""
    path, t = _read_correlation_file(folder)
    return sparse_from_tensors(path, t) if "pair_values" in t else _dense_from_tensors(path, t)


def load_correlation(folder: str | Path, limit: int = DENSE_ENTRIES_LIMIT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read ``correlation.safetensors`` of an aligned folder: ``(C [n_I, n_T], live_image, live_text)``
    with ``live_text`` in the shared index space. A sparse (/2) file is densified (float32, as /1
    stores it) when it has at most ``limit`` entries, else refused (use :func:`load_sparse_correlation`)."""
    path, t = _read_correlation_file(folder)
    if "pair_values" in t:
        sc = sparse_from_tensors(path, t)
        return sc.dense(limit).to(torch.float32), torch.from_numpy(sc.live_image), torch.from_numpy(sc.live_text)
    return _dense_from_tensors(path, t)


def _dense_from_tensors(path: Path, t: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    missing = sorted({"C", "live_image", "live_text"} - set(t))
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {missing}")
    c, li, lt = t["C"], t["live_image"].long(), t["live_text"].long()
    if tuple(c.shape) != (len(li), len(lt)):
        raise CheckpointError(f"{path}: tensor 'C' has shape {list(c.shape)}, expected [{len(li)}, {len(lt)}] from live_image/live_text")
    return c, li, lt


__all__ = ["CORRELATION_FORMAT", "load_correlation", "load_sparse_correlation", "load_stored_correlation", "save_correlation"]
