"""The assignment of paper eq. 6 (+ footnote 2): ``max tr(CP)`` over permutations, on the live x live
block of the coactivation correlation only (a rectangular assignment when the live counts differ;
the surplus live latents of the larger side stay unmatched and are reported as modality-only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from dualsae.alignment.confidence import arrays_json
from dualsae.alignment.sparse_assignment import Resolver, SparseSolveOptions, solve_pruned, solve_sparse
from dualsae.alignment.sparse_correlation import SparseCorrelation
from dualsae.core.errors import ConfigError, DataError

SOLVERS = ("auto", "scipy", "lapjv")
#: ``align --solver``: the dense solvers, ``dense`` (the best installed one), ``sparse`` (certified, any size).
ALIGN_SOLVERS = ("auto", "dense", "sparse", "scipy", "lapjv")
# solver="auto" solves densely up to this many live pairs (4,096 x 4,096: 128 MiB float64), sparsely above.
DENSE_SOLVE_ENTRIES = 4096 * 4096


def _lap_available() -> bool:
    try:
        import lap  # noqa: F401
    except ImportError:
        return False
    return hasattr(lap, "lapjvr")


def solve_assignment(score: np.ndarray, solver: str = "auto") -> tuple[np.ndarray, np.ndarray, float]:
    """Maximum-total assignment (eq. 6) on a dense score matrix ``score: [a, b]``.

    Returns ``(rows [K], cols [K], total)`` with K = min(a, b), rows increasing, every row and
    column used at most once, and ``total = score[rows, cols].sum()`` maximal.
    solver: ``lapjv`` (lapx's Jonker-Volgenant ``lapjvr``, rectangular without padding), ``scipy``
    (``linear_sum_assignment``) or ``auto`` (lapjv if lapx is installed, else scipy). Both are exact;
    with ties they may return different assignments of the same total.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"solver must be one of {', '.join(SOLVERS)}, found {solver!r}")
    score = np.asarray(score, dtype=np.float64)
    if score.ndim != 2:
        raise ConfigError(f"assignment needs a 2-D score matrix, found shape {list(score.shape)}")
    if not np.isfinite(score).all():
        raise DataError("assignment score matrix contains NaN or inf; dead latents must be removed first")
    if min(score.shape) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, 0.0
    use_lap = solver == "lapjv" or (solver == "auto" and _lap_available())
    if solver == "lapjv" and not _lap_available():
        raise ConfigError("solver 'lapjv' needs lapx >= 0.6 with lapjvr (pip install 'lapx>=0.6'); or use solver 'scipy'")
    if use_lap:
        import lap

        cost = np.ascontiguousarray(-score)
        _, rows, cols = lap.lapjvr(cost, extend_cost=score.shape[0] != score.shape[1], precision="float64")
    else:

        rows, cols = linear_sum_assignment(score, maximize=True)
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    rows, cols = rows[order], cols[order]
    return rows, cols, float(score[rows, cols].sum())


@dataclass
class Matching:
    """Result of eq. 6 on the live block, in original latent indices.

    image, text: [K] matched latents (image[a] <-> text[a]); corr: [K] their c_ij.
    live_image, live_text: live latents of each side; image_only / text_only: live but unmatched.
    """

    image: np.ndarray
    text: np.ndarray
    corr: np.ndarray
    live_image: np.ndarray
    live_text: np.ndarray
    image_only: np.ndarray
    text_only: np.ndarray
    total: float
    solver: str
    info: dict | None = None  # the sparse solver's candidates, rounds and certificate (None for a dense solve)

    @property
    def mean_corr(self) -> float | None:
        """Mean c_ij of the matched pairs (None when nothing matched: JSON has no NaN)."""
        return float(self.corr.mean()) if len(self.corr) else None


def match_latents(c: torch.Tensor | np.ndarray, live_i: Any, live_t: Any, solver: str = "auto") -> Matching:
    """Eq. 6 on the live block ``c: [n_I, n_T]`` whose rows/columns are latents ``live_i`` / ``live_t``."""
    c_np = c.detach().cpu().numpy() if isinstance(c, torch.Tensor) else np.asarray(c)
    li = np.asarray(live_i.cpu() if isinstance(live_i, torch.Tensor) else live_i, dtype=np.int64)
    lt = np.asarray(live_t.cpu() if isinstance(live_t, torch.Tensor) else live_t, dtype=np.int64)
    if c_np.shape != (len(li), len(lt)):
        raise ConfigError(f"correlation block has shape {list(c_np.shape)}, expected [{len(li)}, {len(lt)}] from the live lists")
    used = solver if solver != "auto" else ("lapjv" if _lap_available() else "scipy")
    rows, cols, total = solve_assignment(c_np, used)
    matched_i, matched_t = li[rows], lt[cols]
    return Matching(
        image=matched_i,
        text=matched_t,
        corr=c_np[rows, cols].astype(np.float64),
        live_image=li,
        live_text=lt,
        image_only=np.setdiff1d(li, matched_i),
        text_only=np.setdiff1d(lt, matched_t),
        total=total,
        solver=used,
    )


def pick_solver(solver: str, n_image: int, n_text: int) -> str:
    """The solver ``align`` uses: ``sparse`` or a dense one (``scipy`` / ``lapjv``) for ``solver`` in
    ALIGN_SOLVERS and a live block of ``n_image x n_text`` (auto: dense up to DENSE_SOLVE_ENTRIES)."""
    if solver not in ALIGN_SOLVERS:
        raise ConfigError(f"solver must be one of {', '.join(ALIGN_SOLVERS)}, found {solver!r}")
    if solver == "auto":
        solver = "dense" if n_image * n_text <= DENSE_SOLVE_ENTRIES else "sparse"
    if solver == "dense":
        solver = "lapjv" if _lap_available() else "scipy"
    return solver


def match_sparse(sc: SparseCorrelation, options: SparseSolveOptions = SparseSolveOptions()) -> Matching:
    """Eq. 6 over all live pairs of a sparse C (:func:`dualsae.alignment.sparse_assignment.solve_sparse`),
    certified optimal; ``Matching.info`` holds the certificate."""
    rows, cols, total, info = solve_sparse(sc, options)
    li, lt = sc.live_image, sc.live_text
    matched_i, matched_t = li[rows], lt[cols]
    return Matching(image=matched_i, text=matched_t, corr=sc.lookup(rows, cols), live_image=li, live_text=lt,
                    image_only=np.setdiff1d(li, matched_i), text_only=np.setdiff1d(lt, matched_t), total=total,
                    solver="sparse", info=info)


def match_pruned(sc: SparseCorrelation, resolve: Resolver, options: SparseSolveOptions = SparseSolveOptions()
                 ) -> tuple[Matching, SparseCorrelation]:
    """:func:`match_sparse` on a pruned C (:func:`dualsae.alignment.sparse_assignment.solve_pruned`): the
    matching, certified over all pairs, and C with the pairs resolved on the way listed (the matched ones among them)."""
    rows, cols, total, info, full = solve_pruned(sc, resolve, options)
    li, lt = full.live_image, full.live_text
    matched_i, matched_t = li[rows], lt[cols]
    return (Matching(image=matched_i, text=matched_t, corr=full.lookup(rows, cols), live_image=li, live_text=lt,
                     image_only=np.setdiff1d(li, matched_i), text_only=np.setdiff1d(lt, matched_t), total=total,
                     solver="sparse", info=info), full)


def matching_json(mt: Matching, confidence: Any = None) -> dict:
    """The matched lists of alignment.json / collapse.json (with the confidence arrays when measured)."""
    out = {
        "image": mt.image.tolist(),
        "text": mt.text.tolist(),
        "correlation": [round(float(x), 6) for x in mt.corr],
    }
    if confidence is not None:
        out.update(arrays_json(confidence))
    return out


__all__ = ["ALIGN_SOLVERS", "DENSE_SOLVE_ENTRIES", "SOLVERS", "Matching", "match_latents", "match_pruned", "match_sparse", "matching_json",
           "pick_solver", "solve_assignment"]
