"""The synthetic experiment job: end to end on a tiny plan, resume, and the claim checks."""

from __future__ import annotations

import json

import pytest

from dualsae.core.errors import ConfigError
from dualsae.experiments.synthetic.claims import budget_changes, check_claims
from dualsae.experiments.synthetic.job import run_plan
from dualsae.experiments.synthetic.plan import SyntheticPlan, plan_units
from dualsae.experiments.synthetic.results import claim_line, markdown_table
from dualsae.training.curves import plateau_change

TINY_SETTINGS = dict(distances=(0.0, 0.5), group_sparse_multipliers=(1.0,), iso_energy_multipliers=(1.0,), seeds=(0,),
                     latents=96, k=4, epochs=(2,), batch_size=64, n_train=512, n_eval=128, d=64, n_shared=32, n_image=16,
                     n_text=16)
TINY = SyntheticPlan.from_settings(**TINY_SETTINGS)


def test_units_order_and_count():
    units = plan_units(SyntheticPlan())
    # 7 distances x 2 methods, 6 group-sparse + 9 Iso-Energy multipliers (up to 1000x), 3 seeds.
    assert len(units) == 3 * (7 * 2 + 6 + 9)
    assert units[0].distance == 0.5 and units[0].seed == 0  # Fig. 6's distance first
    assert {u.seed for u in units[:29]} == {0}
    assert {u.multiplier for u in units if u.method == "iso-energy"} >= {100.0, 300.0, 1000.0}
    # A second budget trains Fig. 5 again (keys carry the budget); Fig. 6 stays at the first budget.
    two = plan_units(SyntheticPlan(epochs=(10, 40)))
    assert len(two) == len(units) + 3 * 7 * 2
    assert {u.epochs for u in two if u.figure == "fig6"} == {10}
    keys = [u.key for u in two]
    assert len(set(keys)) == len(keys) and "shared_dist0.5_seed0" in keys and "shared_dist0.5_seed0_ep40" in keys


def test_plateau_change_measures_the_last_tenth():
    flat = [1.0] * 100
    assert plateau_change(flat) == 0.0
    # Falling by 1% per 10% of the steps: (mean over 80-90%) / (mean over 90-100%) - 1 = 1%.
    falling = [1.0 - 0.001 * i for i in range(100)]
    expect = (sum(falling[80:90]) / 10 - sum(falling[90:]) / 10) / (sum(falling[90:]) / 10)
    assert plateau_change(falling) == pytest.approx(expect) and plateau_change(falling) > 0.009
    assert plateau_change([1.0] * 10) is None


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
    # Every training records its loss curve and plateau statistic; the report prints them.
    assert spec["steps"] == 2 * (512 // 64) and len(spec["train_curve"]) == spec["steps"]
    assert (tmp_path / "job" / "curves.png").is_file()
    assert "last-10% loss change" in (tmp_path / "job" / "results.md").read_text()
    # Resume: nothing left to do, the same report comes back without training.
    mtimes = {p.name: p.stat().st_mtime for p in (tmp_path / "job" / "units").iterdir()}
    again = run_plan(TINY, tmp_path / "job", progress=False)
    assert {p.name: p.stat().st_mtime for p in (tmp_path / "job" / "units").iterdir()} == mtimes
    assert again["fig5"] == report["fig5"]
    with pytest.raises(ConfigError, match="different settings"):
        run_plan(SyntheticPlan.from_settings(**{**TINY_SETTINGS, "k": 5}), tmp_path / "job", progress=False)
    # Adding a budget extends the finished job: only the new budget's Fig. 5 units train.
    longer = run_plan(SyntheticPlan(**{**TINY.__dict__, "epochs": (2, 3)}), tmp_path / "job", progress=False)
    assert longer["units_done"] == longer["units_total"] == 10
    assert {p.name: p.stat().st_mtime for p in (tmp_path / "job" / "units").iterdir() if p.name in mtimes} == mtimes
    assert {c["epochs"] for c in longer["claims"] if c["claim"] == "a"} == {2, 3}


def test_a_job_written_before_the_epochs_axis_resumes(tmp_path):
    """plan.json of older jobs had ``epochs: int`` and one ``multipliers`` list; their units are 10-epoch units."""
    job = tmp_path / "job"
    (job / "units").mkdir(parents=True)
    old = {"distances": [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0], "fig6_distance": 0.5, "seeds": [0, 1, 2], "latents": 8192, "k": 16,
           "batch_size": 256, "n_train": 50000, "n_eval": 10000, "d": 256, "n_shared": 1024, "n_image": 512, "n_text": 512,
           "group_sparse_lambda": None, "iso_energy_beta": None, "epochs": 10, "multipliers": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0]}
    (job / "plan.json").write_text(json.dumps(old))
    # The new default plan only adds Iso-Energy multipliers: accepted (max_units=0 trains nothing).
    report = run_plan(SyntheticPlan(), job, progress=False, max_units=0)
    assert report["units_done"] == 0 and report["units_total"] == 87
    with pytest.raises(ConfigError, match="d"):
        run_plan(SyntheticPlan.from_settings(d=128), job, progress=False, max_units=0)


def _agg(fig5, fig6):
    return {"fig5": fig5, "fig6": fig6}


def _row(d, m, rec, fre, coll=0.0):
    return {"distance": d, "method": m, "reconstruction_error": rec, "feature_recovery_error": fre, "collapse_rate": coll}


def test_claims_hold_and_fail_on_constructed_numbers():
    plan = SyntheticPlan(distances=(0.0, 0.1, 0.3, 0.5, 1.0))
    fig5 = []
    for d, coll in zip(plan.distances, (1.0, 0.9, 0.5, 0.2, 0.05)):
        fig5.append(_row(d, "shared", 1.0 + d, 0.1 + d, coll))
        fig5.append(_row(d, "specific", 1.05, 0.15))
    fig6 = [
        {"method": "specific", "multiplier": None, "feature_recovery_error": 0.2, "feature_alignment_error": 0.99},
        {"method": "specific+posthoc", "multiplier": None, "feature_recovery_error": 0.2, "feature_alignment_error": 0.4},
        {"method": "group-sparse", "multiplier": 1.0, "feature_recovery_error": 0.5, "feature_alignment_error": 0.45},
        {"method": "iso-energy", "multiplier": 1.0, "feature_recovery_error": 0.6, "feature_alignment_error": 0.8},
    ]
    claims = {c["claim"]: c for c in check_claims(plan, _agg(fig5, fig6))}
    assert claims["a"]["holds"] and claims["b"]["holds"] and claims["c"]["holds"]
    assert claims["a"]["holds_from_distance"] == 0.1
    # specific - shared: rec diff 0.05 - d crosses zero at d = 0.05; fre diff 0.05 - d at d = 0.05.
    assert claims["a"]["crossing_distance_reconstruction"] == pytest.approx(0.05)
    assert claims["a"]["crossing_distance_feature_recovery"] == pytest.approx(0.05)
    # Shared ahead at 0.1 only: (a) fails at every-non-zero-distance and reports that it holds from 0.3.
    fig5[3] = _row(0.1, "specific", 1.2, 0.15)
    claims = {c["claim"]: c for c in check_claims(plan, _agg(fig5, fig6))}
    assert not claims["a"]["holds"] and claims["a"]["holds_from_distance"] == 0.3
    assert claims["a"]["wins_by_distance"] == {0.1: False, 0.3: True, 0.5: True, 1.0: True}
    # A baseline with lower feature-alignment error only (Fig. 6's caption claims both lower): (c) fails and names it.
    fig6[2] = {**fig6[2], "feature_alignment_error": 0.3}
    claims = {c["claim"]: c for c in check_claims(plan, _agg(fig5, fig6))}
    assert not claims["c"]["holds"] and claims["c"]["not_beaten"][0]["method"] == "group-sparse"
    assert claims["c"]["holds_up_to"] == {"group-sparse": None, "iso-energy": 1.0} and not claims["c"]["dominated_by"]
    assert claims["c"]["best_baseline_fae"]["fae"] == 0.3
    # Collapse that rises with distance: (b) fails.
    for r in fig5:
        if r["method"] == "shared":
            r["collapse_rate"] = r["distance"]
    assert not {c["claim"]: c for c in check_claims(plan, _agg(fig5, fig6))}["b"]["holds"]
    json.dumps(check_claims(plan, _agg(fig5, fig6)))  # the report must be JSON-serialisable


def test_claims_report_convergence_and_budget_changes():
    plan = SyntheticPlan(distances=(0.1, 0.5), epochs=(10, 40))
    fig5 = []
    for epochs, spec_rec, change in ((10, 1.3, 0.05), (40, 1.0, 0.002)):
        for d in plan.distances:
            fig5.append({**_row(d, "shared", 1.1 + d, 0.2 + d, 0.9 - d), "epochs": epochs, "plateau_change_max": change, "seeds": 1})
            fig5.append({**_row(d, "specific", spec_rec, 0.15), "epochs": epochs, "plateau_change_max": change / 2, "seeds": 1})
    claims = check_claims(plan, _agg(fig5, []))
    a10, a40 = (next(c for c in claims if c["claim"] == "a" and c["epochs"] == e) for e in (10, 40))
    assert not a10["holds"] and a10["holds_from_distance"] == 0.5 and not a10["converged"]
    assert a40["holds"] and a40["converged"] and a40["plateau_change_max"] == 0.002
    changes = budget_changes(claims)
    assert any("claim (a)" in line for line in changes) and any(line.startswith("distance 0.1") for line in changes)
    report = {"plan": {"epochs": [10, 40], "fig6_distance": 0.5}, "fig5": fig5, "fig6": [], "claims": claims,
              "budget_changes": changes, "units_done": 8, "units_total": 8}
    text = markdown_table(report)
    assert "(a, 40 epochs) HOLDS" in text and "(a, 10 epochs) DOES NOT HOLD" in text and "NOT every training reached" in text


def test_a_claim_on_part_of_its_grid_is_partial_not_a_verdict():
    """A budget run for some distances only (or a job still running) must not print HOLDS / DOES NOT
    HOLD for a claim about every distance, nor count as a change between budgets."""
    plan = SyntheticPlan(distances=(0.1, 0.3, 0.5), epochs=(10, 40), group_sparse_multipliers=(1.0, 10.0),
                         iso_energy_multipliers=(1.0,))
    fig5 = []
    for epochs, dists in ((10, plan.distances), (40, (0.5,))):
        for d in dists:
            fig5.append({**_row(d, "shared", 1.3 if epochs == 10 else 1.0, 0.2, 0.9 - d), "epochs": epochs})
            fig5.append({**_row(d, "specific", 1.1, 0.15), "epochs": epochs})
    fig6 = [
        {"method": "specific", "multiplier": None, "feature_recovery_error": 0.2, "feature_alignment_error": 0.99},
        {"method": "specific+posthoc", "multiplier": None, "feature_recovery_error": 0.2, "feature_alignment_error": 0.4},
        {"method": "group-sparse", "multiplier": 1.0, "feature_recovery_error": 0.5, "feature_alignment_error": 0.45},
        {"method": "iso-energy", "multiplier": 1.0, "feature_recovery_error": 0.6, "feature_alignment_error": 0.8},
    ]
    claims = check_claims(plan, _agg(fig5, fig6))
    a10, a40 = (next(c for c in claims if c["claim"] == "a" and c["epochs"] == e) for e in (10, 40))
    assert a10["grid"]["complete"] and not a40["grid"]["complete"] and a40["grid"]["missing"] == ["0.1", "0.3"]
    assert claim_line(a10).startswith("- (a, 10 epochs) HOLDS")
    assert claim_line(a40).startswith("- (a, 40 epochs) PARTIAL, 1 of 3 distances done (so far it does not hold; missing: 0.1, 0.3)")
    c = next(c for c in claims if c["claim"] == "c")
    assert c["grid"] == {"what": "baseline multipliers", "planned": 3, "done": 2, "missing": ["group-sparse 10x"], "complete": False}
    assert "PARTIAL, 2 of 3 baseline multipliers done" in claim_line(c)
    assert budget_changes(claims) == []  # (a) differs between the budgets, but 40 epochs is partial


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


def test_claim_d_reads_the_baselines_trade_offs():
    def pt(method, mult, fre, fae):
        return {"method": method, "multiplier": mult, "feature_recovery_error": fre, "feature_alignment_error": fae}

    fig6 = [pt("specific", None, 0.1, 1.0), pt("specific+posthoc", None, 0.1, 0.1),
            pt("iso-energy", 1.0, 0.14, 0.95), pt("iso-energy", 1000.0, 0.38, 0.0001),
            pt("group-sparse", 1.0, 0.6, 0.96), pt("group-sparse", 10.0, 1.0, 1.0)]
    claims = {c["claim"]: c for c in check_claims(SyntheticPlan(distances=()), _agg([], fig6))}
    assert claims["d"]["holds"] and claims["d"]["iso_energy_trades"] and claims["d"]["group_sparse_degenerates"]
    # Iso-Energy at 1000x buys alignment with recovery: the caption's "both lower" fails there only.
    assert not claims["c"]["holds"] and claims["c"]["holds_up_to"] == {"group-sparse": 10.0, "iso-energy": 1.0}
    assert claims["c"]["dominated_by"] == []
    fig6[3] = pt("iso-energy", 1000.0, 0.38, 0.99)  # no alignment gained: no trade-off
    assert not {c["claim"]: c for c in check_claims(SyntheticPlan(distances=()), _agg([], fig6))}["d"]["holds"]


@pytest.mark.skipif(bool(__import__("os").environ.get("DUALSAE_SKIP_DEMO")), reason="DUALSAE_SKIP_DEMO is set")
def test_the_demo_plan_converges_and_every_claim_holds(tmp_path):
    """`make demo` (the quick plan, about 3.5 minutes on 2 idle cores): every training reaches its plateau and
    claims (a)-(d) hold. Set DUALSAE_SKIP_DEMO=1 to skip it while iterating on other tests."""
    from dualsae.experiments.synthetic.claims import PLATEAU_TOLERANCE
    from dualsae.experiments.synthetic.plan import QUICK

    report = run_plan(QUICK, tmp_path / "demo", progress=False, workers=2, threads_per_worker=1)
    assert report["units_done"] == report["units_total"] == 10
    claims = {c["claim"]: c for c in report["claims"]}
    assert set(claims) == {"a", "b", "c", "d"}
    for name, claim in claims.items():
        assert claim["holds"], (name, claim)
        assert claim["converged"] and claim["plateau_change_max"] < PLATEAU_TOLERANCE, (name, claim["plateau_change_max"])
    assert claims["a"]["holds_from_distance"] == min(QUICK.distances)
