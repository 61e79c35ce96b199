"""Which regime of the paper's Fig. 5 a store's embeddings are in, and the method to train.

:func:`diagnose` measures the modality gap (App. C, Prop. 2; reported, not used for the placement:
synthetic and real stores put very different energy outside the shared concepts, so the gap has no
common scale with the Fig. 5 axis), the quick shared SAE's collapse rate (App. F.2) and the quick
specific pair's heterogeneity (Fig. 2) (:mod:`.pilots`), and places each statistic on the Fig. 5
axis through the regime curve (:mod:`.regime_curve`).

The regime boundaries are the crossing distances of the committed 3-seed Fig. 5 reproduction
(``docs/synthetic/results.json``, claim (a)), read with its Fig. 5 points from the packaged
``fig5_reference.json`` beside this module: specific SAEs have lower feature-recovery error beyond
0.114 and lower reconstruction error beyond 0.172. The placement rests on the collapse rate (on the
curve's stores it separates distance 0.1 from 0.7 by a factor of about 20, heterogeneity only by
about 1.3); heterogeneity is shown beside it as a second opinion and disagreement is stated.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from dualsae.core.errors import ConfigError, DataError
from dualsae.diagnose.pilots import (
    QuickConfig,
    modality_gap,
    quick_collapse,
    quick_heterogeneity,
    subsample,
)
from dualsae.diagnose.regime_curve import RegimeCurve, invert_curve
from dualsae.files.jsonfiles import read_json_object
from dualsae.store.paired import PairedEmbeddings

DIAGNOSE_FORMAT = "dualsae.diagnose/1"
FIG5_REFERENCE_FILE = Path(__file__).with_name("fig5_reference.json")


def _load_reference(path: Path = FIG5_REFERENCE_FILE) -> tuple[float, float, dict[float, dict[str, tuple[float, float]]]]:
    """(feature-recovery crossing, reconstruction crossing, {distance: {metric: (shared, specific)}})."""
    data = read_json_object(path, error=DataError)
    try:
        points = {float(p["distance"]): {metric: (float(p["shared"][metric]), float(p["specific"][metric]))
                                         for metric in ("reconstruction", "feature_recovery")} for p in data["fig5"]}
        return float(data["crossing_distance_feature_recovery"]), float(data["crossing_distance_reconstruction"]), points
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: expected crossing_distance_* numbers and a 'fig5' list of points ({e})") from None


#: Crossing distances of the committed full Fig. 5 reproduction: modality-specific SAEs have the lower
#: feature-recovery error beyond the first and the lower reconstruction error beyond the second.
#: FIG5_REFERENCE: distance -> (shared, specific) reconstruction and feature-recovery error (3-seed
#: means), printed next to the recommendation.
CROSSING_FEATURE_RECOVERY, CROSSING_RECONSTRUCTION, FIG5_REFERENCE = _load_reference()

REGIMES = ("shared ahead", "crossover", "specific ahead")


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
                 f"better from distance {CROSSING_FEATURE_RECOVERY:.3f}), a shared SAE if reconstruction matters most (it "
                 f"reconstructs better up to {CROSSING_RECONSTRUCTION:.3f}); the two are close here",
    "specific ahead": "modality-specific SAEs + post-hoc alignment (dualsae train --method specific, then dualsae align): "
                      "at this distance the shared SAE collapses image and text features into one direction and loses "
                      "on both reconstruction and feature recovery (Fig. 5)",
}

#: When the evidence spans regimes: the asymmetry of the committed Fig. 5 numbers decides.
UNCERTAIN_ADVICE = ("the estimate spans regimes; modality-specific SAEs + post-hoc alignment is the safer choice: at "
                    "distance 0 they lose {lose:.4f} feature-recovery error to the shared SAE ({s0:.4f} vs {p0:.4f}), "
                    "at distance 1 the shared SAE loses {gain:.4f} ({s1:.4f} vs {p1:.4f})")


def place(collapse_rate: float | None, heterogeneity_value: float | None, curve: RegimeCurve) -> dict:
    """Map the two quick statistics to distances on the Fig. 5 axis, a regime and a recommendation."""
    out: dict[str, Any] = {"by_collapse": None, "by_heterogeneity": None}
    if collapse_rate is not None:
        out["by_collapse"] = invert_curve(curve.distances, curve.collapse, collapse_rate)
    if heterogeneity_value is not None:
        out["by_heterogeneity"] = invert_curve(curve.distances, curve.heterogeneity, heterogeneity_value)
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


def measure_quick(
    store: PairedEmbeddings,
    quick: QuickConfig = QuickConfig(),
    *,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Measure the modality gap and the quick collapse rate and heterogeneity (no placement yet):
    the part of :func:`diagnose` that trains. ``store`` must hold paired rows."""
    store.require_pairs("the diagnostic")
    q = quick.resolve(store.n)
    sub = subsample(store, q.rows, q.seed)
    say = log or (lambda s: None)
    t0 = time.perf_counter()
    say(f"modality gap on {sub.n:,} pairs")
    gap = modality_gap(sub, seed=q.seed)
    say(f"quick shared SAE (m={q.latents}, k={q.k}, {q.epochs} epochs of {sub.n:,} pairs)")
    collapse = quick_collapse(sub, q, device, progress)
    say(f"quick specific SAEs (m={q.latents // 2} each) + post-hoc alignment")
    het = quick_heterogeneity(sub, q, device, progress)
    return {
        "format": DIAGNOSE_FORMAT,
        "store": str(store.root) if store.root is not None else None,
        "pairs": store.n, "d": store.d,
        "quick": asdict(q),
        "modality_gap": gap,
        "collapse": collapse,
        "heterogeneity": het,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def diagnose(
    store: PairedEmbeddings,
    quick: QuickConfig = QuickConfig(),
    curve: RegimeCurve | None = None,
    *,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Measure the modality gap, the quick collapse rate and heterogeneity, and place the store on the
    Fig. 5 axis. ``store`` must hold paired rows; returns the synthetic-reference dict."""
    report = measure_quick(store, quick, device=device, progress=progress, log=log)
    return place_report(report, curve or RegimeCurve.load())


def place_report(report: dict, curve: RegimeCurve) -> dict:
    """The report with its placement (and regime-curve section and notes) computed from ``curve``:
    what :func:`diagnose` does after measuring, so a saved ``diagnose.json`` can be placed again with
    another regime curve without training anything."""
    try:
        q, col, het = report["quick"], report["collapse"]["collapse_rate"], report["heterogeneity"]["median_top_distance"]
    except (KeyError, TypeError) as e:
        raise DataError(f"diagnose report: missing field {e}; expected a diagnose.json written by 'dualsae diagnose'") from None
    notes = []
    cq = curve.quick
    for key in ("latents", "k", "epochs", "batch_size", "top_fraction"):
        if key in cq and key in q and cq[key] != q[key]:
            notes.append(f"quick {key} = {q[key]} differs from the regime curve's {cq[key]}: the mapping to distance is approximate")
    synth_d = curve.source.get("synth", {}).get("d")
    if synth_d is not None and synth_d != report.get("d"):
        notes.append(f"the regime curve's stores have d = {synth_d}, this store d = {report.get('d')}")
    return {
        **report,
        "placement": place(col, het, curve),
        "regime_curve": {"file": str(curve.path) if curve.path else None,
                         "command": curve.source.get("command"),
                         "distances": curve.distances.tolist(),
                         "collapse_rate": curve.collapse.tolist(),
                         "median_top_distance": curve.heterogeneity.tolist()},
        "crossings": {"feature_recovery": CROSSING_FEATURE_RECOVERY, "reconstruction": CROSSING_RECONSTRUCTION,
                      "source": "docs/synthetic/results.json, claim (a) (full Fig. 5 reproduction, 3 seeds)"},
        "notes": notes,
    }


__all__ = ["CROSSING_FEATURE_RECOVERY", "CROSSING_RECONSTRUCTION", "FIG5_REFERENCE", "FIG5_REFERENCE_FILE", "REGIMES",
           "DIAGNOSE_FORMAT", "regime_of", "place", "diagnose", "measure_quick", "place_report"]
