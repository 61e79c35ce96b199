"""Using an aligned pair: translate an embedding into the other modality, read the latents of rows,
and find the cross-modal neighbours of a vector (steering is in :mod:`dualsae.use.steering`).

Paper Sec. 5 / DESIGN "Use it": once the text SAE is permuted (eq. 7) the two SAEs share latent
indices, so a caption's code ``z = E_T(y)`` can be decoded by the image decoder,
``x~ = D_I(z) = sum_j z_j phi_j + b_dec,I``: a vector in the *image* region of the joint space that
carries the caption's concepts (translation).

These functions take any :class:`dualsae.models.pair.SAEPair`. Translation through an *unaligned*
modality-specific pair is refused: its two index spaces are unrelated until ``dualsae align``
permutes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dualsae.core.codes import SparseCodes
from dualsae.models.encoding import DEFAULT_BATCH, encode_rows
from dualsae.store.paired import PairedEmbeddings
from dualsae.use.inputs import as_embeddings, check_modality, require_shared_index


@torch.no_grad()
def translate(pair, x: Any, source: str = "text", target: str = "image") -> torch.Tensor:
    """Encode with the source modality's SAE, decode with the target's: x [batch, d] -> [batch, d]."""
    check_modality(source, "source")
    check_modality(target, "target")
    if source != target:
        require_shared_index(pair)
    sae = pair.sae_for(source)
    t = as_embeddings(x, sae.d).to(sae.W_dec.device)
    return pair.decode(target, pair.encode(source, t))


@torch.no_grad()
def latents_for(pair, source: Any, modality: str = "image", rows: Any = None, batch_size: int = DEFAULT_BATCH) -> SparseCodes:
    """Sparse codes (shared index space) of embeddings or store rows, on the pair's device.

    source: a :class:`PairedEmbeddings` (then ``rows``: positions in it, default all) or an array /
    tensor of embeddings [batch, d]. Returns SparseCodes [batch, width]
    (:func:`dualsae.models.encoding.encode_rows`).
    """
    check_modality(modality)
    sae = pair.sae_for(modality)
    if not isinstance(source, PairedEmbeddings):
        source = as_embeddings(source, sae.d, "embeddings")
    return encode_rows(pair, source, modality, rows=rows, batch_size=batch_size, out_device=None)


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


__all__ = ["latents_for", "nearest_rows", "require_shared_index", "translate"]
