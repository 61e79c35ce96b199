"""One optimisation step of the trainer: the SAEs being trained (members), their AdamW and clipping,
the per-member loss (eq. 4 + AuxK + the method's alignment term) and the batch order of an epoch.
"""

from __future__ import annotations
from dataclasses import dataclass, field
from typing import Callable
import numpy as np
import torch
from dualsae.core.codes import SparseCodes
from dualsae.store.paired import PairedEmbeddings, epoch_order
from dualsae.core.sparse_ops import DecoderDots
from dualsae.core.losses import aux_k_loss, group_sparse_loss, iso_energy_alignment, iso_energy_dot, l1_penalty, reconstruction_loss
from dualsae.models.sae import SAE
from dualsae.training.config import PAIRED_METHODS
from dualsae.training.config import TrainConfig
from dualsae.training.config import steps_per_epoch


@dataclass
class _Member:
    """One SAE being trained, its optimizer, and which modalities of a batch it sees."""

    name: str  # folder name: image | text | shared
    sae: SAE
    modalities: tuple[str, ...]
    opt: torch.optim.Optimizer = field(init=False)
    # Constant the group-sparse lambda is multiplied by (dualsae.training.group_sparse_scale); None = raw lambda.
    gs_scale: float | None = None


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


def _make_members(config: TrainConfig, store: PairedEmbeddings, device: torch.device) -> list[_Member]:
    gen = torch.Generator().manual_seed(config.seed)
    sae_cfg = config.sae_config(store.d)
    if config.method == "specific":
        mods = [m for m in ("image", "text") if store.has(m)]
        return [make_member(m, SAE(sae_cfg, generator=gen), (m,), config, device) for m in mods]
    mods = tuple(m for m in ("image", "text") if store.has(m))
    return [make_member("shared", SAE(sae_cfg, generator=gen), mods, config, device)]


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

    The loss is the mean over the B pairs of a per-pair sum over the modalities M this SAE sees
    (eq. 4 per modality, the form of Props. 3-4 and of Kaushik et al.):

        sum_{mod in M} ||x - x_hat||^2                                   reconstruction (eq. 4)
      + aux_coef * sum_{mod in M} ||e - e_hat||^2                        AuxK (TopK / BatchTopK)
      + l1_coef * sum_{mod in M} ||z||_1                                 (ReLU)
      + group_sparse_lambda * gs_scale * sum_j sqrt(z_I,j^2 + z_T,j^2)   group-sparse
      + 2 d beta * L_align (cosine form) or beta * (-z_I . z_T) (dot)    iso-energy

    The 2 d turns the official Iso-Energy code's beta, which weighs L_align against an MSE averaged
    over the concatenated [2B, d] image+text batch, into the same balance against our per-pair sum
    (2 d times that MSE). ``gs_scale`` is fixed before training (dualsae.training.group_sparse_scale).
    """
    sae = mem.sae
    mods = mem.modalities
    x = torch.cat([batch[m] for m in mods]) if len(mods) > 1 else batch[mods[0]]
    out = sae(x)
    B = batch[mods[0]].shape[0]
    logs: dict[str, float] = {}
    loss = x.new_zeros(())
    for i, mod in enumerate(mods):
        rec = reconstruction_loss(x[i * B:(i + 1) * B], out.recon[i * B:(i + 1) * B])
        loss = loss + rec
        logs[f"mse_{mod}"] = rec.item()
    # aux_k_loss and l1_penalty average over the len(mods) * B rows; times len(mods) = per-pair sum.
    if config.aux_coef > 0 and sae.config.activation != "relu":
        aux = aux_k_loss(sae, x, x - out.recon, out.pre_acts)
        loss = loss + config.aux_coef * len(mods) * aux
        logs["aux"] = aux.item()
    if sae.config.activation == "relu":
        loss = loss + sae.config.l1_coef * len(mods) * l1_penalty(out.codes)
    if config.method in PAIRED_METHODS:
        zi = SparseCodes(out.codes.values[:B], out.codes.indices[:B], sae.m)
        zt = SparseCodes(out.codes.values[B:], out.codes.indices[B:], sae.m)
        if config.method == "group-sparse":
            scale = 1.0 if mem.gs_scale is None else mem.gs_scale
            align = group_sparse_loss(zi, zt, config.group_sparse_lambda, scale=scale)
        elif config.iso_energy_form == "cosine":
            align = config.beta_iso * 2 * sae.d * iso_energy_alignment(zi, zt)
        else:
            align = config.beta_iso * iso_energy_dot(zi, zt)
        loss = loss + align
        logs["align"] = align.item()
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
