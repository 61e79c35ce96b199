"""The synthetic experiment job: end to end on a tiny plan, resume, and the claim checks."""

from __future__ import annotations

import json

import pytest

from dualsae.errors import ConfigError
from dualsae.experiments.synthetic import SyntheticPlan, check_claims, plan_units, run_plan

TINY = SyntheticPlan(distances=(0.0, 0.5), multipliers=(1.0,), seeds=(0,), latents=96, k=4, epochs=2, batch_size=64,
                     n_train=512, n_eval=128, d=64, n_shared=32, n_image=16, n_text=16)


def test_units_order_and_count():
    units = plan_units(SyntheticPlan())
    assert len(units) == 3 * (7 * 2 + 2 * 6)
    assert units[0].distance == 0.5 and units[0].seed == 0  # Fig. 6's distance first
    assert {u.seed for u in units[:26]} == {0}


def test_tiny_job_end_to_end_and_resume(tmp_path):
    report = run_plan(TINY, tmp_path / "job", progress=False)
    assert report["units_done"] == report["units_total"] == 6
    for name in ("results.csv", "results.json", "results.md", "fig5.png", "fig6.png"):
        assert (tmp_path / "job" / name).is_file()
    methods = {(r["method"], r["distance"]) for r in report["rows"]}
    assert ("specific+posthoc", 0.5) in methods and ("shared", 0.0) in methods
    spec = next(r for r in report["rows"] if r["method"] == "specific" and r["distance"] == 0.5)
    post = next(r for r in report["rows"] if r["method"] == "specific+posthoc" and r["distance"] == 0.5)
    # A permutation of the text latents cannot change any reconstruction.
    assert post["feature_recovery_error"] == pytest.approx(spec["feature_recovery_error"], rel=1e-6)
    assert post["reconstruction_error"] == pytest.approx(spec["reconstruction_error"], rel=1e-6)
    assert spec["collapse_rate"] == 0.0
    assert not (tmp_path / "job" / "data").exists() or not any((tmp_path / "job" / "data").iterdir())
    # Resume: nothing left to do, the same report comes back without training.
    mtimes = {p.name: p.stat().st_mtime for p in (tmp_path / "job" / "units").iterdir()}
    again = run_plan(TINY, tmp_path / "job", progress=False)
    assert {p.name: p.stat().st_mtime for p in (tmp_path / "job" / "units").iterdir()} == mtimes
    assert again["fig5"] == report["fig5"]
    with pytest.raises(ConfigError, match="different settings"):
        run_plan(SyntheticPlan(**{**TINY.__dict__, "k": 5}), tmp_path / "job", progress=False)


def _agg(fig5, fig6):
    return {"fig5": fig5, "fig6": fig6}


def _row(d, m, rec, fre, coll=0.0):
    return {"distance": d, "method": m, "reconstruction_error": rec, "feature_recovery_error": fre, "collapse_rate": coll}


def test_claims_hold_and_fail_on_constructed_numbers():
    plan = SyntheticPlan(distances=(0.0, 0.1, 0.3, 0.5, 1.0))
    fig5 = []
    for d, coll in zip(plan.distances, (1.0, 0.9, 0.5, 0.2, 0.05)):
        fig5.append(_row(d, "shared", 1.0 + d, 0.1 + d, coll))
        fig5.append(_row(d, "specific", 1.2, 0.2))
    fig6 = [
        {"method": "specific", "multiplier": None, "feature_recovery_error": 0.2, "feature_alignment_error": 0.99},
        {"method": "specific+posthoc", "multiplier": None, "feature_recovery_error": 0.2, "feature_alignment_error": 0.4},
        {"method": "group-sparse", "multiplier": 1.0, "feature_recovery_error": 0.5, "feature_alignment_error": 0.3},
        {"method": "iso-energy", "multiplier": 1.0, "feature_recovery_error": 0.6, "feature_alignment_error": 0.8},
    ]
    claims = {c["claim"]: c for c in check_claims(plan, _agg(fig5, fig6))}
    assert claims["a"]["holds"] and claims["b"]["holds"] and claims["c"]["holds"]
    # specific - shared: rec diff 0.2 - d crosses zero at d = 0.2; fre diff 0.1 - d at d = 0.1.
    assert claims["a"]["crossing_distance_reconstruction"] == pytest.approx(0.2)
    assert claims["a"]["crossing_distance_feature_recovery"] == pytest.approx(0.1)
    # A baseline that is better on both axes dominates post hoc: (c) fails and names it.
    fig6[2] = {**fig6[2], "feature_recovery_error": 0.19, "feature_alignment_error": 0.3}
    claims = {c["claim"]: c for c in check_claims(plan, _agg(fig5, fig6))}
    assert not claims["c"]["holds"] and claims["c"]["dominated_by"][0]["method"] == "group-sparse"
    # Collapse that rises with distance: (b) fails.
    for r in fig5:
        if r["method"] == "shared":
            r["collapse_rate"] = r["distance"]
    assert not {c["claim"]: c for c in check_claims(plan, _agg(fig5, fig6))}["b"]["holds"]
    json.dumps(check_claims(plan, _agg(fig5, fig6)))  # the report must be JSON-serialisable


def _unit_metrics(folder):
    """Each unit file's rows without its timings, keyed by unit."""
    drop = {"train_seconds", "align_seconds"}
    return {p.name: [{k: v for k, v in row.items() if k not in drop} for row in json.loads(p.read_text())]
            for p in sorted((folder / "units").glob("*.json"))}


def test_parallel_workers_give_the_sequential_results(tmp_path):
    import torch

    plan = SyntheticPlan(**{**TINY.__dict__, "seeds": (0, 1)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as a 1-thread worker, so the numbers must agree
    try:
        run_plan(plan, tmp_path / "seq", progress=False)
    finally:
        torch.set_num_threads(threads)
    report = run_plan(plan, tmp_path / "par", progress=False, workers=2, threads_per_worker=1)
    assert report["units_done"] == report["units_total"] == 12
    seq, par = _unit_metrics(tmp_path / "seq"), _unit_metrics(tmp_path / "par")
    assert seq.keys() == par.keys() and len(seq) == 12
    for name in seq:
        for a, b in zip(seq[name], par[name], strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert b[key] == (pytest.approx(a[key], rel=1e-6, abs=1e-9) if isinstance(a[key], float) else a[key]), (name, key)
    # Every data set (and its lock) is gone once its units are done.
    assert not any((tmp_path / "par" / "data").iterdir())
    with pytest.raises(ConfigError, match="workers"):
        run_plan(plan, tmp_path / "par", progress=False, workers=0)
