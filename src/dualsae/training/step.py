"""One optimisation step of the trainer: the SAEs being trained (members), their AdamW and clipping,
the per-member loss (the method's named terms, :mod:`dualsae.training.methods`, summed), the
batch order of an epoch and the batches a rank reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from dualsae.core.distributed import Distributed
from dualsae.core.sparse_ops import DecoderDots
from dualsae.models.sae import SAE
from dualsae.store.batches import BatchReader
from dualsae.store.paired import PairedEmbeddings, epoch_order
from dualsae.training.config import TrainConfig, steps_per_epoch
from dualsae.training.methods import METHODS, Forward


@dataclass
class _Member:
    """One SAE being trained, its optimizer, and which modalities of a batch it sees."""

    name: str  # folder name: image | text | shared
    sae: SAE
    modalities: tuple[str, ...]
    opt: torch.optim.Optimizer = field(init=False)
    # Constant the group-sparse lambda is multiplied by (dualsae.training.group_sparse_scale); None = raw lambda.
    gs_scale: float | None = None
    # Factor this SAE's rows are multiplied by before the forward pass (dualsae.training.input_scale); 1.0 = none.
    input_scale: float = 1.0


def make_adamw(params, config: "TrainConfig") -> torch.optim.Optimizer:
    """AdamW with the config's hyper-parameters; the fused kernel where this torch has it (same
    update rule, one pass over the parameters instead of several)."""
    kwargs = dict(lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, weight_decay=config.weight_decay)
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kwargs)


def clip_gradients(opt: torch.optim.Optimizer, max_norm: float) -> None:
    """``clip_grad_norm_(params, max_norm)`` for the next ``opt.step()``: the gradients are divided by
    ``max(1, (||g|| + 1e-6) / max_norm)``, ``||g||`` the norm of all of them together.

    With the fused AdamW the division happens inside the optimizer's kernel (its ``grad_scale``, the
    hook mixed-precision training uses), so the gradients are read once for the norm and not
    rewritten: one pass over them fewer per step. The factor stays a tensor (no host sync on CUDA).
    Other optimizers get ``clip_grad_norm_`` itself.
    """
    params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
    if not opt.defaults.get("fused"):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    # Sums of squares as BLAS dot products: two threads share them, where vector_norm ran on one.
    total = torch.stack([torch.dot(g, g) for g in (p.grad.reshape(-1) for p in params)]).sum().sqrt()
    opt.grad_scale = ((total + 1e-6) / max_norm).clamp_min(1.0)  # type: ignore[attr-defined]


def member_layout(config: TrainConfig, store: PairedEmbeddings) -> list[tuple[str, tuple[str, ...]]]:
    """[(member name, modalities it trains on)]: one SAE per modality present, or one shared SAE on all."""
    mods = tuple(m for m in ("image", "text") if store.has(m))
    if not METHODS[config.method].shared:
        return [(m, (m,)) for m in mods]
    return [("shared", mods)]


def _make_members(config: TrainConfig, store: PairedEmbeddings, device: torch.device) -> list[_Member]:
    gen = torch.Generator().manual_seed(config.seed)
    sae_cfg = config.sae_config(store.d)
    return [make_member(name, SAE(sae_cfg, generator=gen), mods, config, device) for name, mods in member_layout(config, store)]


def make_member(name: str, sae: SAE, modalities: tuple[str, ...], config: TrainConfig,
                device: torch.device | str = "cpu") -> "_Member":
    """One SAE ready for :func:`_step`: on ``device``, the config's selection dtype, the selection
    product's buffer reused from step to step (one forward per step), and its AdamW."""
    mem = _Member(name, sae.to(device), modalities)
    sae.selection_dtype = getattr(torch, config.selection_dtype)
    sae.reuse_selection_memory = True
    mem.opt = make_adamw(sae.parameters(), config)
    return mem


def _member_loss(mem: _Member, config: TrainConfig, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one SAE on one batch of B pairs, and scalar logs. batch[mod]: [B, d].

    The method's loss function (:data:`dualsae.training.methods.METHODS`) names its terms; the loss
    is their sum (each a mean over the B pairs of a per-pair sum, eq. 4 per modality), each term's
    value is logged under its name, with the SAE's mean active latents ``l0``, its ``dead_frac``
    and ``loss_<member>``. The rows are multiplied by the member's ``input_scale`` first.
    """
    sae = mem.sae
    mods = mem.modalities
    x = torch.cat([batch[m] for m in mods]) if len(mods) > 1 else batch[mods[0]]
    if mem.input_scale != 1.0:  # 1.0: not even a multiply, so unscaled runs stay bit-identical
        x = x * mem.input_scale
    out = sae(x)
    terms = METHODS[config.method].loss(Forward(sae, x, out, mods, batch[mods[0]].shape[0], mem.gs_scale), config)
    logs: dict[str, float] = {}
    loss = x.new_zeros(())
    for name, term in terms.items():
        loss = loss + term.weighted()
        logs[name] = term.value.item()
    logs["l0"] = int((out.codes.values > 0).sum().item()) / out.codes.batch  # mean active per row
    sae.update_fired(out.codes.detach())
    logs["dead_frac"] = sae.dead_mask().float().mean().item()
    logs[f"loss_{mem.name}"] = loss.item()
    return loss, logs


def _step(members: list[_Member], config: TrainConfig, batch: dict[str, torch.Tensor], lr: float,
          reduce_grads: Callable[[torch.nn.Module], None] | None = None) -> dict[str, float]:
    """One optimizer step of every member; ``reduce_grads`` combines the ranks' gradients under torchrun."""
    logs: dict[str, float] = {}
    for mem in members:
        for group in mem.opt.param_groups:
            group["lr"] = lr
        mem.opt.zero_grad(set_to_none=True)
        # The sparse decodes' backward passes accumulate the projection's dot products (DecoderDots).
        mem.sae.decoder_dots = dots = DecoderDots(mem.sae.m, mem.sae.W_dec.device)
        try:
            loss, mlogs = _member_loss(mem, config, batch)
        finally:
            mem.sae.decoder_dots = None
        loss.backward()
        if reduce_grads is not None:
            reduce_grads(mem.sae)
        # Under torchrun the gradient is the ranks' weighted sum: its dots are measured after it.
        mem.sae.remove_parallel_grad(dots.dots if dots.valid and reduce_grads is None else None)
        if config.grad_clip > 0:
            clip_gradients(mem.opt, config.grad_clip)
        mem.opt.step()
        mem.sae.normalize_decoder()
        for key, val in mlogs.items():
            # l0/dead_frac of several SAEs: report the mean over them.
            logs[key] = logs.get(key, 0.0) + val / (len(members) if key in ("l0", "dead_frac") else 1)
    logs["loss"] = sum(v for k, v in logs.items() if k.startswith("loss_"))
    return logs


class _BatchOrder:
    """Row positions of each step's batch; the epoch's permutation is drawn once per epoch (it is a
    pure function of (seed, epoch), so a resumed run gets the same batches)."""

    def __init__(self, n: int, config: TrainConfig) -> None:
        self.n, self.config = n, config
        self.spe = steps_per_epoch(n, config.batch_size)
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def __call__(self, step: int) -> np.ndarray:
        epoch, within = divmod(step, self.spe)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(self.n, self.config.seed, epoch)
        bs = self.config.batch_size
        return self._order[within * bs:(within + 1) * bs]


class _Batches:
    """Each step's batch on ``device``: this rank's slice of the global batch of ``batch_size``
    pairs (:class:`_BatchOrder`), read ahead in a background thread with ``prefetch``."""

    def __init__(self, store: PairedEmbeddings, config: TrainConfig, dist: Distributed, total: int,
                 device: torch.device, prefetch: bool | None) -> None:
        order = _BatchOrder(store.n, config)
        self.store, self.dist = store, dist
        self.global_rows = min(config.batch_size, store.n)
        self.reader = BatchReader(store, lambda s: dist.slice(order(s)), total, device, prefetch)

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        """{modality: [rows, d]} of step ``step``."""
        return self.reader(step)

    @staticmethod
    def rows(batch: dict[str, torch.Tensor]) -> int:
        return next(iter(batch.values())).shape[0]

    def reduce_grads(self, batch: dict[str, torch.Tensor]) -> Callable[[torch.nn.Module], None] | None:
        """Under torchrun: the gradient combination of this rank's share of the batch (else None)."""
        if not self.dist.enabled:
            return None
        rows = self.rows(batch)
        return lambda sae: self.dist.reduce_grads(sae, rows, self.global_rows)

    def release(self, step: int) -> None:
        """Let the OS drop the memory-mapped pages read so far (every 8 steps)."""
        if step % 8 == 0:
            self.store.release_pages()

    def close(self) -> None:
        self.reader.close()
