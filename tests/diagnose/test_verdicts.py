"""The spread rule of diagnose's verdicts, on planted per-seed numbers: a lead beyond spread x (std + std)
wins, one within it is "no clear winner", metrics that clearly favour different methods disagree, and
objectives won by different methods are reported with the store's collapse and heterogeneity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dualsae.cli import main
from dualsae.diagnose.verdicts import compare, objective_verdict, recommend, summarise, units_from_table1
from tests.helpers import ROOT


def _units(metrics: dict[str, dict[str, list[float]]], collapse=(0.9, 0.92), het=(0.8, 0.82)) -> list[dict]:
    """One unit per (method, seed) from planted {method: {metric: [value per seed]}}."""
    units = []
    for method, per in metrics.items():
        n = len(next(iter(per.values())))
        for s in range(n):
            u = {"method": method, "seed": s, "metrics": {k: v[s] for k, v in per.items()}}
            if method == "shared":
                u["collapse_rate"] = collapse[s % len(collapse)]
            else:
                u["heterogeneity"] = het[s % len(het)]
            units.append(u)
    return units


def test_summary_is_mean_and_sample_std_over_seeds():
    s = summarise(_units({"shared": {"recon_mse": [1.0, 2.0, 4.0]}, "specific": {"recon_mse": [3.0, 3.0, 3.0]}}))
    assert s["shared"]["recon_mse"]["mean"] == pytest.approx(7 / 3)
    assert s["shared"]["recon_mse"]["std"] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert s["specific"]["recon_mse"]["std"] == 0.0


def test_lead_beyond_the_spread_wins_and_within_it_ties():
    # Lower MSE is better. Lead 0.10, stds 0.01 + 0.01 -> margin 0.02: clear.
    clear = summarise(_units({"shared": {"recon_mse": [0.49, 0.51]}, "specific": {"recon_mse": [0.39, 0.41]}}))
    sd = np.std([0.49, 0.51], ddof=1)
    c = compare(clear, "recon_mse", higher=False)
    assert c["best"] == "specific" and c["clear"] and c["lead"] == pytest.approx(0.10) and c["margin"] == pytest.approx(2 * sd)
    # Lead 0.01 < margin 2 sd = 0.028: no clear winner; a larger spread factor turns a clear lead into a tie.
    tie = summarise(_units({"shared": {"recon_mse": [0.49, 0.51]}, "specific": {"recon_mse": [0.48, 0.50]}}))
    c = compare(tie, "recon_mse", higher=False)
    assert c["best"] == "specific" and not c["clear"] and c["tied"] == ["shared"]
    assert not compare(clear, "recon_mse", higher=False, spread=10.0)["clear"]
    v = objective_verdict(tie, "reconstruction")
    assert v["winner"] is None and v["verdict"].startswith("no clear winner: every difference is within the spread")
    v = objective_verdict(clear, "reconstruction")
    assert v["winner"] == "specific" and "reconstruction MSE" in v["verdict"]


def test_three_methods_the_best_must_clear_every_other():
    s = summarise(_units({"shared": {"i2t_R@1": [0.30, 0.32]}, "specific": {"i2t_R@1": [0.10, 0.12]},
                          "group-sparse": {"i2t_R@1": [0.29, 0.33]}}))
    c = compare(s, "i2t_R@1", higher=True)
    assert c["best"] == "shared" and not c["clear"] and c["tied"] == ["group-sparse"]


def test_metrics_that_disagree_give_no_winner_and_objectives_that_disagree_say_why():
    units = _units({
        "shared": {"recon_mse": [0.20, 0.21], "i2t_R@1": [0.30, 0.31], "i2t_R@5": [0.50, 0.51], "steer_map": [0.10, 0.11]},
        "specific": {"recon_mse": [0.10, 0.11], "i2t_R@1": [0.10, 0.11], "i2t_R@5": [0.60, 0.61], "steer_map": [0.105, 0.11]},
    })
    rec = recommend(units)
    obj = rec["objectives"]
    assert obj["reconstruction"]["winner"] == "specific"
    assert obj["retrieval"]["winner"] is None and "the metrics disagree" in obj["retrieval"]["verdict"]
    assert obj["interpretability"]["winner"] is None and obj["interpretability"]["measured"]
    assert not rec["disagree"]  # one decided objective cannot disagree with itself
    units = _units({"shared": {"recon_mse": [0.20, 0.21], "i2t_R@1": [0.30, 0.31]},
                    "specific": {"recon_mse": [0.10, 0.11], "i2t_R@1": [0.10, 0.11]}}, collapse=(0.90, 0.90), het=(0.80, 0.80))
    rec = recommend(units, ("reconstruction", "retrieval"))
    assert rec["disagree"]
    text = rec["disagreement"]
    assert "collapse 90%" in text and "heterogeneity 0.80" in text and "helps retrieval" in text and "helps reconstruction" in text
    assert rec["overall"] == "specific + post hoc for reconstruction; shared SAE for retrieval"


def test_an_objective_without_its_inputs_is_not_measured():
    rec = recommend(_units({"shared": {"recon_mse": [0.2, 0.2]}, "specific": {"recon_mse": [0.2, 0.2]}}), ("interpretability",))
    v = rec["objectives"]["interpretability"]
    assert not v["measured"] and "--label-field" in v["verdict"]


def test_the_committed_table1_trainings_judged_by_the_same_rule(capsys):
    """docs/table1-emoji's 80-epoch trainings (3 seeds): what diagnose's pilot is compared with."""
    folder = ROOT / "docs" / "table1-emoji"
    docs = [json.loads(p.read_text()) for p in sorted((folder / "units").glob("*.json"))]
    units = units_from_table1(docs)
    assert sorted({u["method"] for u in units}) == ["group-sparse", "iso-energy", "shared", "specific"]
    rec = recommend([u for u in units if u["method"] in ("shared", "specific")])
    obj = rec["objectives"]
    assert obj["reconstruction"]["winner"] is None and obj["retrieval"]["winner"] == "shared"
    assert obj["interpretability"]["winner"] == "shared"
    steer = next(c for c in obj["interpretability"]["metrics"] if c["metric"] == "steer_map")
    assert steer["best"] == "specific" and not steer["clear"]  # post hoc ahead on steering, within the spread
    assert rec["summary"]["shared"]["recon_mse"]["mean"] == pytest.approx(np.mean([d["recon_mse"] for d in docs if d["method"] == "shared"]))
    assert main(["diagnose", "--table1", str(folder)]) == 0
    assert "recommendation: shared SAE for retrieval and interpretability; reconstruction: no clear winner" in capsys.readouterr().out
