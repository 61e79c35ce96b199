"""Mean and standard deviation over seeds of the synthetic units' App. E.3 metrics: the points of
Fig. 5 (per budget, distance and method) and Fig. 6 (per baseline multiplier, at Fig. 6's distance)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dualsae.experiments.synthetic.plan import (
    FIG5_METHODS,
    FIG6_BASELINES,
    PAPER_EPOCHS,
    SyntheticPlan,
    plan_units,
)
from dualsae.files.unit_job import UnitJob

METRICS = ("reconstruction_error", "feature_recovery_error", "alignment_error", "feature_alignment_error",
           "collapse_rate", "same_index_rate")


def load_rows(out: Path, plan: SyntheticPlan | None = None) -> list[dict]:
    """Rows of the finished unit files (of ``plan``'s units when given); temporaries never count."""
    units = UnitJob(Path(out)).finished()
    keys = sorted(units) if plan is None else [u.key for u in plan_units(plan) if u.key in units]
    rows: list[dict] = []
    for key in keys:
        rows.extend(units[key])
    return rows


def _agg(rows: list[dict], **match: Any) -> dict[str, tuple[float, float, int]]:
    sel = [r for r in rows if all(r.get(k, PAPER_EPOCHS if k == "epochs" else None) == v for k, v in match.items())]
    out = {}
    for key in (*METRICS, "hungarian_collapse_rate", "train_seconds", "plateau_change"):
        vals = [r[key] for r in sel if r.get(key) is not None]
        if vals:
            out[key] = (float(np.mean(vals)), float(np.std(vals)), len(vals))
    if sel:
        # The worst (least converged) training of the point, not the mean.
        worst = [r["plateau_change"] for r in sel if r.get("plateau_change") is not None]
        if worst:
            out["plateau_change_max"] = (float(max(worst)), 0.0, len(worst))
    return out


def _point(a: dict[str, tuple[float, float, int]], **fields: Any) -> dict:
    return {**fields, **{k: v[0] for k, v in a.items()}, **{f"{k}_std": v[1] for k, v in a.items()},
            "seeds": max(v[2] for v in a.values())}


def aggregate(plan: SyntheticPlan, rows: list[dict]) -> dict:
    """Mean and std over seeds: ``fig5`` (one row per budget, distance, method) and ``fig6`` (at
    ``plan.epochs[0]``)."""
    fig5 = []
    for epochs in plan.epochs:
        for dist in sorted({r["distance"] for r in rows if r["figure"] == "fig5"}):
            for method in (*FIG5_METHODS, "specific+posthoc"):
                a = _agg(rows, figure="fig5", distance=dist, method=method, epochs=epochs)
                if a:
                    fig5.append(_point(a, epochs=epochs, distance=dist, method=method))
    fig6 = []
    d6, e6 = plan.fig6_distance, plan.epochs[0]
    for method in (*FIG5_METHODS, "specific+posthoc"):
        a = _agg(rows, figure="fig5", distance=d6, method=method, epochs=e6)
        if a:
            fig6.append(_point(a, epochs=e6, method=method, multiplier=None))
    for base in FIG6_BASELINES:
        for mult in plan.multipliers(base):
            a = _agg(rows, figure="fig6", method=base, multiplier=mult, epochs=e6)
            if a:
                fig6.append(_point(a, epochs=e6, method=base, multiplier=mult))
    return {"fig5": fig5, "fig6": fig6}


__all__ = ["METRICS", "load_rows", "aggregate"]
