"""Reading training batches from a store, optionally one step ahead (the GPU input path).

``BatchReader(store, positions, stop, device, prefetch)(step)`` returns ``{modality: [b, d]}`` on
``device`` for the rows ``positions(step)``. With ``prefetch`` a background thread reads step + 1
from the memory-mapped store while step runs (``preadv`` and the float16->float32 copy release the
GIL); on CUDA the rows land in pinned memory and are copied with ``non_blocking=True``, so the
host-to-device copy overlaps the previous step's kernels. The batches are the same either way.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from dualsae.core.modalities import MODALITIES
from dualsae.store.paired import PairedEmbeddings


class BatchReader:
    """Batches of ``positions(step)`` for steps ``< stop``. prefetch None: on for CUDA devices."""

    def __init__(self, store: PairedEmbeddings, positions: Callable[[int], np.ndarray], stop: int,
                 device: torch.device, prefetch: bool | None = None) -> None:
        self.store, self.positions, self.stop, self.device = store, positions, stop, torch.device(device)
        self.pin = self.device.type == "cuda"
        self.prefetch = self.pin if prefetch is None else prefetch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dualsae-batch") if self.prefetch else None
        self._next: tuple[int, Future] | None = None

    def _read(self, step: int) -> dict[str, torch.Tensor]:
        pos = self.positions(step)
        out = {}
        for m in MODALITIES:
            if self.store.has(m):
                rows = self.store.read(m, pos)
                out[m] = rows.pin_memory() if self.pin else rows
        return out

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        if self._pool is None:
            host = self._read(step)
        else:
            if self._next is not None and self._next[0] == step:
                host = self._next[1].result()
            else:
                host = self._read(step)
            self._next = (step + 1, self._pool.submit(self._read, step + 1)) if step + 1 < self.stop else None
            if self._next is None:
                self._pool.shutdown(wait=False)
        return {m: t.to(self.device, non_blocking=self.pin) for m, t in host.items()}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["BatchReader"]
