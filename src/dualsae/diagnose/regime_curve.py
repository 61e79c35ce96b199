"""The regime curve: the quick diagnostic's own statistics on synthetic stores of known distance.

A quick SAE is smaller and shorter-trained than the paper's, so its collapse rate (App. F.2) and
heterogeneity (Fig. 2) are not the reproduction's. They are mapped to a cosine distance 1 - alpha on
Fig. 5's axis through this curve: the same quick diagnostic (:mod:`.pilots`) measured once on App.
E.2 stores (:data:`REGIME_CURVE_SYNTH`) at known distances (:func:`measure_regime_curve`, ``dualsae
diagnose --calibrate FILE``) and shipped as ``regime_curve.json`` beside this module. Each statistic
is inverted by linear interpolation of the mean curve (:func:`invert_curve`); where the curve is flat
the estimate is an interval.

(Not the group-sparse lambda-dagger of :mod:`dualsae.training.group_sparse_scale`. Files written
before this module had its name, format ``dualsae.diagnose-calibration/1``, are read as well.)
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dualsae.core.errors import DataError
from dualsae.diagnose.pilots import (
    QuickConfig,
    modality_gap,
    quick_collapse,
    quick_heterogeneity,
)
from dualsae.files.atomic import write_json
from dualsae.files.jsonfiles import read_json_object
from dualsae.files.unit_job import UnitJob
from dualsae.store.generator import SynthConfig, write_synthetic
from dualsae.store.paired import PairedEmbeddings

REGIME_CURVE_FORMAT = "dualsae.regime-curve/1"
#: Formats read (the first is written); the second is the name files had before ("calibration").
REGIME_CURVE_FORMATS = (REGIME_CURVE_FORMAT, "dualsae.diagnose-calibration/1")
REGIME_CURVE_FILE = Path(__file__).with_name("regime_curve.json")

#: The synthetic problem the curve is measured on: App. E.2's generator on a reduced problem with its
#: ratios kept (d = 64, n = 8d concepts split 2 : 1 : 1, 20.48 active concepts per pair as in the
#: paper, eps_max raised with 1/sqrt(d) as for the demo's reduced problem), 8,192 pairs.
REGIME_CURVE_SYNTH = dict(d=64, n_shared=256, n_image=128, n_text=128, sparsity=1 - 20.48 / 512, eps_max=0.5,
                          n_train=6_144, n_eval=2_048)
REGIME_CURVE_DISTANCES = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
REGIME_CURVE_SEEDS = (0,)
#: Data seed of the store measured with training seed s: 1000 + s.
DATA_SEED_OFFSET = 1000


@dataclass
class RegimeCurve:
    """The quick diagnostic's statistics on synthetic stores of known distance (:func:`measure_regime_curve`).

    distances: grid of 1 - alpha; collapse / heterogeneity: [len(distances)] means over seeds;
    per_seed: the raw rows; quick: the QuickConfig used; source: how the curve was made.
    """

    distances: np.ndarray
    collapse: np.ndarray
    heterogeneity: np.ndarray
    quick: dict
    per_seed: list[dict]
    source: dict
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path = REGIME_CURVE_FILE) -> "RegimeCurve":
        """Read a regime-curve file (either format of :data:`REGIME_CURVE_FORMATS`)."""
        data = read_json_object(path, error=DataError)
        if data.get("format") not in REGIME_CURVE_FORMATS:
            raise DataError(f"{path}: field 'format' must be {REGIME_CURVE_FORMAT!r}, found {data.get('format')!r}")
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
    """Distances at which a piecewise-linear curve takes the value ``v``.

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


@dataclass(frozen=True)
class CurvePoint:
    """One unit of :func:`measure_regime_curve`: the quick diagnostic on the store at ``distance``."""

    distance: float
    seed: int
    quick: QuickConfig  # resolved

    @property
    def key(self) -> str:
        # The sizes are part of the name: one work folder can hold points of several quick configs.
        q = self.quick
        return f"dist{self.distance:g}_seed{self.seed}_m{q.latents}_k{q.k}_e{q.epochs}_b{q.batch_size}_t{q.top_fraction:g}"


def _measure_point(work: Path, point: CurvePoint, device: str, progress: bool) -> dict[str, dict]:
    """Generate the point's store (App. E.2), measure the three statistics, remove the store."""
    folder = work / f"dist{point.distance:g}_seed{point.seed}"
    cfg = SynthConfig(alpha=1.0 - point.distance, seed=DATA_SEED_OFFSET + point.seed, **REGIME_CURVE_SYNTH)
    write_synthetic(cfg, folder, progress=False)
    store = PairedEmbeddings.open(folder)
    col = quick_collapse(store, point.quick, device, progress)
    het = quick_heterogeneity(store, point.quick, device, progress)
    row = {"distance": point.distance, "seed": point.seed, "collapse_rate": col["collapse_rate"],
           "median_top_distance": het["median_top_distance"],
           "mean_matched_correlation": het["mean_matched_correlation"],
           "gap": modality_gap(store, seed=point.seed), "seconds": col["seconds"] + het["seconds"]}
    shutil.rmtree(folder, ignore_errors=True)
    return {point.key: row}


def measure_regime_curve(
    out_file: str | Path,
    work_dir: str | Path,
    *,
    quick: QuickConfig = QuickConfig(),
    distances: tuple[float, ...] = REGIME_CURVE_DISTANCES,
    seeds: tuple[int, ...] = REGIME_CURVE_SEEDS,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
) -> dict:
    """Run the quick diagnostic on synthetic stores (:data:`REGIME_CURVE_SYNTH`) at every distance and
    seed and write the regime curve to ``out_file`` (atomically). ``work_dir`` is a
    :class:`dualsae.files.unit_job.UnitJob` folder: ``plan.json`` (the synthetic problem), the
    generated stores (removed one by one after use) and one JSON per finished store (``units/``),
    from which a rerun (or a second process given other seeds) resumes."""
    say = log or (lambda s: None)
    work = Path(work_dir)
    n_rows = REGIME_CURVE_SYNTH["n_train"] + REGIME_CURVE_SYNTH["n_eval"]
    points = [CurvePoint(dist, seed, replace(quick, seed=seed).resolve(n_rows)) for seed in seeds for dist in distances]
    # Work folders of the code before the runner have no plan.json: it is written, their units are kept.
    job = UnitJob.open(work, {"synth": REGIME_CURVE_SYNTH, "data_seed_offset": DATA_SEED_OFFSET}, what="regime-curve job")
    for point, docs in job.run(points, lambda p: _measure_point(work, p, device, progress), keys=lambda p: [p.key]):
        row = docs[point.key]
        say(f"distance {point.distance:g} seed {point.seed}: collapse {row['collapse_rate']:.4f}, "
            f"heterogeneity {row['median_top_distance']:.4f}")
    finished = job.finished()
    rows = [finished[p.key] for p in points]
    curve = []
    for dist in distances:
        sel = [r for r in rows if r["distance"] == dist]
        curve.append({"distance": dist,
                      "collapse_rate": float(np.mean([r["collapse_rate"] for r in sel])),
                      "collapse_rate_std": float(np.std([r["collapse_rate"] for r in sel])),
                      "median_top_distance": float(np.mean([r["median_top_distance"] for r in sel])),
                      "median_top_distance_std": float(np.std([r["median_top_distance"] for r in sel])),
                      "seeds": len(sel)})
    q_dict = asdict(points[-1].quick) if points else {}
    q_dict.pop("seed", None)
    table = {
        "format": REGIME_CURVE_FORMAT,
        "source": {"command": command,
                   "synth": {**REGIME_CURVE_SYNTH, "data_seeds": [DATA_SEED_OFFSET + s for s in seeds]},
                   "made": time.strftime("%Y-%m-%d", time.gmtime()),
                   "seconds": round(sum(r.get("seconds", 0.0) for r in rows), 1),  # of the runs, also when resumed
                   "torch": torch.__version__},
        "quick": q_dict,
        "curve": curve,
        "per_seed": rows,
    }
    write_json(out_file, table)
    return table


__all__ = ["RegimeCurve", "REGIME_CURVE_FILE", "REGIME_CURVE_FORMAT", "REGIME_CURVE_SYNTH", "REGIME_CURVE_DISTANCES",
           "REGIME_CURVE_SEEDS", "invert_curve", "measure_regime_curve", "CurvePoint"]
