"""Prop. 1 / Prop. 3 (group-sparse loss) and Prop. 4 (Iso-Energy, simplified dot form), App. D.

Setting of the propositions: n = 1 concept with unit directions phi, psi, rho = phi^T psi in (0, 1),
z ~ Exp(1) (E[z] = 1, E[z^2] = 2), an SAE with m = 2 unit decoder columns, tied encoder, no biases
and Top-1 activation (footnote 1): u = sigma(W^T phi) keeps the largest pre-activation, ReLU'd.

Every loss value below is computed by the library (``dualsae.core.losses``); only the Top-1 codes of the
sweep are computed here, and a test checks them against ``SAE.encode`` / ``SAE.decode``.

Expectation over z. For Top-1 with ReLU, codes scale linearly in z >= 0, so every per-sample term
is homogeneous in z: reconstruction and the Iso-Energy dot are ``z^2 * (...)``, the group-sparse
penalty is ``z * (...)``. E_z[loss] therefore depends on the distribution of z only through E[z]
and E[z^2], and the two-point batch z in {0, 2} (mean 1, mean square 2) gives E_z[loss] under
Exp(1) *exactly*. ``test_closed_forms`` checks this against a large Exp(1) sample.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import vmap

from dualsae.core.codes import SparseCodes
from dualsae.core.losses import (
    activation_scale,
    group_sparse_loss,
    group_sparse_penalty,
    iso_energy_dot,
    reconstruction_loss,
)
from dualsae.models.sae import SAE, SAEConfig

DT = torch.float64
Z2 = torch.tensor([0.0, 2.0], dtype=DT)  # E[z] = 1, E[z^2] = 2: the Exp(1) moments
EZ, EZ2 = 1.0, 2.0
LAM_DAGGER = EZ2 / EZ  # lambda-dagger of Prop. 3
# group_sparse_penalty computes sqrt(v^2 + 1e-12) - 1e-6 for numerical safety at v = 0, which is
# off by at most 1e-6 per active entry; with values <= 2 and two rows this bounds the bias of a
# penalty value by ~4e-6, so comparisons of group-sparse values use 1e-5.
PEN_TOL = 1e-5


# ---------------------------------------------------------------------- set-up
def directions(rho: float, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit phi = e1 and psi = rho e1 + sqrt(1 - rho^2) e2 in R^d."""
    phi = torch.zeros(d, dtype=DT)
    psi = torch.zeros(d, dtype=DT)
    phi[0] = 1.0
    psi[0], psi[1] = rho, math.sqrt(1 - rho * rho)
    return phi, psi


def merged(phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    return (phi + psi) / (phi + psi).norm()


def candidates(rho: float) -> dict[str, torch.Tensor]:
    """The three solutions of App. D as [2, 3] unit-row decoders (row j = column w_j).

    The paper's merged and dead solutions have a zero second column; with unit columns we use e3,
    which is orthogonal to span{phi, psi}: its pre-activation 0 never beats a > 0 (merged), and in
    the dead solution Top-1 may pick it, but ReLU makes its value 0.
    """
    phi, psi = directions(rho, 3)
    w = merged(phi, psi)
    e3 = torch.tensor([0.0, 0.0, 1.0], dtype=DT)
    return {"separate": torch.stack([phi, psi]), "merged": torch.stack([w, e3]), "dead": torch.stack([-w, e3])}


def top1(W: torch.Tensor, theta: torch.Tensor, z: torch.Tensor) -> tuple[SparseCodes, torch.Tensor, torch.Tensor]:
    """Top-1 codes of the inputs z_b * theta under decoder(s) W.

    W: [..., m, d]; theta: [d]; z: [B]. Returns (codes with values/indices [..., B, 1],
    inputs [..., B, d], reconstructions [..., B, d]); tied encoder, no biases.
    """
    pre = W @ theta  # [..., m]
    val, idx = pre.max(dim=-1)
    val = val.clamp_min(0.0)
    lead = val.shape
    values = z.view(*([1] * len(lead)), -1, 1) * val[..., None, None]  # [..., B, 1]
    indices = idx[..., None, None].expand(*lead, len(z), 1)
    col = torch.take_along_dim(W, idx[..., None, None], dim=-2)  # [..., 1, d]
    recon = values * col  # [..., B, d]
    inputs = (z[:, None] * theta).expand(*lead, len(z), theta.shape[0])
    return SparseCodes(values, indices, W.shape[-2]), inputs, recon


def expected_terms(W: torch.Tensor, rho: float, z: torch.Tensor = Z2) -> dict[str, torch.Tensor]:
    """Library loss terms per decoder, averaged over the z batch. W: [G, 2, d] -> dict of [G].

    rec_image / rec_text: reconstruction_loss; group: group_sparse_penalty; iso: iso_energy_dot
    (= -E[z_I . z_T]); also the Top-1 values/indices of the z = max(z) row for regime checks.
    """
    phi, psi = directions(rho, W.shape[-1])
    ci, x, xr = top1(W, phi, z)
    ct, y, yr = top1(W, psi, z)

    def codes(v, i):
        return SparseCodes(v, i, 2)

    return {
        "rec_image": vmap(reconstruction_loss)(x, xr),
        "rec_text": vmap(reconstruction_loss)(y, yr),
        "group": vmap(lambda a, b, c, d: group_sparse_penalty(codes(a, b), codes(c, d)))(ci.values, ci.indices, ct.values, ct.indices),
        "iso": vmap(lambda a, b, c, d: iso_energy_dot(codes(a, b), codes(c, d)))(ci.values, ci.indices, ct.values, ct.indices),
        "val_image": ci.values[..., -1, 0], "idx_image": ci.indices[..., -1, 0],
        "val_text": ct.values[..., -1, 0], "idx_text": ct.indices[..., -1, 0],
    }


def angle_grid(n: int) -> torch.Tensor:
    """All pairs of unit columns in span{phi, psi} = R^2 at n angles each: [n*n, 2, 2]."""
    th = torch.arange(n, dtype=DT) * (2 * math.pi / n)
    cols = torch.stack([th.cos(), th.sin()], dim=1)
    return torch.stack([cols.repeat_interleave(n, 0), cols.repeat(n, 1)], dim=1)


def random_decoders(n: int, d: int, seed: int) -> torch.Tensor:
    """n random decoders with two unit columns in R^d: [n, 2, d]."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, 2, d, generator=g, dtype=DT)
    return w / w.norm(dim=-1, keepdim=True)


# ---------------------------------------------------------------------- theory (App. D)
def gs_thresholds(rho: float) -> tuple[float, float]:
    """Prop. 3: lambda*(rho) = (1-rho) lambda-dagger / (2 - sqrt(1+rho)), lambda-double-dagger = sqrt(1+rho) lambda-dagger."""
    return (1 - rho) * LAM_DAGGER / (2 - math.sqrt(1 + rho)), math.sqrt(1 + rho) * LAM_DAGGER


def gs_J(rho: float, lam: float) -> dict[str, float]:
    """Prop. 3's L_sep, L_sh (at w-hat), L_dead, in units of E[z^2], lambda-tilde = lam E[z]/E[z^2]."""
    lt = lam * EZ / EZ2
    return {"separate": 2 * lt, "merged": (1 - rho) + lt * math.sqrt(1 + rho), "dead": 2.0}


def iso_threshold(rho: float) -> float:
    """Prop. 4: lambda*(rho) = 2 (1 - rho) / (1 + rho)."""
    return 2 * (1 - rho) / (1 + rho)


def iso_J(rho: float, lam: float) -> dict[str, float]:
    return {"separate": 0.0, "merged": (1 - rho) - lam * (1 + rho) / 2, "dead": 2.0}


def gs_regime(rho: float, lam: float) -> str:
    lo, hi = gs_thresholds(rho)
    return "separate" if lam < lo else ("merged" if lam < hi else "dead")


# ---------------------------------------------------------------------- tests
def test_top1_helper_matches_sae():
    """The sweep's Top-1 codes and reconstructions equal those of the library SAE (k=1, tied, no biases)."""
    W = random_decoders(20, 3, seed=1)
    z = torch.tensor([0.0, 0.5, 2.0, 3.0], dtype=DT)
    theta = torch.tensor([0.3, -0.5, 0.8], dtype=DT)
    codes, x, recon = top1(W, theta, z)
    for g in range(len(W)):
        sae = tied_sae(W[g])
        ref = sae.encode(x[g])
        assert torch.equal(ref.indices[ref.values > 0], codes.indices[g][codes.values[g] > 0])
        assert torch.allclose(ref.values, codes.values[g], atol=1e-15)
        assert torch.allclose(sae.decode(ref), recon[g], atol=1e-15)


def tied_sae(W: torch.Tensor) -> SAE:
    """Top-1 SAE with W_enc = W_dec = W ([2, d]) and zero biases, in float64."""
    sae = SAE(SAEConfig(d=W.shape[1], m=W.shape[0], k=1, dec_bias_init="zero")).double()
    with torch.no_grad():
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.mark.parametrize("rho", [0.3, 0.6])
@pytest.mark.parametrize("lam", [0.5, 1.7, 3.0])
@torch.no_grad()
def test_closed_forms(rho, lam):
    """(a) The library's losses on the three candidate solutions equal App. D's L_sep, L_sh, L_dead.

    Uses a real Exp(1) sample through the library SAE; by homogeneity (module docstring) the
    expected loss is E[z^2] * J with lambda-tilde = lam E[z]/E[z^2] at the sample's own moments, so
    the match is exact up to float64 rounding and the penalty's 1e-6 smoothing (PEN_TOL).
    """
    z = torch.from_numpy(np.random.default_rng(0).exponential(1.0, size=20_000))
    m1, m2 = float(z.mean()), float(z.pow(2).mean())
    lt = lam * m1 / m2
    phi, psi = directions(rho, 3)
    expect_gs = {"separate": 2 * lt, "merged": (1 - rho) + lt * math.sqrt(1 + rho), "dead": 2.0}
    expect_iso = iso_J(rho, lam)
    expect_rec = {"separate": 0.0, "merged": (1 - rho) / 2, "dead": 1.0}  # per modality, units of E[z^2]
    for name, W in candidates(rho).items():
        sae = tied_sae(W)
        x, y = z[:, None] * phi, z[:, None] * psi
        zi, zt = sae.encode(x), sae.encode(y)
        rec_i = float(reconstruction_loss(x, sae.decode(zi)))
        rec_t = float(reconstruction_loss(y, sae.decode(zt)))
        assert rec_i / m2 == pytest.approx(expect_rec[name], abs=1e-12)
        assert rec_t / m2 == pytest.approx(expect_rec[name], abs=1e-12)
        gs = rec_i + rec_t + float(group_sparse_loss(zi, zt, lam))
        assert gs / m2 == pytest.approx(expect_gs[name], abs=PEN_TOL), name
        iso = rec_i + rec_t + lam * float(iso_energy_dot(zi, zt))
        assert iso / m2 == pytest.approx(expect_iso[name], abs=1e-12), name
        # The two-point batch used by the sweeps gives the same J (exact Exp(1) moments 1 and 2).
        t = expected_terms(W[None], rho)
        assert float(t["rec_image"] + t["rec_text"] + lam * t["group"]) / EZ2 == pytest.approx(gs_J(rho, lam)[name], abs=PEN_TOL)
        assert float(t["rec_image"] + t["rec_text"] + lam * t["iso"]) / EZ2 == pytest.approx(iso_J(rho, lam)[name], abs=1e-12)


GRID = 720  # 0.5 degree between neighbouring angles
STEP = 2 * math.pi / GRID


def check_minimiser(terms: dict, total: torch.Tensor, regime: str, rho: float, W: torch.Tensor) -> None:
    """The grid argmin lies in ``regime``; tolerances are derived from the grid step.

    A column at angle delta <= STEP/2 from its target direction costs at most E[z^2] sin^2(delta)
    < 4e-5 reconstruction per modality (separate), or shifts a merged modality's reconstruction
    E[z^2](1 - cos^2(theta/2 +- delta)) by at most E[z^2] * 2 delta < 0.02 at the nearest grid
    point, while the regimes differ by >= 0.4 in reconstruction per modality.
    """
    g = int(total.argmin())
    rec_i, rec_t = float(terms["rec_image"][g]), float(terms["rec_text"][g])
    phi, psi = directions(rho, 2)
    if regime == "separate":
        assert rec_i + rec_t < 1e-3
        assert int(terms["idx_image"][g]) != int(terms["idx_text"][g])
        assert float(terms["val_image"][g]) > 0 and float(terms["val_text"][g]) > 0
    elif regime == "merged":
        assert float(terms["val_image"][g]) > 0 and float(terms["val_text"][g]) > 0
        assert int(terms["idx_image"][g]) == int(terms["idx_text"][g])
        w = W[g, int(terms["idx_image"][g])]
        # the used column is within one grid step of (phi + psi)/||phi + psi||
        assert float(w @ merged(phi, psi)) >= math.cos(STEP)
        assert rec_i == pytest.approx((1 - rho) / 2 * EZ2, abs=0.02)
        assert rec_t == pytest.approx((1 - rho) / 2 * EZ2, abs=0.02)
    else:
        assert float(terms["val_image"][g]) == 0.0 and float(terms["val_text"][g]) == 0.0
        assert rec_i == pytest.approx(EZ2) and rec_t == pytest.approx(EZ2)


# Minimum of E_z[loss] over the 0.5-degree grid in span{phi, psi}: it can never fall below the
# proposition's global minimum (up to the penalty smoothing), and exceeds it by O(STEP^2): the
# loss is smooth in the angles near each candidate with curvature ~ E[z^2] + lambda E[z] < 6, so
# 6 (STEP/2)^2 ~ 1e-4; 1e-3 is used.
GRID_TOL = 1e-3


@pytest.mark.parametrize("rho", [0.3, 0.6])
@pytest.mark.parametrize("which", ["below*", "above*", "below_dd", "above_dd"])
def test_group_sparse_minimiser(rho, which):
    """(b) Prop. 3: the global minimiser over unit W is separate / merged / dead as predicted."""
    lo, hi = gs_thresholds(rho)
    lam = {"below*": 0.7 * lo, "above*": 1.3 * lo, "below_dd": 0.7 * hi, "above_dd": 1.3 * hi}[which]
    regime = gs_regime(rho, lam)
    J = gs_J(rho, lam)
    assert min(J, key=J.get) == regime  # the thresholds agree with comparing the three values
    best = EZ2 * min(J.values())
    W = angle_grid(GRID)
    t = expected_terms(W, rho)
    total = t["rec_image"] + t["rec_text"] + lam * t["group"]
    assert best - PEN_TOL <= float(total.min()) <= best + GRID_TOL
    check_minimiser(t, total, regime, rho, W)
    # Off the span: random unit columns in R^4 never beat the proposition's minimum.
    R = random_decoders(100_000, 4, seed=7)
    tr = expected_terms(R, rho)
    assert float((tr["rec_image"] + tr["rec_text"] + lam * tr["group"]).min()) >= best - PEN_TOL


@pytest.mark.parametrize("rho", [0.3, 0.6])
@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_iso_energy_minimiser(rho, factor):
    """(b) Prop. 4: separate below lambda*(rho) = 2(1-rho)/(1+rho), merged above; never dead."""
    lam = factor * iso_threshold(rho)
    regime = "separate" if factor < 1 else "merged"
    J = iso_J(rho, lam)
    assert min(J, key=J.get) == regime
    best = EZ2 * min(J.values())
    W = angle_grid(GRID)
    t = expected_terms(W, rho)
    total = t["rec_image"] + t["rec_text"] + lam * t["iso"]
    assert best - 1e-12 <= float(total.min()) <= best + GRID_TOL
    check_minimiser(t, total, regime, rho, W)
    R = random_decoders(100_000, 4, seed=8)
    tr = expected_terms(R, rho)
    assert float((tr["rec_image"] + tr["rec_text"] + lam * tr["iso"]).min()) >= best - 1e-12


# ---------------------------------------------------------------------- the scale-free form
# The trainer multiplies lambda-tilde by a scale measured once before training (dualsae.training.group_sparse_scale):
# E[v^2]/E[v] over the active codes of an SAE that reconstructs the data. On the separate solution
# the codes are z itself, so the scale is lambda-dagger = E[z^2]/E[z] and, held fixed, Prop. 3's
# thresholds in lambda-tilde units are (1-rho)/(2-sqrt(1+rho)) and sqrt(1+rho).
LT_THRESHOLDS = {"lo": lambda rho: (1 - rho) / (2 - math.sqrt(1 + rho)), "hi": lambda rho: math.sqrt(1 + rho)}


def measured_scale(rho: float, z: torch.Tensor) -> float:
    """The library's scale on the codes of the separate solution for inputs z * phi, z * psi."""
    sae = tied_sae(candidates(rho)["separate"])
    phi, psi = directions(rho, 3)
    return float(activation_scale(sae.encode(z[:, None] * phi), sae.encode(z[:, None] * psi)))


@torch.no_grad()
def test_scale_on_separate_solution_is_lambda_dagger():
    """activation_scale on the separate solution's codes is the sample's E[z^2]/E[z] (lambda-dagger),
    and group_sparse_loss multiplies lambda-tilde by the scale it is given."""
    z = torch.from_numpy(np.random.default_rng(1).exponential(1.0, size=20_000))
    dagger = float(z.pow(2).mean() / z.mean())
    assert measured_scale(0.5, z) == pytest.approx(dagger, rel=1e-12)
    assert dagger == pytest.approx(2.0, abs=0.1)  # Exp(1): E[z^2]/E[z] = 2; 20k samples, sd ~0.03
    assert measured_scale(0.5, Z2) == pytest.approx(LAM_DAGGER, rel=1e-12)  # the two-point batch: 2
    sae = tied_sae(candidates(0.5)["separate"])
    phi, psi = directions(0.5, 3)
    zi, zt = sae.encode(z[:, None] * phi), sae.encode(z[:, None] * psi)
    assert float(group_sparse_loss(zi, zt, 0.8, scale=dagger)) == pytest.approx(0.8 * dagger * float(group_sparse_penalty(zi, zt)), rel=1e-12)


@pytest.mark.parametrize("rho", [0.3, 0.6])
@pytest.mark.parametrize("which", ["below_lo", "above_lo", "below_hi", "above_hi"])
def test_lambda_tilde_thresholds_with_fixed_scale(rho, which):
    """Prop. 3 in lambda-tilde units, as the trainer computes it: the library's group_sparse_loss at
    lambda-tilde with the scale measured once (above) has its grid minimiser separate below
    (1-rho)/(2-sqrt(1+rho)), merged between that and sqrt(1+rho), dead above."""
    scale = measured_scale(rho, Z2)
    lt = {"below_lo": 0.7 * LT_THRESHOLDS["lo"](rho), "above_lo": 1.3 * LT_THRESHOLDS["lo"](rho),
          "below_hi": 0.7 * LT_THRESHOLDS["hi"](rho), "above_hi": 1.3 * LT_THRESHOLDS["hi"](rho)}[which]
    lo, hi = LT_THRESHOLDS["lo"](rho), LT_THRESHOLDS["hi"](rho)
    regime = "separate" if lt < lo else ("merged" if lt < hi else "dead")  # 0.7 hi < lo at rho = 0.3
    W = angle_grid(GRID)
    t = expected_terms(W, rho)
    phi, psi = directions(rho, W.shape[-1])
    ci, _, _ = top1(W, phi, Z2)
    ct, _, _ = top1(W, psi, Z2)

    def gs(a, b, c, d):
        return group_sparse_loss(SparseCodes(a, b, 2), SparseCodes(c, d, 2), lt, scale=scale)

    total = t["rec_image"] + t["rec_text"] + vmap(gs)(ci.values, ci.indices, ct.values, ct.indices)
    check_minimiser(t, total, regime, rho, W)


@pytest.mark.parametrize("rho", np.linspace(0.02, 0.98, 13).tolist())
@torch.no_grad()
def test_lambda_tilde_one_prefers_merged(rho):
    """At lambda-tilde = 1 (the default) with the fixed scale, the library's loss on App. D's three
    candidate solutions is lowest for the merged column, for every rho in (0, 1)."""
    scale = measured_scale(rho, Z2)
    totals = {}
    for name, W in candidates(rho).items():
        sae = tied_sae(W)
        phi, psi = directions(rho, 3)
        x, y = Z2[:, None] * phi, Z2[:, None] * psi
        zi, zt = sae.encode(x), sae.encode(y)
        totals[name] = float(reconstruction_loss(x, sae.decode(zi)) + reconstruction_loss(y, sae.decode(zt))
                             + group_sparse_loss(zi, zt, 1.0, scale=scale))
    assert min(totals, key=totals.get) == "merged", totals
