"""A pair of encoders/decoders, one per modality, in one latent index space.

Every trained model is used through this interface, whatever the method:

* shared / group-sparse / iso-energy: one SAE serves both modalities (``image is text``);
* specific: two SAEs; before alignment their indices do not correspond (latent 3 of the image
  SAE has nothing to do with latent 3 of the text SAE);
* aligned (``dualsae.models.aligned.AlignedPair``): two SAEs whose text latents were permuted (eq. 7) so
  that matched latents share an index.

Metrics only call ``encode(modality, x)``, ``decode(modality, codes)`` and ``sae_for(modality)``.
What one does with a pair (translate, steer, latents of rows) is in :mod:`dualsae.use`, top-activating
rows in :mod:`dualsae.evaluation.top_rows`: functions of a pair, so this layer imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dualsae.core.codes import SparseCodes
from dualsae.core.errors import DataError
from dualsae.core.modalities import MODALITIES
from dualsae.models.sae import SAE


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

    def decoder_columns(self, modality: str) -> torch.Tensor:
        """[m_modality, d]: row j is the decoder direction of latent j in the shared index space."""
        return self.sae_for(modality).W_dec.detach()
