"""Loss functions on sparse codes equal their dense definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dualsae.core.codes import SparseCodes
from dualsae.core.losses import activation_scale, group_sparse_loss, group_sparse_penalty, iso_energy_alignment, iso_energy_dot, reconstruction_loss


def random_codes(batch, m, k, seed, overlap_with=None):
    g = torch.Generator().manual_seed(seed)
    vals = torch.rand(batch, k, generator=g) + 0.1
    idx = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(batch)])
    if overlap_with is not None:  # make about half the indices coincide with the partner's
        idx[:, : k // 2] = overlap_with.indices[:, : k // 2]
    vals[:, -1] = 0.0  # an inactive (ReLU-zeroed) entry must not count
    return SparseCodes(vals.requires_grad_(), idx, m)


def test_group_sparse_matches_dense():
    zi = random_codes(8, 30, 6, 0)
    zt = random_codes(8, 30, 6, 1, overlap_with=zi)
    di, dt = zi.to_dense(), zt.to_dense()
    ref = torch.sqrt(di**2 + dt**2).sum(1).mean()
    assert torch.allclose(group_sparse_penalty(zi, zt), ref, atol=1e-5)
    assert torch.allclose(group_sparse_loss(zi, zt, 0.7), 0.7 * ref, atol=1e-5)
    assert torch.allclose(group_sparse_loss(zi, zt, 0.7, scale=2.5), 1.75 * ref, atol=1e-5)
    v = torch.cat([zi.values.flatten(), zt.values.flatten()]).detach()
    v = v[v > 0]
    assert float(activation_scale(zi, zt)) == pytest.approx(float(v.pow(2).mean() / v.mean()), rel=1e-6)


def test_iso_energy_matches_dense_masked_cosine():
    zi = random_codes(8, 30, 6, 2)
    zt = random_codes(8, 30, 6, 3, overlap_with=zi)
    di, dt = zi.to_dense().clone(), zt.to_dense().clone()
    ai, at = di.argmax(1), dt.argmax(1)
    rows = torch.arange(8)
    for d in (di, dt):
        d[rows, ai] = 0
        d[rows, at] = 0
    ref = -F.cosine_similarity(di, dt, dim=1, eps=1e-12).mean()
    assert torch.allclose(iso_energy_alignment(zi, zt), ref, atol=1e-5)
    assert torch.allclose(iso_energy_dot(zi, zt), -(zi.to_dense() * zt.to_dense()).sum(1).mean(), atol=1e-5)


def test_reconstruction_loss_is_eq4():
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    r = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert reconstruction_loss(x, r).item() == (5.0 + 2.0) / 2
