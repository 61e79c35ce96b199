"""Per-latent statistics of a model on a store, from sparse codes computed once.

Everything here works on the codes of the report's rows, held as numpy arrays
``values: [N, k] float32`` and ``indices: [N, k] int64`` per modality (the TopK form of
:class:`dualsae.core.codes.SparseCodes`; entries with value 0 are inactive). Latent ``j`` means index ``j``
of the model's shared index space (``SAEPair.encode``): for an aligned pair, image latent j and its
matched text latent; for a shared SAE, the one latent; for a specific pair before alignment, two
unrelated latents that happen to share a number.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from dualsae.store.paired import PairedEmbeddings
from dualsae.models.pair import SAEPair
from tqdm.auto import tqdm

HIST_BINS = 16
WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class ModalityCodes:
    """Codes of one modality on the report's N rows. values: [N, k] float32; indices: [N, k] int64."""

    values: np.ndarray
    indices: np.ndarray
    m: int

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    def matrix(self) -> sp.csr_matrix:
        """Sparse [N, m] activations (repeated indices summed, inactive entries dropped)."""
        n, k = self.values.shape
        rows = np.repeat(np.arange(n), k)
        z = sp.csr_matrix((self.values.ravel().astype(np.float64), (rows, self.indices.ravel())), shape=(n, self.m))
        z.eliminate_zeros()
        return z


@torch.no_grad()
def encode_store(pair: SAEPair, store: PairedEmbeddings, modality: str, batch_size: int = 4096,
                 device: str = "cpu", progress: bool = False) -> ModalityCodes:
    """Encode every row of ``store`` in ``modality`` once -> :class:`ModalityCodes` in the shared index space."""

    vals, idxs = [], []
    for start in tqdm(range(0, store.n, batch_size), desc=f"encode {modality}", disable=not progress, leave=False):
        x = store.read(modality, np.arange(start, min(start + batch_size, store.n))).to(device)
        codes = pair.encode(modality, x)
        vals.append(codes.values.float().cpu().numpy())
        idxs.append(codes.indices.cpu().numpy())
    width = max(v.shape[1] for v in vals)
    pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1])))  # noqa: E731  (BatchTopK rows vary in width)
    return ModalityCodes(np.concatenate([pad(v) for v in vals]), np.concatenate([pad(i) for i in idxs]), pair.m)


@dataclass
class LatentStats:
    """Per-latent numbers of one modality. All arrays [m].

    fired: rows where the latent is active; freq = fired / N; mean_active: mean activation when active;
    max: largest activation; hist: [m, HIST_BINS] counts of the active values on [0, max];
    top_rows: per latent, positions (in the report's rows) of the most active rows, best first.
    """

    fired: np.ndarray
    freq: np.ndarray
    mean_active: np.ndarray
    max: np.ndarray
    hist: np.ndarray
    top_rows: list[np.ndarray]
    top_values: list[np.ndarray]


def latent_stats(codes: ModalityCodes, top: int) -> LatentStats:
    """Firing counts, activation histograms and the ``top`` most active rows of every latent."""
    n, k = codes.values.shape
    m = codes.m
    val = codes.values.ravel()
    lat = codes.indices.ravel()
    row = np.repeat(np.arange(n), k)
    keep = val > 0
    val, lat, row = val[keep], lat[keep], row[keep]
    fired = np.bincount(lat, minlength=m)
    total = np.bincount(lat, weights=val, minlength=m)
    vmax = np.zeros(m, dtype=np.float64)
    np.maximum.at(vmax, lat, val)
    bins = np.minimum((val / np.maximum(vmax[lat], 1e-12) * HIST_BINS).astype(np.int64), HIST_BINS - 1)
    hist = np.zeros((m, HIST_BINS), dtype=np.int64)
    np.add.at(hist, (lat, bins), 1)
    # Sort by (latent, -value, row): each latent's rows then run best first; ties go to the lower row.
    order = np.lexsort((row, -val, lat))
    starts = np.concatenate([[0], np.cumsum(fired)])
    top_rows, top_values = [], []
    for j in range(m):
        sl = order[starts[j] : min(starts[j] + top, starts[j + 1])]
        top_rows.append(row[sl])
        top_values.append(val[sl])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_active = np.where(fired > 0, total / np.maximum(fired, 1), 0.0)
    return LatentStats(fired, fired / max(n, 1), mean_active, vmax, hist, top_rows, top_values)


def same_index_pairs(image: ModalityCodes, text: ModalityCodes) -> tuple[np.ndarray, np.ndarray]:
    """For every index j: co-firing support (rows where image latent j and text latent j are both active)
    and the Pearson correlation of their activations over the rows (eq. 5 at (j, j); NaN when either
    never varies). Returns ``(support [m] int, correlation [m] float)``."""
    zi, zt = image.matrix(), text.matrix()
    n = zi.shape[0]
    support = np.asarray((zi > 0).multiply(zt > 0).sum(0)).ravel().astype(np.int64)
    cross = np.asarray(zi.multiply(zt).sum(0)).ravel()
    mu_i, mu_t = np.asarray(zi.mean(0)).ravel(), np.asarray(zt.mean(0)).ravel()
    var_i = np.asarray(zi.multiply(zi).mean(0)).ravel() - mu_i**2
    var_t = np.asarray(zt.multiply(zt).mean(0)).ravel() - mu_t**2
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (cross / max(n, 1) - mu_i * mu_t) / np.sqrt(var_i * var_t)
    corr[(var_i <= 1e-12) | (var_t <= 1e-12)] = np.nan
    return support, corr


def unit_rows(w: torch.Tensor) -> torch.Tensor:
    w = w.detach().float().cpu()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def decoder_cosines(pair: SAEPair) -> np.ndarray:
    """[m] cosine between the image and the text decoder direction of each latent index."""
    wi, wt = unit_rows(pair.decoder_columns("image")), unit_rows(pair.decoder_columns("text"))
    return (wi * wt).sum(1).numpy()


def nearest_latents(w: torch.Tensor, n: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each decoder direction (rows of ``w: [m, d]``) the ``n`` other latents of the same decoder
    with the largest cosine. Returns ``(indices [m, n], cosines [m, n])``; blocks keep memory at
    ``[block, m]``."""
    u = unit_rows(w)
    m = u.shape[0]
    n = min(n, m - 1)
    idx, cos = np.zeros((m, n), dtype=np.int64), np.zeros((m, n), dtype=np.float32)
    for s in range(0, m, block):
        sim = u[s : s + block] @ u.T
        sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])] = -2.0  # never yourself
        top = sim.topk(n, dim=1)
        idx[s : s + block], cos[s : s + block] = top.indices.numpy(), top.values.numpy()
    return idx, cos


def caption_words(caption: str) -> list[str]:
    """Lower-cased word tokens of a caption (Unicode word characters), each once."""
    return sorted(set(WORD.findall(caption.lower())))


def word_index(captions: list[str | None], codes: dict[str, ModalityCodes], per_word: int = 12,
               max_words: int = 50_000) -> dict[str, list[list[float]]]:
    """Search index: caption word -> the latents that fire most on rows whose caption holds the word.

    Score of latent j for word w, per modality: mean activation of j over the rows containing w minus
    its mean over all rows (so latents that fire everywhere do not top every word). Latents are ranked
    by the sum of the modalities' scores; each entry is ``[j, image score, text score]`` (a modality
    without codes scores 0). Words: the ``max_words`` most frequent.
    """
    tokens = [caption_words(c) if isinstance(c, str) else [] for c in captions]
    counts = Counter(w for ws in tokens for w in ws)
    vocab = [w for w, _ in counts.most_common(max_words)]
    if not vocab:
        return {}
    pos = {w: i for i, w in enumerate(vocab)}
    r, c = [], []
    for row, ws in enumerate(tokens):
        for w in ws:
            if w in pos:
                r.append(pos[w])
                c.append(row)
    incidence = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(vocab), len(captions)))
    n_rows = np.asarray(incidence.sum(1)).ravel()
    mods = [codes.get("image"), codes.get("text")]
    m = next(x.m for x in mods if x is not None)
    excess = []
    for x in mods:
        if x is None:
            excess.append(sp.csr_matrix((len(vocab), m)))
            continue
        z = x.matrix()
        s = (incidence @ z).tocoo()
        overall = np.asarray(z.mean(0)).ravel()
        # Only latents that fire on some row with the word get a score; the rest are never a hit.
        data = s.data / n_rows[s.row] - overall[s.col]
        excess.append(sp.csr_matrix((data, (s.row, s.col)), shape=(len(vocab), m)))
    both = (excess[0] + excess[1]).tocsr()
    ex_i, ex_t = excess[0].tocsr(), excess[1].tocsr()
    out: dict[str, list[list[float]]] = {}
    for wi, word in enumerate(vocab):
        lo, hi = both.indptr[wi], both.indptr[wi + 1]
        cols, vals = both.indices[lo:hi], both.data[lo:hi]
        good = vals > 0
        cols, vals = cols[good], vals[good]
        best = cols[np.lexsort((cols, -vals))][:per_word]
        if len(best):
            out[word] = [[int(j), round(float(ex_i[wi, j]), 4), round(float(ex_t[wi, j]), 4)] for j in best]
    return out


def collapse_captions(captions: list[str | None], values: np.ndarray, limit: int) -> list[list]:
    """Identical captions collapsed, in order of first (highest) activation: ``[caption, count, best value]``."""
    seen: dict[str, list] = {}
    for cap, v in zip(captions, values.tolist()):
        key = cap if isinstance(cap, str) else ""
        if key in seen:
            seen[key][1] += 1
        else:
            seen[key] = [key, 1, round(float(v), 4)]
    return list(seen.values())[:limit]


__all__ = [
    "HIST_BINS",
    "LatentStats",
    "ModalityCodes",
    "caption_words",
    "collapse_captions",
    "decoder_cosines",
    "encode_store",
    "latent_stats",
    "nearest_latents",
    "same_index_pairs",
    "word_index",
]
