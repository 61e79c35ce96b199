"""Translation and steering of a few latents, shown on their report pages.

Built from the library's pieces only (``SAEPair.encode`` / ``decode`` / ``decoder_columns``):

* translate (text -> image): encode a caption embedding with the text SAE, decode the code with the
  image SAE; its nearest images are compared with the nearest images of the raw caption embedding.
* steer: ``x' = normalize(x + alpha * s * w_j)`` with ``w_j`` the unit image decoder direction of
  latent j and ``s`` the mean image embedding norm, as ``dualsae.evaluation.metrics.steering`` does; the nearest
  images of source images that do not fire latent j are compared before and after.

"Hit rate" = share of the returned neighbours on which image latent j is active: how far the
neighbours moved toward the latent's concept. Neighbours are searched among a gallery of at most
``gallery`` rows of the report (cosine similarity).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dualsae.store.paired import PairedEmbeddings
from dualsae.models.pair import SAEPair


@torch.no_grad()
def translate(pair: SAEPair, x: torch.Tensor, source: str = "text", target: str = "image") -> torch.Tensor:
    """x: [b, d] embeddings of ``source`` -> [b, d]: the source SAE's code decoded by the target SAE."""
    return pair.decode(target, pair.encode(source, x))


@torch.no_grad()
def steer(pair: SAEPair, x: torch.Tensor, latent: int, alpha: float, modality: str = "image",
          scale: float = 1.0) -> torch.Tensor:
    """x: [b, d] -> unit-norm [b, d]: ``x + alpha * scale * w`` with ``w`` the unit decoder direction of ``latent``."""
    w = F.normalize(pair.decoder_columns(modality)[latent].float().cpu(), dim=0)
    return F.normalize(x + alpha * scale * w, dim=1)


class Prober:
    """Nearest-image search over a fixed gallery of report rows, for probing latents.

    store: the report's rows; active_image: [N, m] sparse (scipy) image activations of those rows.
    """

    def __init__(self, pair: SAEPair, store: PairedEmbeddings, active_image, gallery: int = 20_000,
                 seed: int = 0, alpha: float = 1.0, neighbours: int = 6) -> None:
        self.pair, self.store, self.alpha, self.k = pair, store, alpha, neighbours
        rng = np.random.default_rng(seed)
        self.pos = np.arange(store.n) if store.n <= gallery else np.sort(rng.choice(store.n, gallery, replace=False))
        images = store.read("image", self.pos)
        self.scale = float(images.norm(dim=1).mean())
        self.gallery = F.normalize(images, dim=1)
        self.active = active_image.tocsc()
        self.rng = rng

    def _fires(self, latent: int) -> np.ndarray:
        """[N] bool: image latent active on each report row."""
        col = self.active[:, latent]
        out = np.zeros(self.active.shape[0], dtype=bool)
        out[col.indices[col.data > 0]] = True
        return out

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
        fires = self._fires(latent)
        out: dict = {"alpha": self.alpha, "gallery": int(len(self.pos))}
        if text_row is not None and self.store.has("text"):
            t = self.store.read("text", np.array([text_row]))
            raw = self._nearest(t)[0]
            moved = self._nearest(translate(self.pair, t, "text", "image"))[0]
            out["translate"] = {"query": int(text_row), "raw": raw.tolist(), "translated": moved.tolist(),
                                "raw_hit": float(fires[raw].mean()), "translated_hit": float(fires[moved].mean())}
        cand = self.pos[~fires[self.pos]]
        if len(cand):
            src = np.sort(self.rng.choice(cand, size=min(sources, len(cand)), replace=False))
            x = self.store.read("image", src)
            before = self._nearest(x, exclude=src)
            after = self._nearest(steer(self.pair, x, latent, self.alpha, "image", self.scale), exclude=src)
            out["steer"] = {
                "sources": int(len(src)), "hit_before": float(fires[before].mean()), "hit_after": float(fires[after].mean()),
                "examples": [{"source": int(src[i]), "before": before[i].tolist(), "after": after[i].tolist()}
                             for i in range(min(examples, len(src)))],
            }
        return out


__all__ = ["Prober", "steer", "translate"]
