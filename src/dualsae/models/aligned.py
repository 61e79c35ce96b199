"""The aligned pair of eq. 7: the image SAE and the permuted text SAE in one latent index space, saved
as one folder (``alignment.json``, ``image/``, ``text/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dualsae.core.errors import CheckpointError
from dualsae.files.atomic import write_json
from dualsae.files.faults import fault_point
from dualsae.files.jsonfiles import read_json_object
from dualsae.models.pair import SAEPair
from dualsae.models.sae import SAE

ALIGNMENT_FORMAT = "dualsae.alignment/1"


# ====================================================================== the aligned model
@dataclass
class AlignedPair(SAEPair):
    """Image SAE and permuted text SAE sharing one latent index space (method ``aligned``).

    ``alignment`` is the content of ``alignment.json`` (permutation, matched pairs, live counts...).
    ``encode_image`` / ``encode_text`` / ``decode_*`` are inherited and already work in the shared
    index space because the text SAE was permuted when the pair was built.
    """

    alignment: dict = field(default_factory=dict)

    @property
    def permutation(self) -> np.ndarray:
        """[m_T] text original index -> shared index."""
        return np.asarray(self.alignment["permutation"], dtype=np.int64)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.sae_for("image").save(folder / "image")
        fault_point("align-between-saes", str(folder))
        self.sae_for("text").save(folder / "text")
        write_json(folder / "alignment.json", self.alignment)
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "AlignedPair":
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: not a folder; expected an aligned folder written by 'dualsae align'")
        path = folder / "alignment.json"
        alignment = read_json_object(path, "an aligned folder holds alignment.json, image/ and text/", CheckpointError)
        if alignment.get("format") != ALIGNMENT_FORMAT:
            raise CheckpointError(f"{path}: field 'format' must be {ALIGNMENT_FORMAT!r}, found {alignment.get('format')!r}")
        for sub in ("image", "text"):
            if not (folder / sub).is_dir():
                raise CheckpointError(f"{folder / sub}: missing; an aligned folder holds alignment.json, image/ and text/")
        image = SAE.load(folder / "image", device)
        text = SAE.load(folder / "text", device)
        perm = alignment.get("permutation")
        if not isinstance(perm, list):
            raise CheckpointError(f"{path}: field 'permutation' must be a list of {text.m} latent indices, found {type(perm).__name__}")
        if len(perm) != text.m or sorted(perm) != list(range(text.m)):
            raise CheckpointError(f"{path}: field 'permutation' must be a permutation of [0, {text.m}) (the text SAE's m), found {len(perm)} entries that are not")
        if image.d != text.d:
            raise CheckpointError(f"{folder}: image SAE has d={image.d}, text SAE has d={text.d}; both must embed the same space")
        return cls("aligned", image, text, alignment)
