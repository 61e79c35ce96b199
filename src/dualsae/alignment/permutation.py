"""The permutation of paper eq. 7: the text SAE re-indexed so that matched latents share an index.

The text SAE's rows (encoder rows, encoder bias, decoder columns, dead counters) are permuted so that
the text latent matched to image latent i gets index i. The permuted text SAE then encodes straight
into the shared index space; its decoder directions are the same set as before (eq. 7 re-indexes,
it does not change directions).
"""

from __future__ import annotations

import numpy as np
import torch

from dualsae.alignment.assignment import Matching
from dualsae.core.errors import ConfigError
from dualsae.models.sae import SAE


def build_permutation(matching: Matching, m_image: int, m_text: int) -> np.ndarray:
    """Text original index -> shared index, a permutation of [0, m_T) (eq. 7).

    Matched text latent j gets the index of its image partner i. The other text latents (live but
    unmatched first, then dead, each in increasing original index) take the indices no matched
    image latent uses, in increasing order, so the result is deterministic.
    """
    if m_image != m_text:
        raise ConfigError(
            f"post-hoc alignment permutes the text SAE into the image SAE's index space and needs equal "
            f"latent counts; found m_image={m_image}, m_text={m_text}"
        )
    perm = np.full(m_text, -1, dtype=np.int64)
    perm[matching.text] = matching.image
    taken = np.zeros(m_text, dtype=bool)
    taken[matching.image] = True
    free = np.flatnonzero(~taken)
    unmatched = np.flatnonzero(perm < 0)
    live_unmatched = np.isin(unmatched, matching.text_only)
    rest = np.concatenate([unmatched[live_unmatched], unmatched[~live_unmatched]])
    perm[rest] = free
    return perm


@torch.no_grad()
def permute_sae(sae: SAE, perm: np.ndarray | torch.Tensor) -> SAE:
    """A copy of ``sae`` whose latent j is moved to index ``perm[j]`` (eq. 7).

    Encoder rows, encoder bias, decoder columns, the dead-latent counter and (JumpReLU) the thresholds move together, so
    ``permute_sae(sae, p).encode(x)`` equals ``sae.encode(x).permute(p)`` and decoding is unchanged.
    """
    p = torch.as_tensor(np.asarray(perm), dtype=torch.long, device=sae.W_enc.device)
    if p.shape != (sae.m,) or not torch.equal(p.sort().values, torch.arange(sae.m, device=p.device)):
        raise ConfigError(f"permutation must be a rearrangement of [0, {sae.m}), found {p.numel()} entries that are not")
    out = SAE(sae.config).to(sae.W_enc.device)
    out.load_state_dict(sae.state_dict())
    for name in ("W_enc", "W_dec"):
        getattr(out, name).data[p] = getattr(sae, name).data
    out.b_enc.data[p] = sae.b_enc.data
    out.samples_since_fired[p] = sae.samples_since_fired
    if out.threshold.dim() == 1:  # JumpReLU's per-latent thresholds move with their latents
        out.threshold[p] = sae.threshold
    return out.train(sae.training)


__all__ = ["build_permutation", "permute_sae"]
