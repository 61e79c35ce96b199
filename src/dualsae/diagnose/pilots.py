"""The quick pilot trainings of ``dualsae diagnose`` and the three measurements made with them.

1. **Modality gap** (App. C, Prop. 2): :func:`modality_gap`.
2. **Quick shared SAE -> collapse rate** (App. F.2): one small shared TopK SAE trained briefly
   (:func:`dualsae.training.trainer.train`), then eqs. 5-6 (:func:`dualsae.alignment.post_hoc.align`):
   the share of live latents matched to themselves, ``P(i) = i`` (:func:`quick_collapse`).
3. **Quick specific pair -> heterogeneity** (Sec. 3, Fig. 2): two small modality-specific SAEs,
   aligned post hoc (eqs. 5-7), and the median cosine distance ``1 - cos(phi_i, psi_j)`` of the
   best-correlated ``top_fraction`` of matched decoder directions (:func:`quick_heterogeneity`).

Their sizes are a :class:`QuickConfig`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from dualsae.alignment.post_hoc import align
from dualsae.core.errors import ConfigError, DataError
from dualsae.evaluation.heterogeneity import heterogeneity
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings
from dualsae.training.config import TrainConfig
from dualsae.training.trainer import train

#: QuickConfig fields that are TrainConfig overrides of the 'synthetic' preset, passed by name.
TRAIN_OVERRIDES = ("latents", "k", "epochs", "batch_size", "seed")


@dataclass(frozen=True)
class QuickConfig:
    """Sizes of the quick SAEs (a ``None`` is resolved from the store by :meth:`resolve`).

    rows: at most this many pairs, drawn at random (seeded), train and measure every statistic.
    latents: m of the quick shared SAE (each specific SAE gets m/2); default: the largest power of
        two <= rows/4, at most 1024. k: TopK K. steps: target optimiser steps of each training
        (epochs = ceil(steps * batch_size / rows)); epochs, when set, wins. batch_size: pairs per step.
    top_fraction: share of matched pairs, by decreasing correlation, whose median cosine distance is
        the heterogeneity statistic. seed: seeds the subsample and both trainings.
    Training otherwise follows the App. E.2 protocol (``TrainConfig.from_preset('synthetic')``); the
    fields of :data:`TRAIN_OVERRIDES` are passed to it by name (:meth:`train_config`). The config
    cannot hold a built TrainConfig itself: ``latents`` and ``epochs`` are resolved from the store.
    """

    # Metadata ``help``: the text of each field's ``dualsae diagnose`` flag (commands/flags.py).
    rows: int = field(default=16_384, metadata={"help": "at most this many pairs, drawn at random"})
    latents: int | None = field(default=None, metadata={"help": "m of the quick shared SAE, m/2 per specific SAE",
                                                        "default": "largest power of 2 <= rows/4, at most 1024"})
    k: int = field(default=16, metadata={"help": "TopK K"})
    steps: int = field(default=64, metadata={"help": "target optimiser steps per training"})
    epochs: int | None = field(default=None, metadata={"help": "epochs per training", "default": "from --steps and the rows"})
    batch_size: int = field(default=256, metadata={"help": "pairs per step"})
    top_fraction: float = field(default=0.1, metadata={"help": "share of best-correlated matched pairs for the heterogeneity median"})
    seed: int = field(default=0, metadata={"help": "seed of the subsample and the trainings"})

    def validate(self) -> None:
        for name in ("rows", "k", "steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"diagnose field '{name}' must be an integer >= 1, found {v!r}")
        for name in ("latents", "epochs"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 2):
                raise ConfigError(f"diagnose field '{name}' must be an integer >= 2, found {v!r}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"diagnose field 'top_fraction' must be in (0, 1], found {self.top_fraction}")

    def resolve(self, n_rows: int) -> "QuickConfig":
        """Concrete sizes for a store of ``n_rows`` pairs."""
        self.validate()
        rows = min(self.rows, n_rows)
        if rows < 64:
            raise DataError(f"the store has {n_rows:,} pair(s); the diagnostic needs at least 64")
        latents = self.latents if self.latents is not None else min(1024, 2 ** int(math.log2(rows / 4)))
        if latents // 2 < self.k:
            raise ConfigError(f"diagnose: latents m={latents} gives specific SAEs of m/2={latents // 2} < k={self.k}; raise --latents or lower --k")
        if self.batch_size > rows:
            raise ConfigError(f"diagnose field 'batch_size' is {self.batch_size}, larger than the {rows:,} pairs the diagnostic trains on; "
                              f"use {rows} or less")
        epochs = self.epochs if self.epochs is not None else max(1, math.ceil(self.steps * self.batch_size / rows))
        return replace(self, rows=rows, latents=latents, epochs=epochs)

    def train_config(self, method: str) -> TrainConfig:
        """The quick training of ``method`` (App. E.2 protocol; call on a :meth:`resolve`-d config)."""
        return TrainConfig.from_preset("synthetic", method=method, **{name: getattr(self, name) for name in TRAIN_OVERRIDES})


def subsample(store: PairedEmbeddings, rows: int, seed: int) -> PairedEmbeddings:
    if rows >= store.n:
        return store
    pos = np.sort(np.random.default_rng([seed, 7]).choice(store.n, size=rows, replace=False))
    return store.subset(pos)


@torch.no_grad()
def modality_gap(store: PairedEmbeddings, seed: int = 0, batch_size: int = 8192) -> dict:
    """Modality gap of paired rows (App. C): on L2-normalised x, y,
    ``centroid_distance = ||mean(x) - mean(y)||``, ``mean_pair_cosine = mean_i cos(x_i, y_i)`` and
    ``mean_random_pair_cosine = mean_i cos(x_i, y_pi(i))`` for a random permutation pi (seeded)."""
    store.require_pairs("the modality gap")
    perm = np.random.default_rng([seed, 11]).permutation(store.n)
    sum_x = torch.zeros(store.d, dtype=torch.float64)
    sum_y = torch.zeros(store.d, dtype=torch.float64)
    pair_cos = rand_cos = 0.0
    for s in range(0, store.n, batch_size):
        pos = np.arange(s, min(s + batch_size, store.n))
        x, y, y_r = (F.normalize(store.read(mod, p).to(torch.float64), dim=1) for mod, p in (("image", pos), ("text", pos), ("text", perm[pos])))
        sum_x += x.sum(0)
        sum_y += y.sum(0)
        pair_cos += float((x * y).sum())
        rand_cos += float((x * y_r).sum())
    n = store.n
    return {
        "rows": n,
        "centroid_distance": float((sum_x / n - sum_y / n).norm()),
        "mean_pair_cosine": pair_cos / n,
        "mean_random_pair_cosine": rand_cos / n,
    }


def _train_quick(store: PairedEmbeddings, q: QuickConfig, method: str, device: str, progress: bool) -> SAEPair:
    return train(store, q.train_config(method), None, device=device, progress=progress)


def quick_collapse(store: PairedEmbeddings, q: QuickConfig, device: str = "cpu", progress: bool = False) -> dict:
    """Train the quick shared SAE on ``store`` and return its App. F.2 collapse report (summary)."""
    t0 = time.perf_counter()
    pair = _train_quick(store, q, "shared", device, progress)
    result = align(pair, store, device=device, progress=False)
    r = result.report
    return {
        "collapse_rate": r["collapse_rate"], "collapsed": r["collapsed"], "live": r["live"]["either"],
        "latents": q.latents, "mean_matched_correlation": r["mean_matched_correlation"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def quick_heterogeneity(store: PairedEmbeddings, q: QuickConfig, device: str = "cpu", progress: bool = False) -> dict:
    """Train the quick specific pair, align it post hoc (eqs. 5-7) and measure Fig. 2's heterogeneity.

    ``median_top_distance``: median of ``1 - cos(phi_i, psi_P(i))`` over the ``top_fraction`` of matched
    pairs with the highest c; ``bins``: analysis.heterogeneity's per-correlation-bin summary of all pairs."""
    t0 = time.perf_counter()
    pair = _train_quick(store, q, "specific", device, progress)
    result = align(pair, store, device=device, progress=False)
    mt = result.matching
    if len(mt.image) == 0:
        raise DataError(f"{store.root}: the quick specific SAEs have no live latents to match; raise --steps or --rows")
    top = np.argsort(-mt.corr, kind="stable")[: max(1, int(round(q.top_fraction * len(mt.corr))))]
    het = heterogeneity(pair.decoder_columns("image").cpu(), pair.decoder_columns("text").cpu(), result.correlation,
                        mt.live_image, mt.live_text, matched=(mt.image[top], mt.text[top]))
    return {
        "median_top_distance": het.matched["median"], "top_pairs": het.matched["count"],
        "top_min_correlation": float(mt.corr[top].min()), "matched": int(len(mt.image)),
        "mean_matched_correlation": mt.mean_corr, "top_fraction": q.top_fraction,
        "bins": [{k: b[k] for k in ("bin", "count", "median")} for b in het.bins],
        "seconds": round(time.perf_counter() - t0, 1),
    }


__all__ = ["QuickConfig", "subsample", "TRAIN_OVERRIDES", "modality_gap", "quick_collapse", "quick_heterogeneity"]
