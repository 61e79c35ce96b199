"""Automatic latent labels from caption words, and the concept agreement of a match, without an LLM.

A latent's *label* on one side is the few words that set the captions of its top rows apart from the
captions of the whole store: the weighted log-odds ratio with an informative Dirichlet prior of Monroe,
Colaresi & Quinn (2008, "Fightin' Words", eq. 22), with the store's own word counts as the prior.
For word w, with y_w its count in the latent's top captions (n tokens in all), Y_w its count in the
rest of the store (N tokens) and alpha_w = a0 * Y_w / N the prior (a0 tokens of prior strength):

    delta_w = log((y_w + alpha_w) / (n + a0 - y_w - alpha_w)) - log((Y_w + alpha_w) / (N + a0 - Y_w - alpha_w))
    z_w     = delta_w / sqrt(1 / (y_w + alpha_w) + 1 / (Y_w + alpha_w))

A word that is frequent everywhere ("face", "with") gets a small z; a word that is rare in the store but
common among the top captions a large one; the prior keeps a word seen once from winning on a tiny top set.
The label is the ``words`` words of largest z with z >= ``z_min`` (1.96: the one-sided 2.5% level of a
z-score), in that order; a latent whose top captions share nothing distinctive gets an empty label.

The *image side* of an aligned latent is the captions paired with its top-activating images, the *text
side* its top-activating captions. The *concept agreement* of a match is the cosine similarity of the two
sides' distinctive-word profiles (z_w over the words with z_w >= z_min, 0 elsewhere): 1 when both sides'
top rows are set apart by the same words in the same proportions, 0 when they share no distinctive word,
undefined (NaN) when a side has none. It is computed for
every latent with both sides live, whatever the run kind (for a shared SAE the two sides are one latent
on images and on captions).

Tokens: lower-cased runs of Unicode letters (digits and punctuation split words and are dropped), words
of one letter and the English stop words of :data:`STOP_WORDS` removed; each caption counts each word
once (a caption repeating a word is not more about it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp

TOKEN = re.compile(r"[^\W\d_]+", re.UNICODE)

#: Function words dropped before counting (a short general English list; nothing domain-specific).
STOP_WORDS = frozenset("""
a an and are as at be been but by for from has have he her his i in is it its of on or she that the their them
they this to was were will with without you your we our not no so than then there these those which who whom
what when where how into onto over under up down out off about above below between after before again very
can do does did done just also only other some such own same too s t
""".split())


def caption_tokens(caption: str | None) -> list[str]:
    """The distinct words of a caption (module docstring), sorted."""
    if not isinstance(caption, str):
        return []
    return sorted({w for w in TOKEN.findall(caption.lower()) if len(w) > 1 and w not in STOP_WORDS})


@dataclass
class Vocabulary:
    """The store's captions as a sparse [N, V] 0/1 incidence matrix over ``words`` [V], and each word's
    count over all captions ``counts`` [V]."""

    words: list[str]
    incidence: sp.csr_matrix
    counts: np.ndarray

    @classmethod
    def of(cls, captions: Sequence[str | None]) -> "Vocabulary":
        tokens = [caption_tokens(c) for c in captions]
        words = sorted({w for ws in tokens for w in ws})
        pos = {w: i for i, w in enumerate(words)}
        rows = np.repeat(np.arange(len(tokens)), [len(ws) for ws in tokens])
        cols = np.fromiter((pos[w] for ws in tokens for w in ws), dtype=np.int64, count=len(rows))
        inc = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(tokens), len(words)))
        return cls(words, inc, np.asarray(inc.sum(0)).ravel())


@dataclass
class SideLabels:
    """Per latent of one side: ``words`` (the label, best first), ``z`` (their z-scores) and the sparse
    [m, V] profile (z where z >= z_min, else 0) that :func:`agreement` compares."""

    words: list[list[str]]
    z: list[list[float]]
    profile: sp.csr_matrix


def _top_matrix(top_rows: Sequence[np.ndarray], n_rows: int) -> sp.csr_matrix:
    """[m, N] 0/1: latent j's top rows (positions into the store's rows)."""
    lens = [len(r) for r in top_rows]
    rows = np.repeat(np.arange(len(top_rows)), lens)
    cols = np.concatenate([np.asarray(r, dtype=np.int64) for r in top_rows]) if rows.size else np.zeros(0, np.int64)
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(top_rows), n_rows))


def side_labels(vocab: Vocabulary, top_rows: Sequence[np.ndarray], words: int = 3, z_min: float = 1.96,
                prior: float = 100.0) -> SideLabels:
    """Labels of every latent from the captions of its top rows (``top_rows[j]``: row positions into the
    captions ``vocab`` was built from). prior: a0, the prior's strength in tokens (module docstring).
    Works on the nonzero counts only: O(sum of the top rows' words), no [m, V] dense matrix."""
    m = len(top_rows)
    counts = (_top_matrix(top_rows, vocab.incidence.shape[0]) @ vocab.incidence).tocsr()  # [m, V] y_w
    counts.sum_duplicates()
    n = np.asarray(counts.sum(1)).ravel()  # tokens in each latent's top captions
    total = float(vocab.counts.sum())
    coo = counts.tocoo()
    y = coo.data
    rest = np.maximum(vocab.counts[coo.col] - y, 0.0)  # the rest of the store: its captions minus the top ones
    rest_total = np.maximum(total - n[coo.row], 1.0)
    alpha = prior * np.maximum(vocab.counts[coo.col], 1.0) / max(total, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        d_top = np.log((y + alpha) / np.maximum(n[coo.row] + prior - y - alpha, 1e-12))
        d_rest = np.log((rest + alpha) / np.maximum(rest_total + prior - rest - alpha, 1e-12))
        z = (d_top - d_rest) / np.sqrt(1.0 / (y + alpha) + 1.0 / (rest + alpha))
    z = np.nan_to_num(z)
    profile = sp.csr_matrix((np.where(z >= z_min, z, 0.0), (coo.row, coo.col)), shape=counts.shape)
    profile.eliminate_zeros()
    # Best words per latent: sort the entries by (latent, -z, word) once.
    order = np.lexsort((coo.col, -z, coo.row))
    r_sorted, c_sorted, z_sorted = coo.row[order], coo.col[order], z[order]
    starts = np.searchsorted(r_sorted, np.arange(m + 1))
    out_w: list[list[str]] = []
    out_z: list[list[float]] = []
    for j in range(m):
        sl = slice(starts[j], min(starts[j + 1], starts[j] + words))
        keep = z_sorted[sl] >= z_min
        out_w.append([vocab.words[c] for c in c_sorted[sl][keep]])
        out_z.append([round(float(v), 2) for v in z_sorted[sl][keep]])
    return SideLabels(out_w, out_z, profile)


def agreement(image: SideLabels, text: SideLabels) -> np.ndarray:
    """[m] concept agreement: cosine of the two sides' profiles (module docstring); NaN where a side
    has no distinctive word."""
    a, b = image.profile, text.profile
    dot = np.asarray(a.multiply(b).sum(1)).ravel()
    na = np.sqrt(np.asarray(a.multiply(a).sum(1)).ravel())
    nb = np.sqrt(np.asarray(b.multiply(b).sum(1)).ravel())
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((na > 0) & (nb > 0), dot / (na * nb), np.nan)


__all__ = ["STOP_WORDS", "SideLabels", "Vocabulary", "agreement", "caption_tokens", "side_labels"]
