"""How strongly to steer: an alpha sweep of :func:`dualsae.use.steering.steer` on a store, the default
strength chosen from the data, and a warning for latents that live in one modality only.

The sweep (:func:`strength_sweep`): for source rows on which latent j is inactive, and each alpha of a
grid, the steered embeddings' n nearest rows of the same modality (the sources left out) and

* ``share``:  the share of those neighbours on which j fires (the concept, :func:`concept_share`);
* ``cosine``: the mean cosine between a steered embedding and its source (how much of it is kept);
* ``fires``:  the share of steered embeddings on which the SAE itself fires j.

The default strength (:func:`auto_alpha`, ``dualsae steer --alpha auto``): the smallest alpha of a
fine geometric grid (:data:`CALIBRATION_ALPHAS`: 1/8 to 16 in steps of 2^(1/4)) at which the concept
is the majority of the steered sources' neighbours: ``share >= TARGET_SHARE`` (0.5), found by bisection
on the grid (the share grows with alpha; about 5 neighbour searches). Why this target: it is what a
person sees ("most of the nearest images now hold the concept"), it needs no labels, and it adapts to
the latent: measured on emoji (a 512 + 512 aligned pair, 10 epochs; 20 matched latents, 32 test
sources each, 10 neighbours; README "Steering strength") alpha = 1 gives shares of 0.01-0.44
(median 0.2); the auto alpha is 1.19-3.36 (median 2.0), where the share is 0.52-0.68 and the steered
embedding keeps a cosine of 0.26-0.62 to its source; a rare latent (3 rows) never gets there (0.16 at
alpha = 8: no alpha is returned and the CLI says so). A first candidate, the smallest alpha at which the SAE fires j on the steered
embedding at its median activation, was rejected: it is reached at alpha = 0.12-0.21, where the share
is still that of the unsteered source (the encoder picks the direction up long before the neighbours do).

:func:`modality_warning`: an aligned latent left unmatched (alive in one SAE only: ``alignment.json``
``unmatched``), or a latent that fires on no row of the other modality, is steered along a direction
no caption (or no image) expresses; the CLI and the report say so.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dualsae.core.codes import SparseCodes
from dualsae.core.errors import ConfigError, DataError
from dualsae.core.modalities import MODALITIES
from dualsae.store.paired import PairedEmbeddings
from dualsae.use.steering import concept_share, latent_fires, steer
from dualsae.use.translation import latents_for, nearest_rows

#: The alphas a sweep shows by default.
SWEEP_ALPHAS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: The grid :func:`auto_alpha` searches: 2^(k/4) for k = -12..16 (1/8 to 16).
CALIBRATION_ALPHAS: tuple[float, ...] = tuple(float(2.0 ** (k / 4)) for k in range(-12, 17))
#: Share of the steered sources' neighbours that must hold the concept at the auto alpha.
TARGET_SHARE = 0.5


class SweepRow(NamedTuple):
    """One alpha of a sweep (module docstring): share, cosine and fires over the sources."""

    alpha: float
    share: float
    cosine: float
    fires: float


class Sweep(NamedTuple):
    """latent, modality; concept_rows: rows of the gallery where it fires; target: the share
    :func:`auto_alpha` aims at; auto: the chosen alpha (None when no grid value reaches the target);
    sources: absolute rows steered; rows: one :class:`SweepRow` per alpha, increasing."""

    latent: int
    modality: str
    concept_rows: int
    target: float
    auto: float | None
    sources: np.ndarray
    rows: list[SweepRow]

    def to_json(self) -> dict:
        return {"latent": self.latent, "modality": self.modality, "concept_rows": self.concept_rows, "target_share": self.target,
                "auto_alpha": self.auto, "sources": self.sources.tolist(), "rows": [r._asdict() for r in self.rows]}


def latent_activation(codes: SparseCodes, latent: int) -> np.ndarray:
    """[N] float64: the value of ``latent`` in each row of ``codes`` ([N, w]), 0 where inactive."""
    hit = (codes.indices == latent) & (codes.values != 0)
    return (codes.values.double() * hit).sum(1).cpu().numpy()


class _Neighbourhood(NamedTuple):
    """What a steered point is compared with: the gallery, the concept by absolute row, the sources."""

    gallery: PairedEmbeddings
    concept: np.ndarray
    src_rows: np.ndarray
    n: int


@torch.no_grad()
def _measure(pair, x: torch.Tensor, latent: int, alpha: float, modality: str, where: _Neighbourhood,
             scale: float | None) -> SweepRow:
    steered = steer(pair, x, latent, alpha, modality, scale=scale)
    _, near = nearest_rows(steered, where.gallery, modality, n=where.n, exclude=where.src_rows)
    fires = latent_activation(latents_for(pair, steered, modality), latent) != 0
    return SweepRow(float(alpha), concept_share(near, where.concept).overall,
                    float(F.cosine_similarity(steered, x, dim=1).mean()), float(fires.mean()))


def auto_alpha(measure, target: float = TARGET_SHARE, grid: Sequence[float] = CALIBRATION_ALPHAS) -> tuple[float | None, list[SweepRow]]:
    """The smallest alpha of ``grid`` whose ``measure(alpha).share`` reaches ``target``, by bisection
    (the share grows with alpha); None when the largest does not. Returns (alpha, the rows measured)."""
    grid = sorted(float(a) for a in grid)
    seen: dict[float, SweepRow] = {}

    def share(i: int) -> float:
        if grid[i] not in seen:
            seen[grid[i]] = measure(grid[i])
        return seen[grid[i]].share

    lo, hi = 0, len(grid) - 1
    if share(hi) < target:
        return None, list(seen.values())
    while lo < hi:  # invariant: share(hi) >= target
        mid = (lo + hi) // 2
        if share(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return grid[hi], list(seen.values())


def pick_sources(fires: np.ndarray, n_sources: int, seed: int = 0) -> np.ndarray:
    """[<= n_sources] sorted positions where the latent is inactive, drawn with ``seed``."""
    candidates = np.flatnonzero(~np.asarray(fires, dtype=bool))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, size=min(n_sources, len(candidates)), replace=False))


@torch.no_grad()
def strength_sweep(pair, gallery: PairedEmbeddings, latent: int, modality: str = "image", *,
                   alphas: Sequence[float] = SWEEP_ALPHAS, sources: np.ndarray | None = None, n_sources: int = 32,
                   n: int = 10, seed: int = 0, scale: float | None = None, codes: SparseCodes | None = None,
                   target: float = TARGET_SHARE, auto: bool = True) -> Sweep:
    """Sweep alpha for ``latent`` on the rows of ``gallery`` (module docstring).

    sources: positions in ``gallery`` to steer (default ``n_sources`` random rows where the latent is
    inactive); n: neighbours per source; scale: as :func:`steer` (None: each row's norm); codes: the
    gallery's codes in ``modality`` ([gallery.n, w], computed when not given); auto: also find
    :func:`auto_alpha` (its alpha joins the rows)."""
    gallery.require(modality, "steering sweep")
    if not 0 <= latent < pair.sae_for(modality).m:
        raise ConfigError(f"latent must be in [0, {pair.sae_for(modality).m}) for the {modality} SAE, found {latent}")
    codes = latents_for(pair, gallery, modality) if codes is None else codes
    fires = latent_fires(codes, latent)
    concept = np.zeros(gallery.n_total, dtype=bool)  # by absolute row, as nearest_rows returns them
    concept[gallery.rows_of(np.flatnonzero(fires))] = True
    pos = pick_sources(fires, n_sources, seed) if sources is None else np.asarray(sources, dtype=np.int64)
    if len(pos) == 0:
        raise DataError(f"{gallery.root}: latent {latent} fires on every {modality} row; no source without the concept")
    where = _Neighbourhood(gallery, concept, gallery.rows_of(pos), n)
    x = gallery.read(modality, pos)

    def measure(alpha: float) -> SweepRow:
        return _measure(pair, x, latent, alpha, modality, where, scale)

    chosen, probed = auto_alpha(measure, target) if auto else (None, [])
    rows = {r.alpha: r for r in probed if r.alpha == chosen}
    for alpha in map(float, alphas):
        rows.setdefault(alpha, measure(alpha))
    return Sweep(latent, modality, int(fires.sum()), target, chosen, where.src_rows, [rows[a] for a in sorted(rows)])


def sweep_lines(sweep: Sweep, indent: str = "  ") -> list[str]:
    """The sweep as a small table (the chosen alpha marked with '<- auto')."""
    lines = [f"{indent}{'alpha':>7}  {'concept share':>13}  {'cos to source':>13}  {'SAE fires J':>11}"]
    for r in sweep.rows:
        mark = "  <- auto" if sweep.auto is not None and r.alpha == sweep.auto else ""
        lines.append(f"{indent}{r.alpha:>7.3g}  {r.share:>13.3f}  {r.cosine:>13.3f}  {r.fires:>11.2f}{mark}")
    n_src = len(sweep.sources)
    if sweep.auto is None:
        note = (f"no alpha up to {CALIBRATION_ALPHAS[-1]:g} makes the concept ({sweep.concept_rows:,} rows) "
                f"{sweep.target:.0%} of the neighbours of {n_src} steered {sweep.modality}s")
    else:
        note = (f"auto alpha {sweep.auto:.3g}: the smallest (grid 2^(k/4)) at which {sweep.target:.0%} of the neighbours of "
                f"{n_src} steered {sweep.modality}s hold the concept ({sweep.concept_rows:,} rows)")
    return lines + [f"{indent}{note}"]


def modality_warning(pair, latent: int, modality: str, fired_other: int | None = None, fired_self: int | None = None) -> str | None:
    """Why steering ``latent`` in ``modality`` may not carry a cross-modal concept, or None.

    ``fired_self`` = 0 (rows of ``modality`` on which the latent fires, when measured): dead on the
    data, no concept to steer toward. An aligned pair's ``alignment.json`` lists latents alive in one
    SAE only (``unmatched``); for any pair, ``fired_other`` (rows of the other modality on which the
    latent fires, when measured) = 0 means no row of the other modality expresses it."""
    other = next(m for m in MODALITIES if m != modality)
    if fired_self == 0:
        return f"latent {latent} fires on no {modality} row of the data (dead here): there is no concept to steer toward"
    un = (getattr(pair, "alignment", None) or {}).get("unmatched") or {}
    side = "image" if latent in set(un.get("image_only", [])) else "text" if latent in set(un.get("text_only_shared", [])) else None
    if side is not None:
        other_side = "text" if side == "image" else "image"
        why = (f"steering {modality}s along it follows a concept no {other_side} latent shares" if modality == side else
               f"its {modality} decoder column belongs to no live matched {modality} latent, so steering follows no learnt concept")
        return f"latent {latent} is matched in one modality only: live in the {side} SAE, unmatched in the {other_side} SAE ({why})"
    if fired_other == 0:
        return f"latent {latent} fires on no {other} row of the data: it is {modality}-only, so no {other} expresses the concept steered"
    return None


def sweep_panel(pair, rows: PairedEmbeddings, latent: int, codes: SparseCodes, *, scale: float | None = None,
                fired_other: int | None = None, alphas: Sequence[float] = SWEEP_ALPHAS, n: int = 6) -> dict:
    """The report's latent-page panel: the image sweep of ``latent`` over the report's rows (codes: their
    image codes [rows.n, w]) with its auto alpha, and :func:`modality_warning` (``fired_other``: text rows
    on which it fires). JSON-ready; ``{"error": why}`` when no sweep can be made (the latent fires on
    every row or on none)."""
    warning = modality_warning(pair, latent, "image", fired_other)
    try:
        sweep = strength_sweep(pair, rows, latent, "image", alphas=alphas, codes=codes, scale=scale, n=n)
    except DataError as e:
        return {"error": str(e), "warning": warning}
    doc = sweep.to_json()
    doc.pop("sources")  # positions of no use on the page
    return {**doc, "warning": warning, "note": sweep_lines(sweep, "")[-1]}


__all__ = ["CALIBRATION_ALPHAS", "SWEEP_ALPHAS", "Sweep", "SweepRow", "TARGET_SHARE", "auto_alpha", "latent_activation",
           "modality_warning", "pick_sources", "strength_sweep", "sweep_lines", "sweep_panel"]
