"""Measuring diagnose's regime curve on the unit runner: one unit file per (distance, seed), a rerun
trains nothing, and a work folder of the code before the runner (no plan.json) keeps its units."""

from __future__ import annotations

import json

from dualsae.diagnose.pilots import QuickConfig
from dualsae.diagnose.regime_curve import (
    REGIME_CURVE_FORMAT,
    RegimeCurve,
    measure_regime_curve,
)

TINY = QuickConfig(latents=32, k=4, steps=4)  # one epoch of the 8,192 pairs


def test_regime_curve_resumes_from_its_unit_files(tmp_path):
    work = tmp_path / "work"
    table = measure_regime_curve(tmp_path / "curve.json", work, quick=TINY, distances=(0.1, 0.7), progress=False)
    assert table["format"] == REGIME_CURVE_FORMAT and [r["distance"] for r in table["curve"]] == [0.1, 0.7]
    units = sorted((work / "units").glob("*.json"))
    assert [p.name.split("_")[0] for p in units] == ["dist0.1", "dist0.7"] and (work / "plan.json").is_file()
    assert not (work / "dist0.1_seed0").exists()  # the generated stores are removed after use
    curve = RegimeCurve.load(tmp_path / "curve.json")
    assert curve.collapse.tolist() == [r["collapse_rate"] for r in table["per_seed"]]
    mtimes = {p.name: p.stat().st_mtime_ns for p in units}
    # A folder written before the runner had no plan.json: its units are reused, nothing is trained.
    (work / "plan.json").unlink()
    again = measure_regime_curve(tmp_path / "again.json", work, quick=TINY, distances=(0.1, 0.7), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (work / "units").glob("*.json")} == mtimes
    assert again["curve"] == table["curve"] and again["per_seed"] == table["per_seed"]
    assert json.loads((work / "plan.json").read_text())["synth"]["d"] == 64
