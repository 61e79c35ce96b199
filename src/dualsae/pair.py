"""A pair of encoders/decoders, one per modality, in one latent index space.

Every trained model is used through this interface, whatever the method:

* shared / group-sparse / iso-energy: one SAE serves both modalities (``image is text``);
* specific: two SAEs; before alignment their indices do not correspond (latent 3 of the image
  SAE has nothing to do with latent 3 of the text SAE);
* aligned (``dualsae.align.AlignedPair``): two SAEs whose text latents were permuted (eq. 7) so
  that matched latents share an index.

Metrics only call ``encode(modality, x)``, ``decode(modality, codes)`` and ``sae_for(modality)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dualsae.codes import SparseCodes
from dualsae.errors import DataError
from dualsae.sae import SAE

MODALITIES = ("image", "text")


@dataclass
class SAEPair:
    """image, text: the SAE used for each modality (the same object for shared methods)."""

    method: str
    image: SAE | None
    text: SAE | None

    @property
    def shared(self) -> bool:
        return self.image is not None and self.image is self.text

    @property
    def m(self) -> int:
        """Size of the latent index space (max over the two SAEs)."""
        return max(s.m for s in (self.image, self.text) if s is not None)

    def sae_for(self, modality: str) -> SAE:
        if modality not in MODALITIES:
            raise DataError(f"modality must be one of {MODALITIES}, found {modality!r}")
        sae = getattr(self, modality)
        if sae is None:
            raise DataError(f"this {self.method} model has no {modality} SAE")
        return sae

    @torch.no_grad()
    def encode(self, modality: str, x: torch.Tensor) -> SparseCodes:
        """x: [batch, d] -> SparseCodes in the shared index space (``m`` set to ``self.m``)."""
        codes = self.sae_for(modality).encode(x)
        return SparseCodes(codes.values, codes.indices, self.m)

    @torch.no_grad()
    def decode(self, modality: str, codes: SparseCodes) -> torch.Tensor:
        """codes in the shared index space -> reconstruction [batch, d] by that modality's decoder."""
        sae = self.sae_for(modality)
        return sae.decode(SparseCodes(codes.values, codes.indices, sae.m))

    def encode_image(self, x: torch.Tensor) -> SparseCodes:
        return self.encode("image", x)

    def encode_text(self, x: torch.Tensor) -> SparseCodes:
        return self.encode("text", x)

    def decode_image(self, codes: SparseCodes) -> torch.Tensor:
        return self.decode("image", codes)

    def decode_text(self, codes: SparseCodes) -> torch.Tensor:
        return self.decode("text", codes)

    # ---- use (dualsae.translate): translation, steering, latents, top examples
    def translate(self, x, source: str = "text", target: str = "image") -> torch.Tensor:
        """x: [batch, d] -> [batch, d]: encode with the source SAE, decode with the target SAE."""
        from dualsae.translate import translate

        return translate(self, x, source, target)

    def steer(self, x, latent: int, alpha: float, modality: str = "image") -> torch.Tensor:
        """x: [batch, d] -> x + alpha ||x|| (unit decoder direction of ``latent`` in ``modality``)."""
        from dualsae.translate import steer

        return steer(self, x, latent, alpha, modality)

    def latents_for(self, source, modality: str = "image", rows=None) -> SparseCodes:
        """Codes of a store's rows (``rows``: positions, default all) or of embeddings [batch, d]."""
        from dualsae.translate import latents_for

        return latents_for(self, source, modality, rows)

    def top_examples(self, latent: int, store, n: int = 10, modality: str = "both") -> dict:
        """{modality: the n rows of ``store`` on which ``latent`` is most active}."""
        from dualsae.translate import top_examples

        return top_examples(self, latent, store, n, modality)

    def decoder_columns(self, modality: str) -> torch.Tensor:
        """[m_modality, d]: row j is the decoder direction of latent j in the shared index space."""
        return self.sae_for(modality).W_dec.detach()
