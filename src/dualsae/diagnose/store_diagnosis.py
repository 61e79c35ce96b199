"""``dualsae diagnose`` end to end: the pilot head-to-head on the user's store (what the
recommendation rests on) and the synthetic Fig. 5 placement (context only).

:func:`diagnose_store` runs, in one resumable work folder,

1. ``pilot/``: :func:`dualsae.diagnose.head_to_head.run_pilot` (one unit per method and seed);
2. ``placement/``: the quick synthetic-reference measurement (:func:`dualsae.diagnose.placement.measure_quick`,
   one unit), placed on the regime curve when the report is made (so ``--from-json`` can re-place it);

then :func:`dualsae.diagnose.verdicts.recommend` turns the pilot's per-seed numbers into a verdict per
objective. The report's ``recommendation`` comes from the pilot only; ``synthetic_reference`` holds the
placement, whose numbers come from synthetic stores and are never the store's.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from dualsae.core.errors import ConfigError, DataError
from dualsae.diagnose.head_to_head import PilotConfig, run_pilot, torch_threads
from dualsae.diagnose.pilots import QuickConfig
from dualsae.diagnose.placement import measure_quick, place_report
from dualsae.diagnose.regime_curve import RegimeCurve
from dualsae.diagnose.verdicts import OBJECTIVES, recommend
from dualsae.files.unit_job import UnitJob
from dualsae.store.paired import PairedEmbeddings

STORE_DIAGNOSIS_FORMAT = "dualsae.diagnose/2"
OBJECTIVE_CHOICES = (*OBJECTIVES, "all")


def objectives_of(name: str) -> tuple[str, ...]:
    """``--objective`` -> the objectives it asks for."""
    if name == "all":
        return tuple(OBJECTIVES)
    if name not in OBJECTIVES:
        raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVE_CHOICES)}, found {name!r}")
    return (name,)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pilot's worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def diagnose_store(
    store: PairedEmbeddings,
    work: str | Path,
    pilot: PilotConfig = PilotConfig(),
    quick: QuickConfig = QuickConfig(),
    curve: RegimeCurve | None = None,
    *,
    objective: str = "all",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    external: PairedEmbeddings | None = None,
    device: str = "cpu",
    workers: int = 1,
    threads: int | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Pilot head-to-head + synthetic placement of ``store`` (module docstring); returns the ``diagnose.json`` dict.

    work: the resumable work folder (``pilot/``, ``placement/``); a rerun with the same settings
    trains only what a kill left unfinished. threads: torch threads of each training (in this process
    and in each of ``workers`` processes; None: torch's default). On a shared machine one thread per
    training is several times faster in wall-clock time than two threads competing for the cores."""
    store.require_pairs("the diagnostic")
    wanted = objectives_of(objective)
    curve = curve or RegimeCurve.load()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    work = Path(work)
    with torch_threads(threads):
        result = run_pilot(store, pilot, work / "pilot", test_fraction=test_fraction, split_seed=split_seed,
                           external=external, device=device, workers=workers, threads=threads, log=log)
        q = quick.resolve(store.n)
        job = UnitJob.open(work / "placement", {"quick": asdict(q)}, what="diagnose synthetic placement")
        log("synthetic reference: quick SAEs for the Fig. 5 placement")
        for _ in job.run([q], lambda qq: {"quick": measure_quick(store, qq, device=device, progress=False)}, keys=lambda qq: ["quick"]):
            pass
    measured = job.finished()["quick"]
    report = {
        "format": STORE_DIAGNOSIS_FORMAT,
        "store": str(store.root) if store.root is not None else None,
        "pairs": store.n, "d": store.d,
        "objective": objective,
        "pilot": result,
        "synthetic_reference": place_report(measured, curve),
        # Of this call (a resumed run counts only what it did); the units keep their own seconds.
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(_cpu_seconds() - c0, 1),
    }
    return {**report, "recommendation": recommend(result["units"], wanted, result["config"]["spread"])}


def redo_report(saved: dict, curve: RegimeCurve, objective: str | None = None, spread: float | None = None) -> dict:
    """A saved ``diagnose.json`` with its placement re-made from ``curve`` and its verdicts re-made
    (for ``objective`` / ``spread`` when given), without training. Files of the format before the pilot
    (the placement alone) are placed again as they were."""
    if saved.get("format") != STORE_DIAGNOSIS_FORMAT:
        return {"synthetic_reference": place_report(saved, curve)}
    try:
        units, cfg, ref = saved["pilot"]["units"], saved["pilot"]["config"], saved["synthetic_reference"]
    except (KeyError, TypeError) as e:
        raise DataError(f"diagnose report: missing field {e}; expected a diagnose.json written by 'dualsae diagnose'") from None
    objective = objective or saved.get("objective", "all")
    spread = cfg["spread"] if spread is None else spread
    return {**saved, "objective": objective, "synthetic_reference": place_report(ref, curve),
            "recommendation": recommend(units, objectives_of(objective), spread)}


__all__ = ["OBJECTIVE_CHOICES", "STORE_DIAGNOSIS_FORMAT", "diagnose_store", "objectives_of", "redo_report"]
