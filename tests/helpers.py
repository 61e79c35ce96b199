"""Small builders shared by the tests."""

from __future__ import annotations

import numpy as np

from dualsae.data import write_store


def make_store(folder, n=600, d=16, seed=0, dtype=np.float32, split=True, image=True, text=True, n_features=24):
    """A small paired store with planted sparse structure: x = Phi z, y = Psi z + noise."""
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(n_features, d))
    phi /= np.linalg.norm(phi, axis=1, keepdims=True)
    psi = phi + 0.5 * rng.normal(size=(n_features, d))
    psi /= np.linalg.norm(psi, axis=1, keepdims=True)
    z = rng.exponential(size=(n, n_features)) * (rng.random((n, n_features)) < 0.1)
    x = z @ phi + 0.01 * rng.normal(size=(n, d))
    y = z @ psi + 0.01 * rng.normal(size=(n, d))
    meta = [{"caption": f"row {i}", "split": "test" if i % 5 == 0 else "train"} for i in range(n)] if split else None
    return write_store(folder, x.astype(dtype) if image else None, y.astype(dtype) if text else None, meta, dtype=dtype)


def tied_sae(w, k: int = 1):
    """An SAE whose encoder rows and decoder columns are both the rows of ``w`` [m, d], biases zero:
    a planted dictionary whose codes are known in closed form."""
    import torch

    from dualsae.sae import SAE, SAEConfig

    w = torch.as_tensor(np.asarray(w, dtype=np.float32))
    sae = SAE(SAEConfig(d=w.shape[1], m=w.shape[0], k=k, dec_bias_init="zero"))
    with torch.no_grad():
        sae.W_enc.copy_(w)
        sae.W_dec.copy_(w)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()
