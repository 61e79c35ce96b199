"""How much to trust each matched pair of post-hoc alignment (eqs. 5-6): co-firing support and a
permutation-null threshold, and the thresholds that leave weak matches unmatched.

The paper matches every live latent it can (eq. 6 maximises tr(CP) over *all* live latents), so
a pair of rare latents that fired together on two rows gets matched just as a pair that fired
together on a thousand. Two numbers per matched pair ``(i, j)`` tell them apart (the paper is
silent here; these are the project's choices, see README "Choices"):

* **support**: the number of paired rows on which both latents fire (``z_I,i != 0`` and
  ``z_T,j != 0``). A correlation resting on a handful of rows is noise-prone whatever its value.
* **null threshold**: the correlation the same two latents reach when the row pairing is
  shuffled. Under a random re-pairing ``pi`` each latent keeps its values and firing count
  (its marginal), only which image goes with which caption changes, so

      r_pi(i, j) = (S_pi / N - mu_i mu_j) / (sd_i sd_j),   S_pi = sum_r z_I,i(r) z_T,j(pi(r))

  and ``null_threshold`` is the ``quantile`` (default 0.99) of ``r_pi`` over ``shuffles``
  (default 200) seeded random permutations. Because the marginals are kept, the threshold is
  high for rare latents (two latents firing on 3 rows each co-fire by chance with a sizeable
  correlation) and near ``2.3 / sqrt(N)`` for frequent ones: it is the correlation chance
  reaches *at that pair's firing counts*. A matched pair whose correlation does not exceed it
  is indistinguishable from a random pairing of rows at the 1% level (per pair; no correction
  for having chosen the pair by maximising eq. 6, so it is a lower bar, not a test).

Efficiency: the codes of all rows are encoded once and held sparse (``N * (k_I + k_T)`` values
and indices). The active entries of matched text latents are sorted by ``row * K + slot``; a shuffle
then looks up, for every active matched image entry (row r, pair a), the text value of pair a at the
re-paired row ``pi(r)`` by binary search: O(N k_I log(N k_T)) per shuffle, independent of m, no
[N, m] or [N, K] matrix (6,675 rows, k = 32, 200 shuffles: a few seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from dualsae.alignment.coactivation import encode_store
from dualsae.core.codes import SparseCodes
from dualsae.core.errors import ConfigError
from dualsae.store.paired import PairedEmbeddings


@dataclass(frozen=True)
class ConfidenceOptions:
    """shuffles: random row re-pairings for the null (0 = support only); quantile: of the null
    correlations; seed: of the shuffles. min_correlation: a matched pair with a lower correlation
    is left unmatched (modality-only); the string ``"null"`` means each pair's own null threshold.
    min_support: a matched pair co-firing on fewer rows is left unmatched."""

    shuffles: int = field(default=200, metadata={"help": "random re-pairings of the rows for each pair's null threshold; 0 = support only"})
    quantile: float = field(default=0.99, metadata={"help": "quantile of the shuffled correlations taken as the null threshold",
                                                    "flag": "--null-quantile"})
    seed: int = field(default=0, metadata={"cli": False})
    min_correlation: float | str | None = field(default=None, metadata={
        "help": "leave matched pairs with a lower coactivation correlation unmatched (modality-only); "
                "a number, or 'null' for each pair's own permutation-null threshold", "type": str, "default": "keep all"})
    min_support: int = field(default=0, metadata={"help": "leave matched pairs that co-fire on fewer rows unmatched", "default": "0 = keep all"})

    def __post_init__(self) -> None:
        if self.shuffles < 0:
            raise ConfigError(f"shuffles must be >= 0, found {self.shuffles}")
        if not 0 < self.quantile < 1:
            raise ConfigError(f"quantile must be in (0, 1), found {self.quantile}")
        if self.min_support < 0:
            raise ConfigError(f"min_support must be >= 0, found {self.min_support}")
        if isinstance(self.min_correlation, str) and self.min_correlation != "null":
            raise ConfigError(f"min_correlation must be a number or 'null', found {self.min_correlation!r}")
        if self.min_correlation == "null" and self.shuffles == 0:
            raise ConfigError("min_correlation 'null' needs the permutation null: shuffles must be > 0")


@dataclass
class MatchConfidence:
    """Per matched pair (aligned with the matching's lists): support [K] int64, null_threshold [K]
    float64 (NaN when shuffles = 0)."""

    support: np.ndarray
    null_threshold: np.ndarray
    options: ConfidenceOptions


class _MatchedEntries:
    """The active code entries of matched latents, flattened once for every shuffle.

    Image side: (row, slot, value) of each active entry whose latent is matched (slot a = the a-th
    matched pair). Text side: the same entries keyed by ``row * K + slot`` and sorted, so the text
    value of slot a at any row is one binary search away. Memory O(N (k_I + k_T))."""

    def __init__(self, codes_i: SparseCodes, codes_t: SparseCodes, image: np.ndarray, text: np.ndarray) -> None:
        k = len(image)
        self.k = k
        self.row_i, self.slot_i, self.val_i = self._flatten(codes_i, image)
        row_t, slot_t, val_t = self._flatten(codes_t, text)
        keys = row_t * max(k, 1) + slot_t
        order = np.argsort(keys, kind="stable")
        self.keys_t, self.val_t = keys[order], val_t[order]

    @staticmethod
    def _flatten(codes: SparseCodes, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        slot_of = np.full(codes.m, -1, dtype=np.int64)
        slot_of[np.asarray(latents, dtype=np.int64)] = np.arange(len(latents))
        idx = codes.indices.numpy()
        val = codes.values.double().numpy()
        slot = slot_of[idx]
        keep = (slot >= 0) & (val != 0)
        rows = np.broadcast_to(np.arange(idx.shape[0])[:, None], idx.shape)
        return rows[keep].astype(np.int64), slot[keep], val[keep]

    def cross(self, text_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(co-firing counts [K], sums of z_I z_T [K]) when image row r is paired with text row
        ``text_rows[r]`` (None: with row r itself)."""
        if self.k == 0 or len(self.keys_t) == 0:
            return np.zeros(self.k, dtype=np.int64), np.zeros(self.k)
        partner = self.row_i if text_rows is None else text_rows[self.row_i]
        q = partner * self.k + self.slot_i
        pos = np.minimum(np.searchsorted(self.keys_t, q), len(self.keys_t) - 1)
        found = self.keys_t[pos] == q
        count = np.bincount(self.slot_i[found], minlength=self.k)
        cross = np.bincount(self.slot_i[found], weights=self.val_i[found] * self.val_t[pos[found]], minlength=self.k)
        return count.astype(np.int64), cross


def _moments(codes: SparseCodes, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population sd over rows of each latent in ``latents`` (from sparse codes)."""
    n = max(codes.batch, 1)
    flat_i, flat_v = codes.indices.reshape(-1), codes.values.double().reshape(-1)
    s = torch.zeros(codes.m, dtype=torch.float64).index_add_(0, flat_i, flat_v)
    sq = torch.zeros(codes.m, dtype=torch.float64).index_add_(0, flat_i, flat_v * flat_v)
    mu = (s / n).numpy()[latents]
    var = (sq / n).numpy()[latents] - mu * mu
    return mu, np.sqrt(np.clip(var, 0, None))


def match_confidence(codes_i: SparseCodes, codes_t: SparseCodes, image: np.ndarray, text: np.ndarray,
                     options: ConfidenceOptions = ConfidenceOptions()) -> MatchConfidence:
    """Support and permutation-null threshold of each matched pair ``(image[a], text[a])``.

    codes_i: [N, k_I], codes_t: [N, k_T], row r of each one pair (see :func:`dualsae.alignment.coactivation.encode_store`).
    """
    image = np.asarray(image, dtype=np.int64)
    text = np.asarray(text, dtype=np.int64)
    entries = _MatchedEntries(codes_i, codes_t, image, text)
    support, _ = entries.cross()
    null = np.full(len(image), np.nan)
    n = codes_i.batch
    if options.shuffles > 0 and len(image) and n >= 2:
        mu_i, sd_i = _moments(codes_i, image)
        mu_t, sd_t = _moments(codes_t, text)
        denom = np.where(sd_i * sd_t > 0, sd_i * sd_t, np.inf)
        gen = torch.Generator().manual_seed(int(options.seed))
        samples = np.empty((options.shuffles, len(image)))
        for b in range(options.shuffles):
            perm = torch.randperm(n, generator=gen).numpy()
            _, cross = entries.cross(perm)
            samples[b] = (cross / n - mu_i * mu_t) / denom
        null = np.quantile(samples, options.quantile, axis=0)
    return MatchConfidence(support.astype(np.int64), null, options)


def keep_mask(corr: np.ndarray, conf: MatchConfidence) -> np.ndarray:
    """[K] bool: matched pairs that pass ``min_correlation`` and ``min_support``."""
    opt = conf.options
    keep = conf.support >= opt.min_support
    if opt.min_correlation == "null":
        keep &= corr > conf.null_threshold
    elif opt.min_correlation is not None:
        keep &= corr >= float(opt.min_correlation)
    return keep


def filter_matching(matching, conf: MatchConfidence):
    """The matching with pairs failing the thresholds moved to image-only / text-only, and the
    confidence arrays restricted to the kept pairs. Returns ``(matching, conf, dropped_count)``."""
    keep = keep_mask(matching.corr, conf)
    if keep.all():
        return matching, conf, 0
    image, text = matching.image[keep], matching.text[keep]
    kept = replace(
        matching,
        image=image,
        text=text,
        corr=matching.corr[keep],
        image_only=np.setdiff1d(matching.live_image, image),
        text_only=np.setdiff1d(matching.live_text, text),
        total=float(matching.corr[keep].sum()),
    )
    return kept, MatchConfidence(conf.support[keep], conf.null_threshold[keep], conf.options), int((~keep).sum())


def confidence_json(conf: MatchConfidence, dropped: int, corr: np.ndarray) -> dict:
    """The ``confidence`` section of alignment.json / collapse.json (the per-pair arrays go into
    ``matched``)."""
    opt = conf.options
    has_null = opt.shuffles > 0 and len(conf.null_threshold) > 0
    return {
        "method": "permutation null: correlation after shuffling the row pairing, marginals kept",
        "shuffles": opt.shuffles,
        "quantile": opt.quantile,
        "seed": opt.seed,
        "min_correlation": opt.min_correlation,
        "min_support": opt.min_support,
        "dropped_by_threshold": dropped,
        "above_null": int((corr > conf.null_threshold).sum()) if has_null else None,
        "support_quartiles": [int(v) for v in np.quantile(conf.support, [0.25, 0.5, 0.75], method="lower")] if len(conf.support) else None,
    }


def arrays_json(conf: MatchConfidence) -> dict:
    """``support`` and ``null_threshold`` lists aligned with the matched lists (null: None when not computed)."""
    return {
        "support": conf.support.tolist(),
        "null_threshold": [None if not np.isfinite(v) else round(float(v), 6) for v in conf.null_threshold],
    }


def assess_matching(pair, store: PairedEmbeddings, matching, options: ConfidenceOptions, batch_size: int = 4096,
                    device: str | torch.device = "cpu", codes: tuple[SparseCodes, SparseCodes] | None = None):
    """Measure the confidence of every pair of ``matching`` (eq. 6's result) on the codes of ``store``
    (``codes``: (image [N, k_I], text [N, k_T]) already encoded by
    :func:`dualsae.alignment.coactivation.encode_store`, else encoded here) and apply the thresholds.
    Returns ``(matching, MatchConfidence, confidence section for JSON)``."""
    codes_i, codes_t = codes if codes is not None else encode_store(pair, store, batch_size=batch_size, device=device)
    conf = match_confidence(codes_i, codes_t, matching.image, matching.text, options)
    kept, conf, dropped = filter_matching(matching, conf)
    return kept, conf, confidence_json(conf, dropped, kept.corr)


__all__ = [
    "assess_matching",
    "ConfidenceOptions",
    "MatchConfidence",
    "match_confidence",
    "keep_mask",
    "filter_matching",
    "confidence_json",
    "arrays_json",
]
