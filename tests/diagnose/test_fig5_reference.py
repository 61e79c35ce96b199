"""diagnose's reference numbers come from its packaged JSON, which agrees with the committed Fig. 5
reproduction (docs/synthetic/results.json); regime-curve files of the former 'calibration' format load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib

from dualsae.diagnose import placement
from dualsae.diagnose.regime_curve import REGIME_CURVE_FILE, RegimeCurve
from tests.helpers import ROOT


def test_packaged_references_agree_with_the_committed_fig5_reproduction():
    results = json.loads((ROOT / "docs" / "synthetic" / "results.json").read_text())
    (claim,) = [c for c in results["claims"] if c["claim"] == "a" and c["epochs"] == 10]
    assert placement.CROSSING_FEATURE_RECOVERY == round(claim["crossing_distance_feature_recovery"], 4)
    assert placement.CROSSING_RECONSTRUCTION == round(claim["crossing_distance_reconstruction"], 4)
    assert sorted(placement.FIG5_REFERENCE) == results["plan"]["distances"]
    for row in results["fig5"]:
        if row.get("epochs", 10) != 10 or row["method"] not in ("shared", "specific"):
            continue
        idx = 0 if row["method"] == "shared" else 1
        ref = placement.FIG5_REFERENCE[row["distance"]]
        assert ref["reconstruction"][idx] == pytest.approx(row["reconstruction_error"], abs=5e-5)
        assert ref["feature_recovery"][idx] == pytest.approx(row["feature_recovery_error"], abs=5e-5)


def test_the_json_files_are_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "*.json" in data["dualsae.diagnose"]
    assert placement.FIG5_REFERENCE_FILE.parent == REGIME_CURVE_FILE.parent == Path(placement.__file__).parent


def test_a_regime_curve_in_the_former_calibration_format_loads(tmp_path):
    packaged = json.loads(REGIME_CURVE_FILE.read_text())
    old = tmp_path / "diagnose_calibration.json"
    old.write_text(json.dumps({**packaged, "format": "dualsae.diagnose-calibration/1"}))
    a, b = RegimeCurve.load(old), RegimeCurve.load()
    assert a.distances.tolist() == b.distances.tolist() and a.collapse.tolist() == b.collapse.tolist()
