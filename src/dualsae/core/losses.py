"""Loss terms as free functions of model outputs.

Reconstruction is the squared L2 error of eq. (4), summed over the d dimensions and averaged over
the batch, so the auxiliary-loss coefficients mean what the theory of Prop. 3 / Prop. 4 says they
mean (both terms are per-sample sums). All alignment losses work on :class:`SparseCodes`: the
matching of active latents between an image code and a text code is a ``[batch, k, k]`` index
comparison, never a dense ``[batch, m]`` matrix.

A training method's loss is a table of named :class:`LossTerm` s (``dualsae.training.methods``):
the trainer adds ``weight * value`` of each to the loss and logs each ``value`` under its name.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from dualsae.core.block_topk import topk_indices
from dualsae.core.codes import SparseCodes
from dualsae.core.screened_topk import Screen, Selection, certified_topk

_EPS = 1e-12


class LossTerm(NamedTuple):
    """One named term of a training loss: the loss gains ``weight * value``; ``value`` is logged.

    value: [] scalar tensor with autograd. weight: a constant (a coefficient such as AuxK's, or 1.0
    for a term that carries its coefficient already); 1.0 adds ``value`` itself (no extra op).
    """

    value: torch.Tensor
    weight: float = 1.0

    def weighted(self) -> torch.Tensor:
        """weight * value ([] tensor)."""
        return self.value if self.weight == 1.0 else self.weight * self.value


def reconstruction_loss(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """E ||x - x_hat||_2^2 (eq. 4): squared error summed over d, mean over the batch. x, recon: [batch, d]."""
    return (x - recon).pow(2).sum(dim=1).mean()


def explained_variance(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the batch. x, recon: [batch, d]."""
    resid = (x - recon).pow(2).sum()
    total = (x - x.mean(dim=0, keepdim=True)).pow(2).sum().clamp_min(_EPS)
    return 1 - resid / total


def _matched_partner(a: SparseCodes, b: SparseCodes) -> tuple[torch.Tensor, torch.Tensor]:
    """For each entry of ``a``, the value ``b`` gives the same latent in the same row.

    Returns ``(b_at_a [batch, ka], b_matched [batch, kb] bool)``. Inactive (zero) entries contribute
    zero; duplicate indices in ``b`` (padding) are summed, which is correct since padding is 0.
    """
    same = a.indices.unsqueeze(2) == b.indices.unsqueeze(1)  # [batch, ka, kb]
    b_at_a = (same * b.values.unsqueeze(1)).sum(dim=2)
    b_matched = (same & (a.values > 0).unsqueeze(2)).any(dim=1)
    return b_at_a, b_matched


def sparse_dot(a: SparseCodes, b: SparseCodes) -> torch.Tensor:
    """Row-wise inner product z_a . z_b of two sparse code batches -> [batch]."""
    b_at_a, _ = _matched_partner(a, b)
    return (a.values * b_at_a).sum(dim=1)


def group_sparse_penalty(zi: SparseCodes, zt: SparseCodes) -> torch.Tensor:
    """mean_i sum_j sqrt(z_I,ij^2 + z_T,ij^2)  (Kaushik et al.; the form of Prop. 3).

    Latents active in only one modality contribute |z|; shared ones the joint L2 norm.
    """
    t_at_i, t_matched = _matched_partner(zi, zt)
    # sqrt(v^2 + eps) keeps a zero gradient at v = 0 instead of NaN.
    joint = torch.sqrt(zi.values.pow(2) + t_at_i.pow(2) + _EPS) - _EPS**0.5
    # Duplicate image indices (padding) would count a text value twice; only real entries count.
    joint = joint * (zi.values > 0)
    text_only = zt.values.abs() * (~t_matched)
    return (joint.sum(dim=1) + text_only.sum(dim=1)).mean()


def activation_scale(zi: SparseCodes, zt: SparseCodes) -> torch.Tensor:
    """E[v^2] / E[v] over the active entries v of both code batches (detached, float64): an
    estimate of Prop. 3's lambda-dagger = E[z^2]/E[z].

    The trainer evaluates it *once*, before training (``dualsae.training.group_sparse_scale``), and holds the result
    fixed; it is not re-estimated from each step's codes, which would make the coefficient depend
    on the current solution and move the regime thresholds of Prop. 3. The ratio of moments is the
    same whether or not the zero entries of a sparse coefficient are counted.
    """
    v = torch.cat([zi.values.detach().flatten(), zt.values.detach().flatten()]).double()
    v = v[v > 0]
    if v.numel() == 0:
        return torch.tensor(1.0, dtype=torch.float64, device=zi.values.device)
    return v.pow(2).mean() / v.mean()


def group_sparse_loss(zi: SparseCodes, zt: SparseCodes, lam: float, scale: float = 1.0) -> torch.Tensor:
    """(lam * scale) * group_sparse_penalty, with ``scale`` a constant fixed before training.

    Kaushik et al. write the loss per pair as ||x - x_hat||^2 + ||y - y_hat||^2 + lambda L_gs(z_x, z_y)
    with L_gs = sum_j sqrt(z_x,j^2 + z_y,j^2): the same per-pair sums as our reconstruction term
    (eq. 4 per modality), so a raw lambda (``scale = 1``) means exactly their lambda.

    The trainer's default passes ``scale`` = lambda-dagger = E[z^2]/E[z] measured once before
    training (:func:`activation_scale`), which makes ``lam`` the scale-free lambda-tilde of Prop. 3:
    the separate columns win below lambda-tilde = (1-rho)/(2-sqrt(1+rho)), the merged column between
    that and sqrt(1+rho), the dead solution above (reproduced in tests/test_theory.py);
    lambda-tilde = 1 lies in the merged regime for every rho in (0, 1).
    """
    return (lam * float(scale)) * group_sparse_penalty(zi, zt)


def _mask_argmax(z: SparseCodes, a_idx: torch.Tensor, b_idx: torch.Tensor) -> torch.Tensor:
    """Values of ``z`` with the latents ``a_idx`` and ``b_idx`` ([batch]) set to zero."""
    drop = (z.indices == a_idx.unsqueeze(1)) | (z.indices == b_idx.unsqueeze(1))
    return z.values * (~drop)


def _argmax_latent(z: SparseCodes) -> torch.Tensor:
    return z.indices.gather(1, z.values.detach().argmax(dim=1, keepdim=True)).squeeze(1)


def iso_energy_alignment(zi: SparseCodes, zt: SparseCodes) -> torch.Tensor:
    """L_align = -mean_i cos(masked z_I,i, masked z_T,i)  (Dhimoila et al., official code).

    As ``alignment_penalty(..., alignment_metric='cosim')`` in Parabrele/MultimodalGeometry
    ``src/losses.py``: for each pair the argmax latent of z_I,i and the argmax latent of z_T,i are
    removed from *both* codes before the cosine, so the loss aligns the *rest* of the code rather
    than rewarding one dominant shared latent; the result is a mean over the B pairs. The official
    code multiplies it by beta and adds it to an MSE averaged over the concatenated [2B, d] batch;
    the trainer converts that beta to our per-pair sums (``dualsae.training.trainer``).
    """
    ai, at = _argmax_latent(zi), _argmax_latent(zt)
    vi = _mask_argmax(zi, ai, at)
    vt = _mask_argmax(zt, ai, at)
    mi = SparseCodes(vi, zi.indices, zi.m)
    mt = SparseCodes(vt, zt.indices, zt.m)
    dot = sparse_dot(mi, mt)
    norm = torch.sqrt(vi.pow(2).sum(1) * vt.pow(2).sum(1) + _EPS)
    return -(dot / norm).mean()


def iso_energy_dot(zi: SparseCodes, zt: SparseCodes) -> torch.Tensor:
    """The simplified form of Prop. 4: -mean_i z_I,i^T z_T,i."""
    return -sparse_dot(zi, zt).mean()


def aux_k_loss(sae, x: torch.Tensor, residual: torch.Tensor, pre_acts: torch.Tensor,
               selection: Selection | None = None) -> torch.Tensor:
    """AuxK (Gao et al. 2024): reconstruct the (detached) residual from the top dead latents.

    x: [batch, d] input; residual: x - x_hat, [batch, d] (detached here); pre_acts: [batch, m] no-grad.
    ``selection``: the forward's certified bfloat16 screen (pre_acts is then its approximation), so the
    dead latents are chosen by their float32 pre-activations as without it.
    Returns ||e - e_hat||^2 summed over d, mean over batch; 0 when no latent is dead.
    """
    dead = sae.dead_mask()
    n_dead = int(dead.sum().item())
    if n_dead == 0:
        return x.new_zeros(())
    k_aux = min(sae.config.effective_aux_k, n_dead)
    masked = pre_acts.masked_fill(~dead.unsqueeze(0), float("-inf"))
    if selection is None:
        idx = topk_indices(masked, k_aux).sort(dim=1).values
        vals = F.relu(sae.gather_pre(x, idx, pre_acts))
    else:
        live = ~dead

        def exact(rows: torch.Tensor | None, cand: torch.Tensor) -> torch.Tensor:
            return selection.exact(rows, cand).masked_fill(live[cand], float("-inf"))

        def dense(rows: torch.Tensor) -> torch.Tensor:
            return selection.dense(rows).masked_fill(live.unsqueeze(0), float("-inf"))

        with torch.no_grad():
            idx, values = certified_topk(Screen(masked, selection.screen.base), k_aux, exact, dense)
        vals = F.relu(sae.gather_pre_exact(x, idx, values))
    e_hat = sae.decode_sparse(vals, idx)
    return (residual.detach() - e_hat).pow(2).sum(dim=1).mean()


def l1_penalty(codes: SparseCodes) -> torch.Tensor:
    """sum_j |z_j| (decoder columns are unit norm, so no norm weighting), mean over batch."""
    return codes.values.abs().sum(dim=1).mean()
