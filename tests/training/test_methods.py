"""The trainer's loss, method by method, against hand-built dense loss terms.

For every method and activation, ``dualsae.training.step._member_loss`` (the loss the trainer's step
back-propagates) is compared with a reference written here from the definitions, on dense
``[N, m]`` float64 codes: the value *and* the gradient of every SAE parameter. The reference is a
mean over the B pairs of a per-pair sum over the modalities an SAE sees:

    sum_mod ||x - x_hat||^2 + aux_coef sum_mod ||e - e_hat||^2 (TopK / BatchTopK) + l1 sum_mod |z| (ReLU)
    + lambda * scale * sum_j sqrt(z_I,j^2 + z_T,j^2)               (group-sparse, Kaushik et al.)
    + 2 d beta * (-cos(masked z_I, masked z_T))                     (Iso-Energy, official code)
    + beta * (-z_I . z_T)                                           (Iso-Energy, Prop. 4 dot form)

Coefficients are chosen so that every term moves the loss well beyond the tolerance: dropping the
2 d of beta, losing the group-sparse scale, halving AuxK or detaching an alignment term fails here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dualsae.store.paired import PairedEmbeddings
from dualsae.training.config import TrainConfig
from dualsae.training.group_sparse_scale import CALIBRATION_ROWS, calibrate
from dualsae.training.step import _BatchOrder, _make_members, _member_loss
from dualsae.training.trainer import train

D, LATENTS, K, B = 6, 12, 3, 5
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
DT = torch.float64


def tiny_store(n: int = 40, seed: int = 0) -> PairedEmbeddings:
    """Paired rows with a shared and a modality-specific part (in memory, float32)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, D))
    x = base + 0.3 * rng.normal(size=(n, D))
    y = base + 0.3 * rng.normal(size=(n, D)) + 0.5
    return PairedEmbeddings(x.astype(np.float32), y.astype(np.float32), None, None)


# ---------------------------------------------------------------------- the dense reference
def dense_codes(p: dict, x: torch.Tensor, activation: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(z [N, m], pre [N, m]) from the definitions: pre = W_enc (x - b_dec) + b_enc, then
    TopK per row / top k*N of ReLU(pre) over the batch (BatchTopK) / ReLU."""
    pre = (x - p["b_dec"]) @ p["W_enc"].T + p["b_enc"]
    act = pre.clamp_min(0)
    if activation == "relu":
        return act, pre
    mask = torch.zeros_like(pre, dtype=torch.bool)
    if activation == "topk":
        mask.scatter_(1, pre.detach().topk(k, dim=1).indices, True)
    else:  # batchtopk
        mask.view(-1)[act.detach().flatten().topk(k * len(x)).indices] = True
    return act * mask, pre


def per_pair_group_sparse(zi: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
    """mean_i sum_j sqrt(z_I,ij^2 + z_T,ij^2) with a finite gradient where both are 0."""
    s = zi.pow(2) + zt.pow(2)
    return torch.where(s > 0, s.clamp_min(1e-300).sqrt(), torch.zeros_like(s)).sum(1).mean()


def per_pair_masked_cosine(zi: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
    """-mean_i cos(z_I,i, z_T,i) with the argmax latent of z_I,i and of z_T,i zeroed in both codes."""
    keep = torch.ones_like(zi)
    rows = torch.arange(len(zi))
    for j in (zi.detach().argmax(1), zt.detach().argmax(1)):
        keep[rows, j] = 0.0
    a, b = zi * keep, zt * keep
    na, nb = a.pow(2).sum(1), b.pow(2).sum(1)
    # A pair whose masked code is empty has cosine 0 (as torch's cosine_similarity in the official code).
    ok = (na > 0) & (nb > 0)
    denom = torch.where(ok, (na * nb).clamp_min(1e-300).sqrt(), torch.ones_like(na))
    return -torch.where(ok, (a * b).sum(1) / denom, torch.zeros_like(na)).mean()


def reference_loss(p: dict, dead: torch.Tensor, x_by_mod: list[torch.Tensor], cfg: TrainConfig, scale: float) -> torch.Tensor:
    """The per-pair loss of one SAE (parameters ``p``, float64 leaves) on B pairs."""
    x = torch.cat(x_by_mod)
    nmod, b = len(x_by_mod), len(x_by_mod[0])
    z, pre = dense_codes(p, x, cfg.sae.activation, cfg.sae.k)
    recon = z @ p["W_dec"] + p["b_dec"]
    sq = (x - recon).pow(2).sum(1)  # [nmod * B]
    loss = sq.view(nmod, b).sum(0).mean()  # sum over modalities, mean over pairs
    if cfg.sae.activation == "relu":
        loss = loss + cfg.sae.l1_coef * z.abs().sum(1).view(nmod, b).sum(0).mean()
    elif cfg.sae.aux_coef > 0 and bool(dead.any()):
        k_aux = min(cfg.sae.aux_k if cfg.sae.aux_k is not None else D // 2, int(dead.sum()))
        dead_pre = pre.detach().masked_fill(~dead, -math.inf)
        sel = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, dead_pre.topk(k_aux, dim=1).indices, True)
        e_hat = (pre.clamp_min(0) * sel) @ p["W_dec"]
        aux = ((x - recon).detach() - e_hat).pow(2).sum(1)
        loss = loss + cfg.sae.aux_coef * aux.view(nmod, b).sum(0).mean()
    if cfg.method == "group-sparse":
        loss = loss + cfg.group_sparse_lambda * scale * per_pair_group_sparse(z[:b], z[b:])
    elif cfg.method == "iso-energy" and cfg.iso_energy_form == "cosine":
        loss = loss + 2 * D * cfg.beta_iso * per_pair_masked_cosine(z[:b], z[b:])
    elif cfg.method == "iso-energy":
        loss = loss + cfg.beta_iso * (-(z[:b] * z[b:]).sum(1).mean())
    return loss


# ---------------------------------------------------------------------- the comparison
CASES = [
    dict(method="specific"),
    dict(method="specific", activation="batchtopk"),
    dict(method="specific", activation="relu", l1_coef=0.05),
    dict(method="shared"),
    dict(method="shared", activation="batchtopk"),
    dict(method="shared", activation="relu", l1_coef=0.05),
    dict(method="group-sparse", group_sparse_lambda=0.4),
    dict(method="group-sparse", group_sparse_lambda=0.4, activation="batchtopk"),
    dict(method="group-sparse", group_sparse_lambda=0.4, group_sparse_scale_free=False),
    dict(method="iso-energy", iso_energy_beta=0.05),
    dict(method="iso-energy", iso_energy_beta=0.05, activation="batchtopk"),
    dict(method="iso-energy", iso_energy_beta=0.3, iso_energy_form="dot"),
    dict(method="iso-energy", iso_energy_beta=0.3, iso_energy_form="dot", activation="relu", l1_coef=0.05),
]


def _case_id(case: dict) -> str:
    return "-".join(str(v) for v in case.values())


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_member_loss_equals_hand_built_terms(case):
    """Value and gradients of the trainer's loss = the dense per-pair reference, for each method."""
    store = tiny_store()
    cfg = TrainConfig.from_preset(latents=LATENTS, k=K, aux_coef=0.5, dead_window=1, seed=1, **case)
    members = _make_members(cfg, store, torch.device("cpu"))
    pos = np.arange(3, 3 + B)
    batch = {m: store.read(m, pos) for m in ("image", "text")}
    # A scale unlike 1 so that losing it shows; group-sparse with a raw lambda keeps None.
    scale = 2.7 if cfg.method == "group-sparse" and cfg.group_sparse_scale_free else 1.0
    for mem in members:
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():  # move off the symmetric initialisation: biases and untied encoder
            mem.sae.b_enc.copy_(0.2 * torch.randn(mem.sae.m, generator=g))
            mem.sae.b_dec.copy_(0.2 * torch.randn(D, generator=g))
            mem.sae.W_enc.add_(0.3 * torch.randn(mem.sae.W_enc.shape, generator=g))
            # Latents 0..3 have not fired for dead_window samples: AuxK has work to do.
            mem.sae.samples_since_fired.zero_()
            mem.sae.samples_since_fired[:4] = 1
        if scale != 1.0:
            mem.gs_scale = scale
        p = {n: getattr(mem.sae, n).detach().double().clone().requires_grad_() for n in PARAMS}
        dead = mem.sae.dead_mask().clone()
        ref = reference_loss(p, dead, [batch[m].double() for m in mem.modalities], cfg, scale)
        ref.backward()
        mem.sae.zero_grad(set_to_none=True)
        loss, logs = _member_loss(mem, cfg, batch)
        loss.backward()
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5), mem.name
        for n in PARAMS:
            torch.testing.assert_close(getattr(mem.sae, n).grad.double(), p[n].grad, rtol=1e-4, atol=1e-5, msg=f"{mem.name}.{n}")
        assert logs[f"loss_{mem.name}"] == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)


def test_reference_terms_are_not_vacuous():
    """Every coefficient of CASES moves the reference loss far beyond the comparison's tolerance,
    so each mutation listed in the module docstring changes the compared value or gradient."""
    store = tiny_store()
    x_by_mod = [store.read(m, np.arange(3, 3 + B)).double() for m in ("image", "text")]
    sae = _make_members(TrainConfig.from_preset(method="shared", latents=LATENTS, k=K), store, torch.device("cpu"))[0].sae
    p = {n: getattr(sae, n).detach().double() for n in PARAMS}
    z, _ = dense_codes(p, torch.cat(x_by_mod), "topk", K)
    gs = per_pair_group_sparse(z[:B], z[B:]).item()
    cos = per_pair_masked_cosine(z[:B], z[B:]).item()
    # group-sparse at lambda 0.4: scale 2.7 vs 1 differs by 0.4 * 1.7 * gs; Iso-Energy 2d vs d by 0.05 * d * |cos|
    assert 0.4 * 1.7 * gs > 0.05 and 0.05 * D * abs(cos) > 0.01


# ---------------------------------------------------------------------- the fixed scale
def test_calibration_without_warmup_is_moment_ratio_of_initial_codes():
    """With no warm-up the scale is E[v^2]/E[v] over the active codes of the initial SAE (after the
    decoder-bias initialisation) on the calibration rows, computed here from dense codes."""
    store = tiny_store(n=60)
    cfg = TrainConfig.from_preset(method="group-sparse", latents=LATENTS, k=K, batch_size=8, epochs=2, group_sparse_scale_warmup=0.0)
    record = calibrate(store, cfg, torch.device("cpu"))
    assert record["warmup_steps"] == 0 and record["rows"] == min(CALIBRATION_ROWS, 60)
    sae = _make_members(cfg, store, torch.device("cpu"))[0].sae
    rows = torch.cat([store.sample(m, CALIBRATION_ROWS, seed=cfg.seed) for m in ("image", "text")])
    sae.init_decoder_bias(rows)
    p = {n: getattr(sae, n).detach().double() for n in PARAMS}
    z, _ = dense_codes(p, rows.double(), "topk", K)
    v = z[z > 0]
    assert record["group_sparse_scale"] == pytest.approx(float(v.pow(2).mean() / v.mean()), rel=1e-6)  # float32 codes


def test_train_uses_the_scale_fixed_before_training(tmp_path):
    """train() measures the scale once (recorded in config.json and summary.json) and the group-sparse
    term of its very first step is lambda * that scale * the penalty of the initial SAE's codes; with
    a warm-up the scale differs from the initial codes' own ratio, so re-estimating per batch fails."""
    store = tiny_store(n=64)
    cfg = TrainConfig.from_preset(method="group-sparse", latents=LATENTS, k=K, batch_size=8, epochs=3, log_every=1,
                      group_sparse_lambda=0.4, group_sparse_scale_warmup=0.5, dec_bias_init="mean")
    first: dict = {}
    train(store, cfg, tmp_path / "run", progress=False, on_step=lambda step, logs: first.setdefault(step, dict(logs)))
    import json

    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["calibration"]
    again = calibrate(store, cfg, torch.device("cpu"))
    assert recorded == again and recorded["warmup_steps"] == 12  # 0.5 * (64 // 8) * 3
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["calibration"] == recorded
    # The first step's term, rebuilt from the initial SAE on the first batch.
    sae = _make_members(cfg, store, torch.device("cpu"))[0].sae
    sae.init_decoder_bias(torch.cat([store.sample(m, 10_000, seed=cfg.seed) for m in ("image", "text")]))
    pos = _BatchOrder(store.n, cfg)(0)
    p = {n: getattr(sae, n).detach().double() for n in PARAMS}
    z, _ = dense_codes(p, torch.cat([store.read(m, pos) for m in ("image", "text")]).double(), "topk", K)
    penalty = per_pair_group_sparse(z[:8], z[8:]).item()
    assert first[1]["align"] == pytest.approx(0.4 * recorded["group_sparse_scale"] * penalty, rel=1e-5)
    v = z[z > 0]
    assert abs(recorded["group_sparse_scale"] - float(v.pow(2).mean() / v.mean())) > 0.05
