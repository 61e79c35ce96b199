"""Two SAE folders of any supported formats as one pair to align (``dualsae align --image A --text B``)."""

from __future__ import annotations

from pathlib import Path

from dualsae.core.errors import ConfigError
from dualsae.models.formats.detect import load_sae, sae_source
from dualsae.models.formats.padding import pad_latents
from dualsae.models.pair import SAEPair


def imported_pair(image: str | Path, text: str | Path, format: str | None = None) -> tuple[SAEPair, dict]:
    """The pair (method ``imported``) of the SAE folders ``image`` and ``text`` and where each came from.

    Both must embed one space (same d). Eq. 7 needs one index space, so the narrower SAE gains latents
    that never fire (:func:`~dualsae.models.formats.padding.pad_latents`); ``sources[modality]`` records
    the format, absolute path, file hashes, its own width (``latents``), activation and ``padded_to``.
    """
    sae_i, sae_t = load_sae(image, format), load_sae(text, format)
    if sae_i.d != sae_t.d:
        raise ConfigError(f"--image {image} embeds d={sae_i.d}, --text {text} d={sae_t.d}; both SAEs must embed the same space")
    sources = {"image": sae_source(image, format), "text": sae_source(text, format)}
    m = max(sae_i.m, sae_t.m)
    for mod, sae in (("image", sae_i), ("text", sae_t)):
        sources[mod].update({"latents": sae.m, "activation": sae.config.activation, "padded_to": m if sae.m < m else None})
    return SAEPair("imported", pad_latents(sae_i, m), pad_latents(sae_t, m)), sources
