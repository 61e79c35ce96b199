"""Running under ``torchrun``: rank and world size, the process group, batch slicing, all-reduces.

A thin layer that ``train``, ``align`` and ``extract`` call. ``Distributed.from_env()`` reads the
variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); without them (or with ``WORLD_SIZE=1``) it returns a single-process object whose
every method is the identity, and ``torch.distributed`` is never imported or touched.

Training semantics (DistributedDataParallel): every rank holds the same weights; each rank reads
only its slice of every global batch (:meth:`Distributed.slice`); the gradients of the per-row mean
losses are combined with weights ``rows_r / rows`` (:meth:`Distributed.reduce_grads`), which is the
gradient of the global batch's mean loss, so every optimizer step, clipping and decoder
renormalisation is identical on every rank. Statistics of a whole batch that the step uses (the
BatchTopK selection and threshold, the dead-latent counters of AuxK) are reduced over ranks
through the module-level helpers below (:func:`all_sum`, :func:`all_min`, :func:`batch_topk`),
which act only inside
``with dist.active():`` and are plain local computations otherwise.

Backend: ``nccl`` when the device is CUDA, ``gloo`` on CPU (the tests run two gloo processes on
one machine).
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from dualsae.core.errors import ConfigError, DualSAEError

_ENV = ("RANK", "WORLD_SIZE")
T = TypeVar("T")


class RankStopped(DualSAEError):
    """Rank 0 failed in :meth:`Distributed.on_main`; this rank stops with it."""


#: Folder where each rank started by ``python -m dualsae.launch`` leaves its one-line error, so the
#: launcher can print the reason after torchrun's own report (:mod:`dualsae.launch`).
RANK_ERRORS_ENV = "DUALSAE_RANK_ERRORS"


def record_rank_error(message: str, error: BaseException) -> None:
    """Leave ``message`` for the launcher in ``$DUALSAE_RANK_ERRORS/rank-<RANK>.txt`` (nothing without
    the variable). A rank that only followed another's failure (:class:`RankStopped`) is marked so,
    which lets the launcher show the cause first."""
    folder = os.environ.get(RANK_ERRORS_ENV)
    if not folder:
        return
    kind = "follows" if isinstance(error, RankStopped) else "cause"
    try:
        with open(os.path.join(folder, f"rank-{os.environ.get('RANK', '0')}.txt"), "w") as f:
            f.write(f"{kind}\t{message}\n")
    except OSError:
        pass  # the error is printed on stderr anyway


def resolve_device(device: str | torch.device) -> torch.device:
    """auto -> cuda when available, else cpu; cuda asked for without one is a one-line error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):  # torch also parses 'meta', 'xla', 'mps'...: none of them runs dualsae
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got '{name}'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available (use --device cpu or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


class Distributed:
    """Rank ``rank`` of ``world`` processes. ``world == 1``: one process, no process group."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, backend: str | None = None) -> None:
        self.rank, self.world, self.local_rank, self.backend = int(rank), int(world), int(local_rank), backend

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_env(cls, device: str | torch.device = "cpu") -> "Distributed":
        """The process group ``torchrun`` describes in the environment, initialised (gloo on CPU,
        nccl on CUDA); a single-process object when the environment names no group of 2+."""
        if not all(k in os.environ for k in _ENV):
            return cls()
        try:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local = int(os.environ.get("LOCAL_RANK", rank))
        except ValueError:
            raise ConfigError(f"RANK={os.environ['RANK']!r} / WORLD_SIZE={os.environ['WORLD_SIZE']!r}: expected integers (as torchrun sets them)") from None
        if world <= 1:
            return cls()

        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        # torch._dynamo imported after the group exists (the optimizer's step imports it lazily) keeps
        # a reference to the group past destroy_process_group: its gloo threads then outlive close()
        # and can release a collective's tensors while the interpreter shuts down, which aborts the
        # process ("terminate called without an active exception"; seen in tests/test_distributed.py).
        import torch._dynamo as _dynamo  # noqa: F401  (binds no local name "torch")

        if not dist.is_initialized():
            if backend == "nccl":
                torch.cuda.set_device(local)
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        return cls(rank, world, local, backend)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs and the progress bar."""
        return self.rank == 0

    def device(self, device: str | torch.device) -> torch.device:
        """``cuda`` without an index means this rank's GPU (``cuda:LOCAL_RANK``) under torchrun."""
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None and self.enabled:
            return torch.device("cuda", self.local_rank)
        return dev

    def close(self) -> None:
        if self.enabled:

            if dist.is_initialized():
                dist.destroy_process_group()

    # ------------------------------------------------------------------ data
    def slice(self, positions: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of a global batch [B] -> [B_r] (the shares differ by at most
        one row and together are the whole batch, in order)."""
        n = len(positions)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return positions[lo:hi]

    def shards(self, n: int) -> range:
        """Work items ``rank, rank + world, ...`` of ``n`` (extraction shards, correlation batches)."""
        return range(self.rank, n, self.world)

    # ------------------------------------------------------------------ collectives
    def on_main(self, fn: Callable[[], T], where: str) -> T | None:
        """``fn()`` on rank 0 alone (claiming and locking the output folder, checking the data), and
        every rank learns whether it failed: the outcome is all-reduced, so a refusal on rank 0 (a
        foreign ``--out``, a folder another process has locked) stops every rank with exit 2 instead
        of leaving the others waiting for ever in the next collective. It is also a barrier: no rank
        goes on before rank 0 has finished ``fn``. One process: ``fn()``. Returns ``fn``'s value on
        rank 0, None on the others."""
        if not self.enabled:
            return fn()
        error: BaseException | None = None
        result = None
        if self.is_main:
            try:
                result = fn()
            except BaseException as e:  # noqa: BLE001  (re-raised below, after the others are told)
                error = e
        failed = int(self.sum(torch.tensor([0 if error is None else 1], dtype=torch.int64)).item())
        if error is not None:
            raise error
        if failed:
            raise RankStopped(f"{where}: rank 0 stopped before the work began (its message says why); rank {self.rank} stops with it")
        return result

    def barrier(self) -> None:
        if self.enabled:

            dist.barrier()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (as DDP does at construction)."""
        if not self.enabled:
            return

        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)

    def reduce_grads(self, module: torch.nn.Module, rows: int, total: int) -> None:
        """Gradient of the global mean loss from each rank's local mean loss: sum over ranks of
        grad_r * rows_r / total, written into every rank's ``.grad`` (one flat all-reduce)."""
        if not self.enabled:
            return

        params = [p for p in module.parameters() if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params]).mul_(rows / total)
        dist.all_reduce(flat)
        pos = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[pos:pos + n].view_as(p.grad))
            pos += n

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a new tensor; the input is left alone)."""
        if not self.enabled:
            return t

        out = t.detach().clone()
        dist.all_reduce(out)
        return out

    def min(self, t: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return t

        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.MIN)
        return out

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-shaped tensors of all ranks along dim 0 (rank order)."""
        if not self.enabled:
            return t

        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def mean_logs(self, logs: dict[str, float], rows: int, total: int) -> dict[str, float]:
        """Scalar logs of the global batch: the row-weighted mean of the ranks' values (every key
        is a per-row mean, or a batch count that all ranks share, such as ``dead_frac``)."""
        if not self.enabled or not logs:
            return logs
        keys = list(logs)
        vals = self.sum(torch.tensor([logs[k] * rows / total for k in keys], dtype=torch.float64))
        return dict(zip(keys, vals.tolist()))

    @contextlib.contextmanager
    def active(self) -> Iterator["Distributed"]:
        """Within this block the module-level helpers reduce over this group's ranks."""
        global _ACTIVE
        before, _ACTIVE = _ACTIVE, (self if self.enabled else None)
        try:
            yield self
        finally:
            _ACTIVE = before


_ACTIVE: Distributed | None = None


def current() -> Distributed | None:
    """The group whose ``active()`` block we are in, or None (one process)."""
    return _ACTIVE


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over the active group's ranks; ``t`` itself outside a group."""
    return t if _ACTIVE is None else _ACTIVE.sum(t)


def all_min(t: torch.Tensor) -> torch.Tensor:
    """Minimum of ``t`` over the active group's ranks; ``t`` itself outside a group."""
    return t if _ACTIVE is None else _ACTIVE.min(t)


def batch_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the ``k`` largest entries of ``scores`` (1-D), where under a group ``k`` is
    this rank's share and the selection is over the *global* batch: the entries of this rank at or
    above the global (sum of k)-th largest value (BatchTopK, Bussmann et al. 2024).

    A one-process ``topk(k)`` picks exactly the entries >= that value (up to ties), so a batch
    split over ranks selects the same latents as the whole batch in one process.
    """
    if _ACTIVE is None:
        return scores.topk(k).indices
    k_total = int(_ACTIVE.sum(torch.tensor([k], dtype=torch.long, device=scores.device)).item())
    # The global top k_total lies within the union of every rank's local top k_total; pad with
    # -inf so that every rank sends the same shape.
    local = scores.topk(min(k_total, scores.numel())).values
    if local.numel() < k_total:
        local = torch.cat([local, local.new_full((k_total - local.numel(),), float("-inf"))])
    threshold = _ACTIVE.all_gather(local).topk(k_total).values[-1]
    # Scores are ReLU'd pre-activations: when the threshold is 0 the zeros it would tie with carry
    # no value (nor gradient, nor a firing), so they are left out instead of selected by the
    # thousand.
    keep = scores >= threshold if threshold > 0 else scores > 0
    return keep.nonzero().flatten()


__all__ = ["Distributed", "RankStopped", "resolve_device", "current", "all_sum", "all_min", "batch_topk"]
