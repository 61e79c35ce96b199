"""Using an aligned pair: translate an embedding into the other modality, steer it along a concept,
read its latents, find the rows that activate a latent, and the cross-modal neighbours of a vector.

Paper Sec. 5 / DESIGN "Use it": once the text SAE is permuted (eq. 7) the two SAEs share latent
indices, so a caption's code ``z = E_T(y)`` can be decoded by the image decoder,
``x~ = D_I(z) = sum_j z_j phi_j + b_dec,I``: a vector in the *image* region of the joint space that
carries the caption's concepts (translation). Steering adds one image decoder direction to an image
embedding, ``x' = x + alpha ||x|| phi_j / ||phi_j||`` (the same step as the Sec. 6.2 steering metric,
but scaled by each row's own norm so that the function needs no data set), and moves its neighbours
toward the rows on which latent j fires.

These functions take any :class:`dualsae.models.pair.SAEPair`; :class:`dualsae.alignment.post_hoc.AlignedPair` (and
every pair) exposes them as methods. Translation through an *unaligned* modality-specific pair is
refused: its two index spaces are unrelated until ``dualsae align`` permutes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dualsae.core.codes import SparseCodes
from dualsae.store.paired import PairedEmbeddings
from dualsae.core.errors import ConfigError, DataError
from dualsae.core.modalities import MODALITIES


def _as_tensor(x: Any, d: int, what: str = "x") -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2 or t.shape[1] != d:
        raise DataError(f"{what} must be [batch, {d}] embeddings, found shape {list(t.shape)}")
    return t


def _check_modality(modality: str, flag: str = "modality") -> None:
    if modality not in MODALITIES:
        raise ConfigError(f"{flag} must be one of {', '.join(MODALITIES)}, found {modality!r}")


def require_shared_index(pair) -> None:
    """Refuse cross-modal use of an unaligned modality-specific pair (indices unrelated)."""
    if pair.method == "specific":
        raise ConfigError("this is an unaligned modality-specific pair: latent j of the image SAE and latent j "
                          "of the text SAE are unrelated; run 'dualsae align' first and use the aligned folder")


@torch.no_grad()
def translate(pair, x: Any, source: str = "text", target: str = "image") -> torch.Tensor:
    """Encode with the source modality's SAE, decode with the target's: x [batch, d] -> [batch, d]."""
    _check_modality(source, "source")
    _check_modality(target, "target")
    if source != target:
        require_shared_index(pair)
    sae = pair.sae_for(source)
    t = _as_tensor(x, sae.d).to(sae.W_dec.device)
    return pair.decode(target, pair.encode(source, t))


@torch.no_grad()
def steering_direction(pair, latent: int, modality: str = "image") -> torch.Tensor:
    """Unit decoder direction of ``latent`` (shared index) in ``modality``: [d]."""
    _check_modality(modality)
    cols = pair.decoder_columns(modality)
    if not 0 <= latent < cols.shape[0]:
        raise ConfigError(f"latent must be in [0, {cols.shape[0]}) for the {modality} SAE, found {latent}")
    return F.normalize(cols[latent].float(), dim=0)


@torch.no_grad()
def steer(pair, x: Any, latent: int, alpha: float, modality: str = "image") -> torch.Tensor:
    """``x' = x + alpha ||x|| w`` with ``w`` the unit ``modality`` decoder direction of ``latent``.

    x: [batch, d] (or [d]) -> [batch, d]. alpha is relative to each row's norm: alpha = 1 adds a
    vector as long as the embedding itself.
    """
    w = steering_direction(pair, latent, modality)
    t = _as_tensor(x, w.shape[0]).to(w.device)
    return t + float(alpha) * t.norm(dim=1, keepdim=True) * w


@torch.no_grad()
def latents_for(pair, source: Any, modality: str = "image", rows: Any = None, batch_size: int = 4096) -> SparseCodes:
    """Sparse codes (shared index space) of embeddings or store rows.

    source: a :class:`PairedEmbeddings` (then ``rows``: positions in it, default all) or an array /
    tensor of embeddings [batch, d]. Returns SparseCodes [batch, k].
    """
    _check_modality(modality)
    sae = pair.sae_for(modality)
    if isinstance(source, PairedEmbeddings):
        source.require(modality, "latents_for")
        pos = np.arange(source.n) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(pos) and (pos.min() < 0 or pos.max() >= source.n):
            raise DataError(f"{source.root}: rows must be in [0, {source.n}), found {pos.min()}..{pos.max()}")
        chunks = [pair.encode(modality, source.read(modality, pos[s:s + batch_size]).to(sae.W_dec.device))
                  for s in range(0, len(pos), batch_size)]
    else:
        x = _as_tensor(source, sae.d, "embeddings").to(sae.W_dec.device)
        chunks = [pair.encode(modality, x[s:s + batch_size]) for s in range(0, len(x), batch_size)]
    if not chunks:
        return SparseCodes(torch.zeros(0, sae.config.k), torch.zeros(0, sae.config.k, dtype=torch.long), pair.m)
    width = max(c.values.shape[1] for c in chunks)
    vals = torch.cat([F.pad(c.values, (0, width - c.values.shape[1])) for c in chunks])
    idx = torch.cat([F.pad(c.indices, (0, width - c.indices.shape[1])) for c in chunks])
    return SparseCodes(vals, idx, pair.m)


@torch.no_grad()
def nearest_rows(query: torch.Tensor, store: PairedEmbeddings, modality: str, n: int = 5,
                 batch_size: int = 8192, exclude: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The ``n`` rows of ``store`` (``modality``) with the highest cosine to each query.

    query: [q, d]. exclude: [q] absolute row to leave out of each query's list (or -1), e.g. the
    source row itself. Returns (cosines [q, n], absolute rows [q, n]), best first.
    """
    store.require(modality, "nearest rows")
    q = F.normalize(query.float().cpu(), dim=1)
    n = min(n, store.n)
    best_s = torch.full((len(q), 0), -2.0)
    best_p = torch.zeros((len(q), 0), dtype=torch.long)
    abs_rows = torch.as_tensor(store.rows_of(np.arange(store.n)))
    ex = None if exclude is None else torch.as_tensor(np.asarray(exclude, dtype=np.int64)).unsqueeze(1)
    for s in range(0, store.n, batch_size):
        pos = torch.arange(s, min(s + batch_size, store.n))
        g = F.normalize(store.read(modality, pos.numpy()), dim=1)
        sc = q @ g.T
        if ex is not None:
            sc = sc.masked_fill(abs_rows[pos].unsqueeze(0) == ex, -2.0)
        cat_s = torch.cat([best_s, sc], 1)
        cat_p = torch.cat([best_p, pos.unsqueeze(0).expand(len(q), -1)], 1)
        top = cat_s.topk(min(n, cat_s.shape[1]), dim=1)
        best_s, best_p = top.values, cat_p.gather(1, top.indices)
    return best_s, store.rows_of(best_p.numpy().reshape(-1)).reshape(best_p.shape)


__all__ = ["translate", "steer", "steering_direction", "latents_for", "nearest_rows", "require_shared_index"]
