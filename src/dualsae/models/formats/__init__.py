"""Other libraries' SAE layouts: readers (SAELens, sparsify, overcomplete, dictionary_learning) that build a
dualsae :class:`~dualsae.models.sae.SAE` encoding exactly as the source library does, and writers for
SAELens and sparsify. ``load_sae(path, format=None)`` is the one entry point (:mod:`.detect`)."""

from dualsae.models.formats.detect import FORMATS, detect_format, load_sae, sae_source
from dualsae.models.formats.pairing import imported_pair

__all__ = ["FORMATS", "detect_format", "imported_pair", "load_sae", "sae_source"]
