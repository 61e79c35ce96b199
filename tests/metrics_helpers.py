"""Hand-built SAEs and stores shared by the tests of dualsae.metrics (no training)."""

from __future__ import annotations

import json

import numpy as np
import torch

from dualsae.core.codes import SparseCodes
from dualsae.files.atomic import write_json
from dualsae.models.pair import SAEPair
from dualsae.models.sae import SAE, SAEConfig
from dualsae.store.paired import write_store


def identity_sae(d: int) -> SAE:
    """m = 2d latents [e_i; -e_i], k = m - 1, no biases: codes = [relu(x), relu(-x)], exact reconstruction.

    For non-negative x the code is [x, 0], so code cosines equal embedding cosines.
    """
    sae = SAE(SAEConfig(d=d, m=2 * d, k=2 * d - 1, dec_bias_init="zero"))
    w = torch.cat([torch.eye(d), -torch.eye(d)])
    with torch.no_grad():
        sae.W_enc.copy_(w)
        sae.W_dec.copy_(w)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def random_sae(d: int, m: int, k: int, seed: int, bias_scale: float = 0.1) -> SAE:
    """A tiny random TopK SAE with a fixed seed and small random biases."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d=d, m=m, k=k), generator=g)
    with torch.no_grad():
        sae.b_enc.copy_(bias_scale * torch.randn(m, generator=g))
        sae.b_dec.copy_(bias_scale * torch.randn(d, generator=g))
    return sae


def random_specific_pair(d: int, m: int, k: int, seed: int) -> SAEPair:
    return SAEPair("specific", random_sae(d, m, k, seed), random_sae(d, m, k, seed + 1))


def dense_codes(pair: SAEPair, modality: str, x: np.ndarray) -> np.ndarray:
    """Dense [N, m] codes (float64) for brute-force references."""
    codes: SparseCodes = pair.encode(modality, torch.as_tensor(x, dtype=torch.float32))
    return codes.to_dense().double().numpy()


def unit_rows(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return np.where(n > 0, a / np.where(n > 0, n, 1), 0.0)


def brute_force_monosemanticity(acts: np.ndarray, ext: np.ndarray) -> np.ndarray:
    """MS_j = sum_{n<m} a~_n a~_m s_nm / sum_{n<m} a~_n a~_m, every pair explicitly."""
    e = ext / np.linalg.norm(ext, axis=1, keepdims=True)
    s = e @ e.T
    out = np.full(acts.shape[1], np.nan)
    iu = np.triu_indices(acts.shape[0], k=1)
    for j in range(acts.shape[1]):
        a = acts[:, j]
        if (a > 0).sum() < 2 or a.max() == a.min():
            continue
        t = (a - a.min()) / (a.max() - a.min())
        w = np.outer(t, t)[iu]
        if w.sum() > 0:
            out[j] = (w * s[iu]).sum() / w.sum()
    return out


def make_specific_run(folder, d=8):
    """A run folder of a random specific pair (24 latents, k 3 per modality) as eval and its tasks open it."""
    folder.mkdir(parents=True)
    write_json(folder / "config.json", {"train": {"method": "specific"}})
    random_sae(d, 24, 3, seed=1).save(folder / "image")
    random_sae(d, 24, 3, seed=2).save(folder / "text")
    return folder


def make_zeroshot_store(folder, d=8, seed=1):
    """A zero-shot store: 30 image rows of 3 classes, class_text.npy [3 classes, 2 templates, d], classes.json."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 30)
    write_store(folder, rng.normal(size=(30, d)), None, [{"label": int(c), "class_name": f"k{c}"} for c in labels])
    np.save(folder / "class_text.npy", rng.normal(size=(3, 2, d)).astype(np.float32))
    (folder / "classes.json").write_text(json.dumps({"classes": ["k0", "k1", "k2"], "templates": ["a {}", "b {}"]}))
    return folder


def make_category_store(folder, n=120, d=8, seed=0):
    """A paired store of n rows in 3 colour categories (image = category centre + noise, text = image +
    noise), with caption, category, tags and split fields in its meta."""
    rng = np.random.default_rng(seed)
    cats = rng.choice(["red", "green", "blue"], n)
    centre = {c: rng.normal(size=d) for c in ("red", "green", "blue")}
    image = np.stack([centre[c] for c in cats]) + rng.normal(size=(n, d))
    text = image + 0.5 * rng.normal(size=(n, d))
    meta = [{"caption": f"{c} thing {i % 5}", "category": str(c), "tags": [str(c), "x" if i % 2 else "y"],
             "split": "test" if i % 3 == 0 else "train"} for i, c in enumerate(cats)]
    return write_store(folder, image, text, meta)
