"""Translation and steering of a few latents, shown on their report pages.

Built from :mod:`dualsae.use` only, so the report shows what ``dualsae translate`` / ``dualsae
steer`` compute:

* translate (text -> image, :func:`dualsae.use.translation.translate`): a caption embedding encoded
  by the text SAE and decoded by the image SAE; its nearest images are compared with the nearest
  images of the raw caption embedding.
* steer (:func:`dualsae.use.steering.steer`): ``x' = normalize(x + alpha * s * w_j)`` with ``w_j`` the
  unit image decoder direction of latent j and ``s`` the mean image embedding norm of the gallery,
  as the Sec. 6.2 metric does; the nearest images of source images that do not fire latent j are
  compared before and after.

"Hit rate" = share of the returned neighbours on which image latent j is active
(:func:`dualsae.use.steering.concept_share`, the "concept share" of ``dualsae steer``): how far the
neighbours moved toward the latent's concept. Neighbours are searched among a gallery of at most
``gallery`` rows of the report (cosine similarity).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dualsae.core.codes import SparseCodes
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings
from dualsae.use.steering import concept_share, latent_fires, steer
from dualsae.use.translation import translate


class Prober:
    """Nearest-image search over a fixed gallery of report rows, for probing latents.

    store: the report's rows [N]; image_codes: SparseCodes [N, width] of their images (shared index).
    """

    def __init__(self, pair: SAEPair, store: PairedEmbeddings, image_codes: SparseCodes, gallery: int = 20_000,
                 seed: int = 0, alpha: float = 1.0, neighbours: int = 6) -> None:
        self.pair, self.store, self.alpha, self.k = pair, store, alpha, neighbours
        rng = np.random.default_rng(seed)
        self.pos = np.arange(store.n) if store.n <= gallery else np.sort(rng.choice(store.n, gallery, replace=False))
        images = store.read("image", self.pos)
        self.scale = float(images.norm(dim=1).mean())
        self.gallery = F.normalize(images, dim=1)
        self.codes = image_codes
        self.rng = rng

    def _nearest(self, q: torch.Tensor, exclude: np.ndarray | None = None) -> np.ndarray:
        """q: [b, d] -> [b, k] report-row positions of the nearest gallery images."""
        sim = F.normalize(q, dim=1) @ self.gallery.T
        if exclude is not None:
            where = np.searchsorted(self.pos, exclude)
            ok = (where < len(self.pos)) & (self.pos[np.minimum(where, len(self.pos) - 1)] == exclude)
            sim[torch.as_tensor(np.flatnonzero(ok)), torch.as_tensor(where[ok])] = -2.0
        return self.pos[sim.topk(min(self.k, len(self.pos)), dim=1).indices.numpy()]

    def probe(self, latent: int, text_row: int | None, sources: int = 32, examples: int = 3) -> dict:
        """Translation of the caption at report position ``text_row`` and steering of ``sources`` images."""
        fires = latent_fires(self.codes, latent)  # [N] image latent active on each report row
        out: dict = {"alpha": self.alpha, "gallery": int(len(self.pos))}
        if text_row is not None and self.store.has("text"):
            t = self.store.read("text", np.array([text_row]))
            raw = self._nearest(t)[0]
            moved = self._nearest(translate(self.pair, t, "text", "image"))[0]
            out["translate"] = {"query": int(text_row), "raw": raw.tolist(), "translated": moved.tolist(),
                                "raw_hit": concept_share(raw[None], fires).overall,
                                "translated_hit": concept_share(moved[None], fires).overall}
        cand = self.pos[~fires[self.pos]]
        if len(cand):
            src = np.sort(self.rng.choice(cand, size=min(sources, len(cand)), replace=False))
            x = self.store.read("image", src)
            before = self._nearest(x, exclude=src)
            after = self._nearest(steer(self.pair, x, latent, self.alpha, "image", scale=self.scale, normalize=True), exclude=src)
            out["steer"] = {
                "sources": int(len(src)), "hit_before": concept_share(before, fires).overall,
                "hit_after": concept_share(after, fires).overall,
                "examples": [{"source": int(src[i]), "before": before[i].tolist(), "after": after[i].tolist()}
                             for i in range(min(examples, len(src)))],
            }
        return out


__all__ = ["Prober"]
