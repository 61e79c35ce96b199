"""The paper's synthetic experiments (Sec. 6.1, App. E.2-E.3; Figs. 5 and 6) as one resumable job.

* Fig. 5: cosine distance 1 - alpha over a grid; shared SAE (m latents) against modality-specific
  SAEs (m/2 each): reconstruction error, feature-recovery error, collapse rate.
* Fig. 6: at one distance (0.5), the auxiliary-loss multiplier over a grid times each baseline's
  default, beside shared, specific and specific + post-hoc alignment: feature-recovery error against
  feature-alignment error. Each baseline has its own multiplier grid (Iso-Energy's "degrades feature
  recovery" only appears at 100x-1000x).
* An epochs axis: every Fig. 5 point is trained at each budget of ``epochs`` (Fig. 6 at the first
  budget), so the report shows which statements change with the training budget; every unit records
  its training-loss curve and the plateau statistic (:func:`dualsae.training.curves.plateau_change`).

The job runs on :class:`dualsae.files.unit_job.UnitJob`: each (figure point, budget, seed) is a unit
(:mod:`.plan`) whose rows are written to ``units/<key>.json`` as soon as it finishes (:mod:`.units`),
so an interrupted job resumes where it stopped. A data set (distance, seed) is generated once under
``data/`` and removed when no pending unit needs it (``keep_data`` keeps it). ``workers`` runs units
in parallel processes; a unit's result does not depend on which worker ran it or when. The report
is aggregated (:mod:`.aggregate`), checked against the claims (:mod:`.claims`) and written
(:mod:`.results`, :mod:`.figures`).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from functools import partial
from pathlib import Path

from dualsae.experiments.synthetic.aggregate import aggregate, load_rows
from dualsae.experiments.synthetic.claims import budget_changes, check_claims
from dualsae.experiments.synthetic.plan import (
    AXES,
    SyntheticPlan,
    plan_units,
    saved_plan_layout,
    unit_keys,
)
from dualsae.experiments.synthetic.results import write_report
from dualsae.experiments.synthetic.units import data_dir, data_lock_name, unit_work
from dualsae.files.unit_job import UnitJob


def open_job(plan: SyntheticPlan, out: str | Path) -> UnitJob:
    """The job folder of ``plan``: a folder holding a job with other settings is refused (naming the
    fields); one whose plan only adds values to an axis (distances, multipliers, seeds, epochs)
    extends the job, keeping every finished unit. Reads ``plan.json`` of either layout."""
    return UnitJob.open(out, plan.to_json(), read_saved=saved_plan_layout, axes=AXES, what="job")


def run_plan(plan: SyntheticPlan, out: str | Path, keep_data: bool = False, progress: bool = True,
             max_units: int | None = None, workers: int = 1, threads_per_worker: int | None = None) -> dict:
    """Run (or resume) every unit of ``plan`` into ``out`` and write the report. Returns it.

    ``workers`` > 1 trains that many units at once in separate processes, each with
    ``threads_per_worker`` torch threads (default: the usable cores split evenly). On a small CPU this
    pays because one SAE of this size does not keep several cores busy: on 2 cores, two 1-thread
    workers finish 1.3x more units per hour than one 2-thread process (benchmarks/parallel_units.py).
    Results do not depend on the schedule; each unit is seeded by itself (float sums may differ in the
    last bits with the thread count).
    """
    plan.validate()
    out = Path(out)
    job = open_job(plan, out)
    units = plan_units(plan)
    pending = job.pending(units, unit_keys)
    if max_units is not None:
        pending = pending[:max_units]
    # A data set is removed once every pending unit that reads it has finished.
    readers = Counter((u.distance, u.seed) for u in pending)
    t0 = time.time()
    for unit, _ in job.run(units, partial(unit_work, plan, str(out)), keys=unit_keys, workers=workers,
                           threads_per_worker=threads_per_worker, progress=progress, desc="synthetic units",
                           max_units=max_units):
        readers[(unit.distance, unit.seed)] -= 1
        if not keep_data and readers[(unit.distance, unit.seed)] == 0:
            folder = data_dir(out, unit.distance, unit.seed)
            shutil.rmtree(folder, ignore_errors=True)
            folder.parent.joinpath(data_lock_name(folder)).unlink(missing_ok=True)
    report = build_report(plan, out)
    report["wall_seconds_this_call"] = round(time.time() - t0, 1)
    write_report(report, out)
    return report


def build_report(plan: SyntheticPlan, out: Path) -> dict:
    """The report of the finished units of ``plan`` in ``out`` (rows, Fig. 5 / Fig. 6 points, claims)."""
    rows = load_rows(out, plan)
    agg = aggregate(plan, rows)
    units = plan_units(plan)
    done = len(units) - len(UnitJob(Path(out)).pending(units, unit_keys))
    claims = check_claims(plan, agg)
    return {"plan": plan.to_json(), "units_done": done, "units_total": len(units), "rows": rows, **agg,
            "claims": claims, "budget_changes": budget_changes(claims)}


__all__ = ["run_plan", "build_report", "open_job"]
