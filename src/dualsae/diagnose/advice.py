"""Which regime of the paper's Fig. 5 a store's embeddings are in, before any long training.

Three measurements on the store (or a row subsample of it), each reusing the project's own code:

1. **Modality gap** (App. C, Prop. 2): on L2-normalised rows, the distance between the image and
   text centroids, the mean cosine of matched pairs and of randomly re-paired rows. Prop. 2: a gap
   (E[cos(x, y)] < 1) implies some cross-modal feature heterogeneity. Reported, not used for the
   placement: synthetic and real stores put very different energy outside the shared concepts, so
   the gap has no common scale with the Fig. 5 axis.
2. **Quick shared SAE -> collapse rate** (App. F.2): one small shared TopK SAE trained briefly
   (:func:`dualsae.training.trainer.train`), then eq. 5-6 (:func:`dualsae.alignment.post_hoc.align`): the share of live
   latents matched to themselves, ``P(i) = i``. Fig. 5a / claim (b): high when phi_i and psi_i are
   close, near 0 when they are far apart.
3. **Quick specific pair -> heterogeneity** (Sec. 3, Fig. 2): two small modality-specific SAEs,
   aligned post hoc (eqs. 5-7), and the cosine distance ``1 - cos(phi_i, psi_j)`` of matched decoder
   directions (:func:`dualsae.evaluation.heterogeneity.heterogeneity`), summarised as the median over the
   best-correlated ``top_fraction`` of matched pairs (the Fig. 2 reading: high-c pairs are the ones
   most likely to be one concept).

**Placement on the Fig. 5 axis.** A quick SAE is smaller and shorter-trained than the paper's, so its
statistics are not the reproduction's; they are mapped to a distance 1 - alpha through the quick
diagnostic's *own* curve, measured once on synthetic stores of known distance (:func:`calibrate`,
``dualsae diagnose --calibrate FILE``) and shipped as ``diagnose_calibration.json`` beside this
module. Each statistic is inverted by linear interpolation of the mean calibration curve; where the
curve is flat the estimate is an interval. The regime boundaries are the crossing distances of the
committed 3-seed Fig. 5 reproduction (``docs/synthetic/results.json``, claim (a)): specific SAEs
have lower feature-recovery error beyond 0.114 and lower reconstruction error beyond 0.172.

The placement rests on the collapse rate (on the calibration stores it separates distance 0.1 from
0.7 by a factor of about 20, heterogeneity only by about 1.3); heterogeneity is printed beside it as
a second opinion and disagreement is stated.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dualsae.store.paired import PairedEmbeddings
from dualsae.core.errors import ConfigError, DataError
from dualsae.training.config import TrainConfig
from dualsae.training.trainer import train
from dualsae.alignment.post_hoc import align
from dualsae.evaluation.heterogeneity import heterogeneity
from dualsae.files.atomic import atomic_path
from dualsae.files.atomic import write_json
from dualsae.store.generator import SynthConfig, write_synthetic
from dualsae.files.jsonfiles import read_json_object
import shutil

DIAGNOSE_FORMAT = "dualsae.diagnose/1"
CALIBRATION_FORMAT = "dualsae.diagnose-calibration/1"
CALIBRATION_FILE = Path(__file__).with_name("diagnose_calibration.json")

#: Crossing distances of the committed full Fig. 5 reproduction (docs/synthetic/results.json,
#: claims[0]: 3 seeds, paper settings, 10 epochs): modality-specific SAEs have the lower
#: feature-recovery error beyond the first and the lower reconstruction error beyond the second.
CROSSING_FEATURE_RECOVERY = 0.1141
CROSSING_RECONSTRUCTION = 0.1718

#: Fig. 5 of the committed reproduction (same source, 3-seed means): distance -> (shared, specific)
#: reconstruction error and feature-recovery error. Printed next to the recommendation.
FIG5_REFERENCE: dict[float, dict[str, tuple[float, float]]] = {
    0.0: {"reconstruction": (6.3842, 8.2389), "feature_recovery": (0.2085, 0.2480)},
    0.1: {"reconstruction": (7.3523, 8.2626), "feature_recovery": (0.2435, 0.2489)},
    0.2: {"reconstruction": (8.6332, 8.2758), "feature_recovery": (0.2814, 0.2488)},
    0.3: {"reconstruction": (9.9563, 8.2427), "feature_recovery": (0.3140, 0.2486)},
    0.5: {"reconstruction": (11.6079, 8.2203), "feature_recovery": (0.3371, 0.2473)},
    0.7: {"reconstruction": (11.6470, 8.1988), "feature_recovery": (0.3466, 0.2483)},
    1.0: {"reconstruction": (11.5912, 8.2218), "feature_recovery": (0.3504, 0.2486)},
}

REGIMES = ("shared ahead", "crossover", "specific ahead")


@dataclass(frozen=True)
class QuickConfig:
    """Sizes of the quick SAEs (a ``None`` is resolved from the store by :meth:`resolve`).

    rows: at most this many pairs, drawn at random (seeded), train and measure every statistic.
    latents: m of the quick shared SAE (each specific SAE gets m/2); default: the largest power of
        two <= rows/4, at most 1024. k: TopK K. steps: target optimiser steps of each training
        (epochs = ceil(steps * batch_size / rows)); epochs, when set, wins. batch_size: pairs per step.
    top_fraction: share of matched pairs, by decreasing correlation, whose median cosine distance is
        the heterogeneity statistic. seed: seeds the subsample and both trainings.
    Training otherwise follows the App. E.2 protocol (``TrainConfig.from_preset('synthetic')``).
    """

    rows: int = 16_384
    latents: int | None = None
    k: int = 16
    steps: int = 64
    epochs: int | None = None
    batch_size: int = 256
    top_fraction: float = 0.1
    seed: int = 0

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
        epochs = self.epochs if self.epochs is not None else max(1, math.ceil(self.steps * self.batch_size / rows))
        return replace(self, rows=rows, latents=latents, epochs=epochs)


#: The synthetic problem the calibration runs on: App. E.2's generator on a reduced problem with its
#: ratios kept (d = 64, n = 8d concepts split 2 : 1 : 1, 20.48 active concepts per pair as in the
#: paper, eps_max raised with 1/sqrt(d) as for the demo's reduced problem), 8,192 pairs.
CALIBRATION_SYNTH = dict(d=64, n_shared=256, n_image=128, n_text=128, sparsity=1 - 20.48 / 512, eps_max=0.5,
                         n_train=6_144, n_eval=2_048)
CALIBRATION_DISTANCES = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
CALIBRATION_SEEDS = (0,)


# ====================================================================== measurements
def _subsample(store: PairedEmbeddings, rows: int, seed: int) -> PairedEmbeddings:
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
    unit = lambda t: t.to(torch.float64) / t.to(torch.float64).norm(dim=1, keepdim=True).clamp_min(1e-12)  # noqa: E731
    for s in range(0, store.n, batch_size):
        pos = np.arange(s, min(s + batch_size, store.n))
        x, y, y_r = unit(store.read("image", pos)), unit(store.read("text", pos)), unit(store.read("text", perm[pos]))
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


def _train_quick(store: PairedEmbeddings, q: QuickConfig, method: str, device: str, progress: bool):

    cfg = TrainConfig.from_preset("synthetic", method=method, latents=q.latents, k=q.k, epochs=q.epochs,
                                  batch_size=q.batch_size, seed=q.seed)
    return train(store, cfg, None, device=device, progress=progress)


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


# ====================================================================== calibration and placement
@dataclass
class Calibration:
    """The quick diagnostic's statistics on synthetic stores of known distance (``calibrate``).

    distances: grid of 1 - alpha; collapse / heterogeneity: [len(distances)] means over seeds;
    per_seed: the raw rows; quick: the QuickConfig used; source: how the table was made.
    """

    distances: np.ndarray
    collapse: np.ndarray
    heterogeneity: np.ndarray
    quick: dict
    per_seed: list[dict]
    source: dict
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path = CALIBRATION_FILE) -> "Calibration":

        data = read_json_object(path, error=DataError)
        if data.get("format") != CALIBRATION_FORMAT:
            raise DataError(f"{path}: field 'format' must be {CALIBRATION_FORMAT!r}, found {data.get('format')!r}")
        try:
            curve = data["curve"]
            d = np.array([r["distance"] for r in curve], dtype=np.float64)
            c = np.array([r["collapse_rate"] for r in curve], dtype=np.float64)
            h = np.array([r["median_top_distance"] for r in curve], dtype=np.float64)
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}: field 'curve' must be a list of rows with distance, collapse_rate, median_top_distance ({e})") from None
        if len(d) < 2 or np.any(np.diff(d) <= 0):
            raise DataError(f"{path}: field 'curve' must hold >= 2 rows with increasing distance, found {d.tolist()}")
        return cls(d, c, h, data.get("quick", {}), data.get("per_seed", []), data.get("source", {}), Path(path))


def invert_curve(distances: np.ndarray, values: np.ndarray, v: float) -> dict:
    """Distances at which a piecewise-linear calibration curve takes the value ``v``.

    Returns ``{"estimate", "low", "high", "clipped"}``: all crossings of the curve with the level v
    (several where it is flat or not monotone) span [low, high], the estimate is their midpoint;
    beyond the curve's range the nearest end(s) with ``clipped`` = "below" / "above" the range.
    """
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    hits: list[float] = []
    for a in range(len(d) - 1):
        y0, y1 = y[a], y[a + 1]
        if y0 == y1:
            if y0 == v:
                hits += [d[a], d[a + 1]]
        elif min(y0, y1) <= v <= max(y0, y1):
            hits.append(d[a] + (v - y0) / (y1 - y0) * (d[a + 1] - d[a]))
    if hits:
        lo, hi = float(min(hits)), float(max(hits))
        return {"estimate": (lo + hi) / 2, "low": lo, "high": hi, "clipped": None}
    # v is outside the curve's range: the grid points where the curve comes closest.
    closest = np.flatnonzero(np.abs(y - v) == np.abs(y - v).min())
    lo, hi = float(d[closest].min()), float(d[closest].max())
    return {"estimate": (lo + hi) / 2, "low": lo, "high": hi, "clipped": "above" if v > y.max() else "below"}


def regime_of(distance: float) -> str:
    """Fig. 5 regime of a cosine distance 1 - alpha (boundaries: :data:`CROSSING_FEATURE_RECOVERY`,
    :data:`CROSSING_RECONSTRUCTION`)."""
    if distance < CROSSING_FEATURE_RECOVERY:
        return REGIMES[0]
    if distance < CROSSING_RECONSTRUCTION:
        return REGIMES[1]
    return REGIMES[2]


def _regimes_spanned(lo: float, hi: float) -> list[str]:
    return sorted({regime_of(lo), regime_of(hi), *([REGIMES[1]] if regime_of(lo) != regime_of(hi) else [])},
                  key=REGIMES.index)


def _nearest_reference(distance: float) -> tuple[float, dict]:
    key = min(FIG5_REFERENCE, key=lambda k: abs(k - distance))
    return key, FIG5_REFERENCE[key]


RECOMMENDATIONS = {
    "shared ahead": "one shared SAE: at this distance the shared SAE reconstructs better and recovers features at least "
                    "as well as modality-specific SAEs (Fig. 5), and its latents are cross-modal by construction",
    "crossover": "modality-specific SAEs + post-hoc alignment if feature recovery matters most (they recover features "
                 "better from distance 0.114), a shared SAE if reconstruction matters most (it reconstructs better up "
                 "to 0.172); the two are close here",
    "specific ahead": "modality-specific SAEs + post-hoc alignment (dualsae train --method specific, then dualsae align): "
                      "at this distance the shared SAE collapses image and text features into one direction and loses "
                      "on both reconstruction and feature recovery (Fig. 5)",
}

#: When the evidence spans regimes: the asymmetry of the committed Fig. 5 numbers decides.
UNCERTAIN_ADVICE = ("the estimate spans regimes; modality-specific SAEs + post-hoc alignment is the safer choice: at "
                    "distance 0 they lose {lose:.4f} feature-recovery error to the shared SAE ({s0:.4f} vs {p0:.4f}), "
                    "at distance 1 the shared SAE loses {gain:.4f} ({s1:.4f} vs {p1:.4f})")


def place(collapse_rate: float | None, heterogeneity_value: float | None, calibration: Calibration) -> dict:
    """Map the two quick statistics to distances on the Fig. 5 axis, a regime and a recommendation."""
    out: dict[str, Any] = {"by_collapse": None, "by_heterogeneity": None}
    if collapse_rate is not None:
        out["by_collapse"] = invert_curve(calibration.distances, calibration.collapse, collapse_rate)
    if heterogeneity_value is not None:
        out["by_heterogeneity"] = invert_curve(calibration.distances, calibration.heterogeneity, heterogeneity_value)
    primary = out["by_collapse"] or out["by_heterogeneity"]
    if primary is None:
        raise ConfigError("diagnose: neither the collapse rate nor the heterogeneity could be measured")
    out["based_on"] = "collapse rate" if out["by_collapse"] else "heterogeneity"
    spanned = _regimes_spanned(primary["low"], primary["high"])
    out["estimate"] = primary["estimate"]
    out["interval"] = [primary["low"], primary["high"]]
    out["regimes_spanned"] = spanned
    out["agree"] = None
    if out["by_collapse"] and out["by_heterogeneity"]:
        h = out["by_heterogeneity"]
        out["agree"] = bool(set(_regimes_spanned(h["low"], h["high"])) & set(spanned))
    ref0, ref1 = FIG5_REFERENCE[0.0]["feature_recovery"], FIG5_REFERENCE[1.0]["feature_recovery"]
    if len(spanned) == 1:
        out["regime"] = spanned[0]
        out["recommendation"] = RECOMMENDATIONS[spanned[0]]
    else:
        out["regime"] = " / ".join(spanned)
        out["recommendation"] = "modality-specific SAEs + post-hoc alignment: " + UNCERTAIN_ADVICE.format(
            lose=ref0[1] - ref0[0], s0=ref0[1], p0=ref0[0], gain=ref1[0] - ref1[1], s1=ref1[0], p1=ref1[1])
    key, ref = _nearest_reference(primary["estimate"])
    out["fig5_at_nearest_distance"] = {"distance": key, "shared": {k: v[0] for k, v in ref.items()},
                                       "specific": {k: v[1] for k, v in ref.items()}}
    return out


# ====================================================================== the diagnostic
def diagnose(
    store: PairedEmbeddings,
    quick: QuickConfig = QuickConfig(),
    calibration: Calibration | None = None,
    *,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Measure the modality gap, the quick collapse rate and heterogeneity, and place the store on the
    Fig. 5 axis. ``store`` must hold paired rows; returns the ``diagnose.json`` dict."""
    store.require_pairs("the diagnostic")
    calibration = calibration or Calibration.load()
    q = quick.resolve(store.n)
    sub = _subsample(store, q.rows, q.seed)
    say = log or (lambda s: None)
    t0 = time.perf_counter()
    say(f"modality gap on {sub.n:,} pairs")
    gap = modality_gap(sub, seed=q.seed)
    say(f"quick shared SAE (m={q.latents}, k={q.k}, {q.epochs} epochs of {sub.n:,} pairs)")
    collapse = quick_collapse(sub, q, device, progress)
    say(f"quick specific SAEs (m={q.latents // 2} each) + post-hoc alignment")
    het = quick_heterogeneity(sub, q, device, progress)
    report = {
        "format": DIAGNOSE_FORMAT,
        "store": str(store.root) if store.root is not None else None,
        "pairs": store.n, "d": store.d,
        "quick": asdict(q),
        "modality_gap": gap,
        "collapse": collapse,
        "heterogeneity": het,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return replace_calibration(report, calibration)


def replace_calibration(report: dict, calibration: Calibration) -> dict:
    """The report with its placement (and calibration section and notes) computed from ``calibration``:
    what :func:`diagnose` does after measuring, so a saved ``diagnose.json`` can be placed again with
    another calibration table without training anything."""
    try:
        q, col, het = report["quick"], report["collapse"]["collapse_rate"], report["heterogeneity"]["median_top_distance"]
    except (KeyError, TypeError) as e:
        raise DataError(f"diagnose report: missing field {e}; expected a diagnose.json written by 'dualsae diagnose'") from None
    notes = []
    cq = calibration.quick
    for key in ("latents", "k", "epochs", "batch_size", "top_fraction"):
        if key in cq and key in q and cq[key] != q[key]:
            notes.append(f"quick {key} = {q[key]} differs from the calibration's {cq[key]}: the mapping to distance is approximate")
    synth_d = calibration.source.get("synth", {}).get("d")
    if synth_d is not None and synth_d != report.get("d"):
        notes.append(f"the calibration stores have d = {synth_d}, this store d = {report.get('d')}")
    return {
        **report,
        "placement": place(col, het, calibration),
        "calibration": {"file": str(calibration.path) if calibration.path else None,
                        "command": calibration.source.get("command"),
                        "distances": calibration.distances.tolist(),
                        "collapse_rate": calibration.collapse.tolist(),
                        "median_top_distance": calibration.heterogeneity.tolist()},
        "crossings": {"feature_recovery": CROSSING_FEATURE_RECOVERY, "reconstruction": CROSSING_RECONSTRUCTION,
                      "source": "docs/synthetic/results.json, claim (a) (full Fig. 5 reproduction, 3 seeds)"},
        "notes": notes,
    }


def _fmt_range(r: dict) -> str:
    if r is None:
        return "-"
    if r["clipped"] is not None:
        side = {"above": "above", "below": "below"}[r["clipped"]]
        where = f"{r['low']:.2f}" if r["low"] == r["high"] else f"{r['low']:.2f}-{r['high']:.2f}"
        return f"{where} (value {side} the calibration curve's range)"
    if abs(r["high"] - r["low"]) < 1e-9:
        return f"{r['estimate']:.3f}"
    return f"{r['estimate']:.3f} (interval {r['low']:.3f}-{r['high']:.3f})"


def format_report(rep: dict) -> str:
    """The terminal report: every number the placement rests on."""
    q, gap, col, het, pl, cal = (rep[k] for k in ("quick", "modality_gap", "collapse", "heterogeneity", "placement", "calibration"))
    lines = [
        f"dualsae diagnose: {rep['store']}  ({rep['pairs']:,} pairs, d = {rep['d']})",
        f"quick SAEs: {q['rows']:,} pairs (seed {q['seed']}), shared m = {q['latents']}, specific m = {q['latents'] // 2} each, "
        f"k = {q['k']}, {q['epochs']} epochs of batch {q['batch_size']}",
        "",
        "modality gap (L2-normalised rows; reported, not used for the placement)",
        f"  centroid distance ||mean(x) - mean(y)||   {gap['centroid_distance']:.4f}",
        f"  mean cosine, matched pairs               {gap['mean_pair_cosine']:.4f}",
        f"  mean cosine, random pairs                {gap['mean_random_pair_cosine']:.4f}",
        "",
        "quick shared SAE: App. F.2 collapse rate",
        f"  {col['collapsed']:,} of {col['live']:,} live latents matched to themselves: collapse rate {col['collapse_rate']:.4f}"
        f"  (mean matched c {col['mean_matched_correlation']:.3f}; {col['seconds']:.0f} s)",
        "quick specific SAEs + post-hoc alignment: Fig. 2 heterogeneity",
        f"  {het['matched']:,} matched pairs, mean c {het['mean_matched_correlation']:.3f}; top {het['top_fraction']:.0%} "
        f"({het['top_pairs']} pairs, c >= {het['top_min_correlation']:.3f}): median cosine distance {het['median_top_distance']:.4f}"
        f"  ({het['seconds']:.0f} s)",
        "  all live pairs by c bin (median distance): " + ", ".join(
            f"{b['bin']} {b['median']:.3f} (n={b['count']:,})" for b in het["bins"] if b["count"]),
        "",
        "calibration (the same quick diagnostic on synthetic stores of known distance 1 - alpha)",
        "  distance     " + " ".join(f"{d:>6.2f}" for d in cal["distances"]),
        "  collapse     " + " ".join(f"{v:>6.3f}" for v in cal["collapse_rate"]),
        "  heterog.     " + " ".join(f"{v:>6.3f}" for v in cal["median_top_distance"]),
        "",
        "placement on the Fig. 5 axis (cosine distance 1 - alpha)",
        f"  from the collapse rate:   {_fmt_range(pl['by_collapse'])}",
        f"  from the heterogeneity:   {_fmt_range(pl['by_heterogeneity'])}",
        f"  regime boundaries: specific SAEs ahead on feature recovery beyond {rep['crossings']['feature_recovery']}, "
        f"on reconstruction beyond {rep['crossings']['reconstruction']} ({rep['crossings']['source']})",
    ]
    if pl["agree"] is False:
        lines.append("  the two indicators place the store in different regimes; the placement uses the collapse rate")
    ref = pl["fig5_at_nearest_distance"]
    lines += [
        f"  regime: {pl['regime'].upper()} (estimated distance {pl['estimate']:.3f}, from the {pl['based_on']})",
        f"  Fig. 5 at distance {ref['distance']:g}: reconstruction shared {ref['shared']['reconstruction']:.4f} vs specific "
        f"{ref['specific']['reconstruction']:.4f}; feature recovery shared {ref['shared']['feature_recovery']:.4f} vs "
        f"specific {ref['specific']['feature_recovery']:.4f}",
        f"recommendation: {pl['recommendation']}",
    ]
    lines += [f"note: {n}" for n in rep["notes"]]
    return "\n".join(lines)


def plot_placement(rep: dict, path: str | Path) -> None:
    """Two panels on the Fig. 5 axis: the calibration curves (collapse rate, heterogeneity) against
    distance, the store's measured values as horizontal lines, its estimated distances marked, and
    the three regimes shaded. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    cal, pl = rep["calibration"], rep["placement"]
    d = np.asarray(cal["distances"])
    panels = (("collapse_rate", "quick shared SAE: collapse rate (App. F.2)", rep["collapse"]["collapse_rate"], pl["by_collapse"]),
              ("median_top_distance", "quick specific SAEs: heterogeneity (Fig. 2)", rep["heterogeneity"]["median_top_distance"],
               pl["by_heterogeneity"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (key, title, value, placed) in zip(axes, panels):
        for lo, hi, color, name in ((0.0, CROSSING_FEATURE_RECOVERY, "#d9ead3", "shared ahead"),
                                    (CROSSING_FEATURE_RECOVERY, CROSSING_RECONSTRUCTION, "#fff2cc", "crossover"),
                                    (CROSSING_RECONSTRUCTION, 1.0, "#fde0d0", "specific ahead")):
            ax.axvspan(lo, hi, color=color, lw=0, label=name)
        ax.plot(d, cal[key], "o-", color="#444444", label="calibration (synthetic, known distance)")
        ax.axhline(value, color="#1f6fb4", ls="--", lw=1.2, label=f"this store: {value:.3f}")
        if placed is not None:
            ax.axvspan(placed["low"], placed["high"], color="#1f6fb4", alpha=0.25, lw=0)
            ax.axvline(placed["estimate"], color="#1f6fb4", lw=1.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel(r"cosine distance $1 - \alpha$ between $\phi_i$ and $\psi_i$ (Fig. 5 axis)")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("collapse rate")
    axes[1].set_ylabel("median cosine distance, top matches")
    axes[0].legend(fontsize=7, frameon=False, loc="upper right")
    fig.suptitle(f"{rep['store']}: {pl['regime']} (estimated distance {pl['estimate']:.2f})", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


# ====================================================================== building the calibration
def calibrate(
    out_file: str | Path,
    work_dir: str | Path,
    *,
    quick: QuickConfig = QuickConfig(),
    distances: tuple[float, ...] = CALIBRATION_DISTANCES,
    seeds: tuple[int, ...] = CALIBRATION_SEEDS,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
) -> dict:
    """Run the quick diagnostic on synthetic stores (``CALIBRATION_SYNTH``) at every distance and
    seed and write the calibration table to ``out_file`` (atomically). ``work_dir`` holds the
    generated stores (removed one by one after use) and one JSON per finished store (``units/``),
    from which a rerun resumes."""


    say = log or (lambda s: None)
    work = Path(work_dir)
    rows: list[dict] = []
    q_used: QuickConfig | None = None
    n_rows = CALIBRATION_SYNTH["n_train"] + CALIBRATION_SYNTH["n_eval"]
    for seed in seeds:
        q_used = q = replace(quick, seed=seed).resolve(n_rows)
        for dist in distances:
            # One JSON per finished (distance, seed) under work_dir/units: a rerun (or a second process
            # given other seeds) skips what is done; the sizes are part of the file name.
            unit = work / "units" / f"dist{dist:g}_seed{seed}_m{q.latents}_k{q.k}_e{q.epochs}_b{q.batch_size}_t{q.top_fraction:g}.json"
            if unit.is_file():
                rows.append(json.loads(unit.read_text()))
                continue
            folder = work / f"dist{dist:g}_seed{seed}"
            cfg = SynthConfig(alpha=1.0 - dist, seed=1000 + seed, **CALIBRATION_SYNTH)
            write_synthetic(cfg, folder, progress=False)
            store = PairedEmbeddings.open(folder)
            col = quick_collapse(store, q, device, progress)
            het = quick_heterogeneity(store, q, device, progress)
            row = {"distance": dist, "seed": seed, "collapse_rate": col["collapse_rate"],
                   "median_top_distance": het["median_top_distance"],
                   "mean_matched_correlation": het["mean_matched_correlation"],
                   "gap": modality_gap(store, seed=seed), "seconds": col["seconds"] + het["seconds"]}
            write_json(unit, row)
            rows.append(row)
            say(f"distance {dist:g} seed {seed}: collapse {col['collapse_rate']:.4f}, heterogeneity {het['median_top_distance']:.4f}")
            shutil.rmtree(folder, ignore_errors=True)
    curve = []
    for dist in distances:
        sel = [r for r in rows if r["distance"] == dist]
        curve.append({"distance": dist,
                      "collapse_rate": float(np.mean([r["collapse_rate"] for r in sel])),
                      "collapse_rate_std": float(np.std([r["collapse_rate"] for r in sel])),
                      "median_top_distance": float(np.mean([r["median_top_distance"] for r in sel])),
                      "median_top_distance_std": float(np.std([r["median_top_distance"] for r in sel])),
                      "seeds": len(sel)})
    q_dict = asdict(q_used) if q_used else {}
    q_dict.pop("seed", None)
    table = {
        "format": CALIBRATION_FORMAT,
        "source": {"command": command, "synth": {**CALIBRATION_SYNTH, "data_seeds": [1000 + s for s in seeds]},
                   "made": time.strftime("%Y-%m-%d", time.gmtime()),
                   "seconds": round(sum(r.get("seconds", 0.0) for r in rows), 1),  # of the runs, also when resumed
                   "torch": torch.__version__},
        "quick": q_dict,
        "curve": curve,
        "per_seed": rows,
    }
    write_json(out_file, table)
    return table


__all__ = [
    "QuickConfig", "Calibration", "CALIBRATION_FILE", "CALIBRATION_SYNTH", "CROSSING_FEATURE_RECOVERY",
    "CROSSING_RECONSTRUCTION", "REGIMES", "modality_gap", "quick_collapse", "quick_heterogeneity",
    "invert_curve", "regime_of", "place", "diagnose", "replace_calibration", "format_report", "plot_placement", "calibrate",
]
