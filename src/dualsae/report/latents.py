"""Per-latent statistics of a model on a store, from sparse codes computed once.

Everything here works on the codes of the report's rows, one :class:`dualsae.core.codes.SparseCodes`
``[N, width]`` per modality on the CPU (entries with value 0 are inactive), computed once by
:func:`dualsae.models.encoding.encode_rows`; the same-index correlation and support come from
:class:`dualsae.alignment.correlation.CoactivationStats` (``same_index=True``). Latent ``j`` means index ``j``
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
import torch.nn.functional as F

from dualsae.core.codes import SparseCodes
from dualsae.core.screened_topk import bf16_matmul_is_fast, certified_topk, screen_product
from dualsae.core.sparse_ops import Pattern
from dualsae.evaluation.top_rows import active_entries, select_top
from dualsae.models.pair import SAEPair

HIST_BINS = 16
WORD = re.compile(r"\w+", re.UNICODE)


def codes_matrix(codes: SparseCodes) -> sp.csr_matrix:
    """Sparse [N, m] float64 activations of codes [N, width] (repeated indices summed, inactive entries dropped)."""
    values, indices = codes.values.numpy(), codes.indices.numpy()
    n, k = values.shape
    rows = np.repeat(np.arange(n), k)
    z = sp.csr_matrix((values.ravel().astype(np.float64), (rows, indices.ravel())), shape=(n, codes.m))
    z.eliminate_zeros()
    return z


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


def latent_stats(codes: SparseCodes, top: int) -> LatentStats:
    """Firing counts, activation histograms and the ``top`` most active rows of every latent
    (:func:`dualsae.evaluation.top_rows.select_top`: best first, ties to the lower row). codes: [N, width]."""
    n, m = codes.batch, codes.m
    entries = active_entries(codes)
    val, lat = entries.value, entries.slot
    fired = np.bincount(lat, minlength=m)
    total = np.bincount(lat, weights=val, minlength=m)
    vmax = np.zeros(m, dtype=np.float64)
    np.maximum.at(vmax, lat, val)
    bins = np.minimum((val / np.maximum(vmax[lat], 1e-12) * HIST_BINS).astype(np.int64), HIST_BINS - 1)
    hist = np.zeros((m, HIST_BINS), dtype=np.int64)
    np.add.at(hist, (lat, bins), 1)
    kept, starts = select_top(entries, m, top)
    top_rows = [kept.row[starts[j]:starts[j + 1]] for j in range(m)]
    top_values = [kept.value[starts[j]:starts[j + 1]] for j in range(m)]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_active = np.where(fired > 0, total / np.maximum(fired, 1), 0.0)
    return LatentStats(fired, fired / max(n, 1), mean_active, vmax, hist, top_rows, top_values)


def decoder_cosines(pair: SAEPair) -> np.ndarray:
    """[m] cosine between the image and the text decoder direction of each latent index."""
    wi = F.normalize(pair.decoder_columns("image").float().cpu(), dim=1)
    wt = F.normalize(pair.decoder_columns("text").float().cpu(), dim=1)
    return (wi * wt).sum(1).numpy()


#: Widths from which :func:`nearest_latents` screens the [m, m] cosines in bfloat16 (where that is fast).
SCREEN_NEAREST_MIN = 16_384


def nearest_latents(w: torch.Tensor, n: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each decoder direction (rows of ``w: [m, d]``) the ``n`` other latents of the same decoder
    with the largest cosine. Returns ``(indices [m, n], cosines [m, n])``, largest first; blocks keep
    memory at ``[block, m]``.

    The m^2 d cosines are the report's one quadratic cost (65,536 latents at d 768: 6.6 TFLOP). From
    ``SCREEN_NEAREST_MIN`` latents on a CPU with bfloat16 kernels each block's product runs in bfloat16
    and the float32 top n is recovered from it exactly (:func:`dualsae.core.screened_topk.certified_topk`).
    """
    u = F.normalize(w.detach().float().cpu(), dim=1)
    m = u.shape[0]
    n = min(n, m - 1)
    idx, cos = np.zeros((m, n), dtype=np.int64), np.zeros((m, n), dtype=np.float32)
    screen = m >= SCREEN_NEAREST_MIN and bf16_matmul_is_fast(u.device)
    u16 = u.to(torch.bfloat16) if screen else None
    zero = torch.zeros(m)
    for s in range(0, m, block):
        q = u[s : s + block]
        me = torch.arange(s, s + q.shape[0])
        if screen:
            vals, top = _screened_nearest(q, u, u16, zero, me, n)
        else:
            sim = q @ u.T
            sim[torch.arange(sim.shape[0]), me] = -2.0  # never yourself
            vals, top = sim.topk(n, dim=1)
        idx[s : s + block], cos[s : s + block] = top.numpy(), vals.numpy()
    return idx, cos


def _screened_nearest(q: torch.Tensor, u: torch.Tensor, u16: torch.Tensor, zero: torch.Tensor, me: torch.Tensor,
                      n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosines, indices) [b, n] of the n latents nearest each query row q [b, d] (latents ``me`` [b]), itself
    excluded, largest first: the bfloat16-screened product, exact in float32."""
    scr = screen_product(q, u, zero, W16=u16)
    scr.approx[torch.arange(q.shape[0]), me] = float("-inf")

    def exact(rows: torch.Tensor | None, cand: torch.Tensor) -> torch.Tensor:
        mine = me if rows is None else me[rows]
        dots = Pattern(cand, u.shape[0]).sampled_dots(q if rows is None else q[rows], u)
        return dots.masked_fill(cand == mine.unsqueeze(1), float("-inf"))

    def dense(rows: torch.Tensor) -> torch.Tensor:
        sim = q[rows] @ u.T
        sim[torch.arange(len(rows)), me[rows]] = float("-inf")
        return sim

    top, vals = certified_topk(scr, n, exact, dense)
    vals, order = vals.sort(dim=1, descending=True)
    return vals, top.gather(1, order)


def caption_words(caption: str) -> list[str]:
    """Lower-cased word tokens of a caption (Unicode word characters), each once."""
    return sorted(set(WORD.findall(caption.lower())))


def word_index(captions: list[str | None], codes: dict[str, SparseCodes], per_word: int = 12,
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
        z = codes_matrix(x)
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


__all__ = [
    "HIST_BINS",
    "LatentStats",
    "caption_words",
    "codes_matrix",
    "decoder_cosines",
    "latent_stats",
    "nearest_latents",
    "word_index",
]
