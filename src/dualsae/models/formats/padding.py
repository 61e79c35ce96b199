"""Widening an SAE with latents that never fire, so two SAEs of different widths share one index space.

Eq. 7 permutes the text SAE into the image SAE's index space, which needs one width. Two SAEs trained
elsewhere rarely have it, so ``dualsae align --image A --text B`` widens the narrower one to the
other's m: the added latents have a zero encoder row and decoder column and an encoder bias of
:data:`NEVER`, so ``pre`` is -1e9 on every input and no activation (TopK, BatchTopK, ReLU, JumpReLU)
ever fires them; they are dead, left unmatched, and the original latents keep their indices and codes.
"""

from __future__ import annotations

import torch

from dualsae.models.sae import SAE, SAEConfig

#: The encoder bias of an added latent: far below any pre-activation, so it is never selected.
NEVER = -1e9


@torch.no_grad()
def pad_latents(sae: SAE, m: int) -> SAE:
    """A copy of ``sae`` with ``m - sae.m`` never-firing latents appended (``sae`` itself when m == sae.m)."""
    if m == sae.m:
        return sae
    if m < sae.m:
        raise ValueError(f"pad_latents widens an SAE: m={m} < {sae.m}")
    cfg = SAEConfig(**{**sae.config.to_dict(), "m": m})
    out = SAE(cfg).to(sae.W_enc.device)
    state = out.state_dict()
    for name, value in sae.state_dict().items():
        if value.dim() and value.shape[0] == sae.m and name != "b_dec":
            state[name].zero_()
            state[name][: sae.m] = value
        else:
            state[name].copy_(value)
    state["b_enc"][sae.m:] = NEVER
    out.load_state_dict(state)
    return out.eval()
