"""dualsae.report.latents.nearest_latents: the bfloat16-screened path returns the float32 path's nearest
latents (never the latent itself), largest cosine first, including near-duplicate directions."""

from __future__ import annotations

import torch

import dualsae.report.latents as L


def test_screened_nearest_latents_equal_float32(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3000, 48, generator=gen)
    w[100] = w[7] + 1e-3 * torch.randn(48, generator=gen)  # a near-duplicate pair: each other's nearest
    plain_idx, plain_cos = L.nearest_latents(w, 8, block=512)
    monkeypatch.setattr(L, "SCREEN_NEAREST_MIN", 1000)
    monkeypatch.setattr(L, "bf16_matmul_is_fast", lambda device: True)
    idx, cos = L.nearest_latents(w, 8, block=512)
    assert (idx == plain_idx).all()
    assert abs(cos - plain_cos).max() < 1e-5
    assert idx[7, 0] == 100 and idx[100, 0] == 7
    assert not (idx == torch.arange(3000).numpy()[:, None]).any()
    assert (cos[:, :-1] >= cos[:, 1:]).all()
