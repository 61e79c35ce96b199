"""What the latent table sorts by and flags: a support-aware score, low-support / below-null flags, and
the columns that are constant for a run and so not worth a column.

**Score** (the table's default sort and the choice of probe latents): the lower end of a two-sided
95% confidence interval of the latent's correlation c (matched c_ij for an aligned pair, the
same-index correlation otherwise) by Fisher's z-transform, taking the *co-firing support* s (rows on
which both sides fire) as the sample size:

    score = tanh(atanh(c') - z / sqrt(s - 3)),   c' = clip(c, -0.99, 0.99),   z = 1.96

and -1 where s <= 3 (no interval). The correlation of two sparse latents is carried by the rows where
they fire; rows where neither fires only pin the means, so treating the co-firing rows as the sample
is the conservative choice (a project choice: the paper ranks nothing). The clip keeps c = 1.000 on a
handful of rows (atanh = inf) from outranking everything: at c' = 0.99 the score is 0.60 on 4 rows,
0.85 on 5, 0.96 on 10, 0.98 on 50. A pair matched on 1 row of 5,400 therefore sorts to the bottom
instead of the top.

**Flags** (shown, never hidden): ``low support`` when s < ``low_support`` rows (default 5, the same
cut that ``dualsae align`` prints), ``≤ null`` when the alignment recorded a permutation-null threshold
and c does not exceed it (:mod:`dualsae.alignment.confidence`).

**Constant columns**: a numeric column whose finite values are all equal (within 1e-6), e.g.
cos(dec I, dec T) = 1 on every latent of a shared SAE, is listed under ``constant`` with its value
and not drawn as a column.
"""

from __future__ import annotations

import numpy as np

#: Fisher-z width of the interval (two-sided 95%), the correlation clip and the low-support cut.
SCORE_Z = 1.96
SCORE_CLIP = 0.99
LOW_SUPPORT = 5


def support_score(corr: np.ndarray, support: np.ndarray, z: float = SCORE_Z, clip: float = SCORE_CLIP) -> np.ndarray:
    """[m] lower confidence bound of ``corr`` [m] with ``support`` [m] co-firing rows as the sample
    size (module docstring); NaN where ``corr`` is NaN, -1 where support <= 3."""
    c = np.clip(np.asarray(corr, dtype=np.float64), -clip, clip)
    s = np.asarray(support, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        lb = np.tanh(np.arctanh(c) - z / np.sqrt(np.maximum(s - 3.0, 0.0)))
    lb = np.where(s > 3, lb, -1.0)
    return np.where(np.isnan(c), np.nan, lb)


def match_flags(corr: np.ndarray, support: np.ndarray, null_thr: np.ndarray, live: np.ndarray,
                low_support: int = LOW_SUPPORT) -> list[str]:
    """[m] flag text per latent ("" when none): ``low support`` (a live latent whose correlation rests
    on fewer than ``low_support`` co-firing rows) and ``≤ null`` (correlation not above its recorded
    permutation-null threshold)."""
    corr, support, null_thr = (np.asarray(a, dtype=np.float64) for a in (corr, support, null_thr))
    low = live & np.isfinite(corr) & (support < low_support)
    below = np.isfinite(null_thr) & np.isfinite(corr) & (corr <= null_thr)
    return [", ".join(f for f, on in (("low support", lo), ("≤ null", bn)) if on) for lo, bn in zip(low.tolist(), below.tolist())]


def constant_columns(columns: dict[str, np.ndarray], tol: float = 1e-6) -> dict[str, float]:
    """{name: value} of the columns whose finite values are all equal (and at least one is finite)."""
    out = {}
    for name, a in columns.items():
        v = np.asarray(a, dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v) > 1 and float(v.max() - v.min()) <= tol:
            out[name] = float(v[0])
    return out


__all__ = ["LOW_SUPPORT", "SCORE_CLIP", "SCORE_Z", "constant_columns", "match_flags", "support_score"]
