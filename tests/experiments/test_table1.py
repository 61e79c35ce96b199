"""``dualsae reproduce table1`` on a tiny store: units carry the training curve, the plateau
statistic and the model diagnostics; the table and the diagnostics table are written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dualsae.core.errors import ConfigError
from dualsae.experiments.table1.table import Table1Plan, run_table1
from dualsae.store.paired import write_store
from dualsae.training.curves import CurveRecorder, plateau_change


def _store(folder, n=160, d=8, seed=0):
    rng = np.random.default_rng(seed)
    cats = rng.choice(["red", "green", "blue"], n)
    centre = {c: rng.normal(size=d) for c in ("red", "green", "blue")}
    image = np.stack([centre[c] for c in cats]) + 0.5 * rng.normal(size=(n, d))
    text = image + 0.3 * rng.normal(size=(n, d))
    meta = [{"caption": f"{c} thing {i % 7}", "category": str(c), "split": "test" if i % 4 == 0 else "train"}
            for i, c in enumerate(cats)]
    return write_store(folder, image, text, meta)


def test_plateau_statistic_by_hand():
    rec = CurveRecorder()
    # 10 epochs of 2 steps; the logged MSE is the mean of the modality terms
    for step, v in enumerate([10, 8, 6, 6, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 3.3, 3.1, 3.05, 2.95]):
        rec(step + 1, {"mse_image": v + 1, "mse_text": v - 1, "dead_frac": 0.0})
    s = rec.summary(steps_per_epoch=2)
    assert s["epoch_mean_mse"] == pytest.approx([9, 6, 5, 4, 4, 4, 4, 4, 3.2, 3.0])
    # The one plateau statistic (training/curves.plateau_change): steps [16, 18) mean 3.2, steps [18, 20) mean 3.0
    assert s["last10_change"] == pytest.approx((3.2 - 3.0) / 3.0) and s["steps"] == 20
    assert plateau_change([1.0]) is None


def test_table1_units_diagnostics_and_resume(tmp_path):
    data = _store(tmp_path / "data")
    ext = tmp_path / "ext"
    ext.mkdir()
    rng = np.random.default_rng(5)
    np.save(ext / "image.npy", rng.normal(size=(160, 6)).astype(np.float16))  # widths differ on purpose
    np.save(ext / "text.npy", rng.normal(size=(160, 3)).astype(np.float16))
    plan = Table1Plan.from_settings(train=str(data), eval=str(data), external=str(ext), label_field="category",
                                    seeds=(0,), latents=16, k=2, epochs=7, batch_size=40)
    out = tmp_path / "t1"
    rep = run_table1(plan, out, progress=False, log=lambda s: None, methods=("shared", "specific"))
    names = sorted(p.stem for p in (out / "units").glob("*.json"))
    assert names == ["shared_seed0", "specific+posthoc_seed0", "specific_seed0"]
    sh = json.loads((out / "units" / "shared_seed0.json").read_text())
    # 120 training rows, batch 40: 3 steps per epoch, 7 epochs
    assert sh["curve"]["steps"] == 21 and len(sh["curve"]["epoch_mean_mse"]) == 7
    per_step = [loss for _, loss in sh["curve"]["train_curve"]]  # every step (fewer than CURVE_POINTS)
    assert len(per_step) == 21
    assert sh["curve"]["last10_change"] == pytest.approx(plateau_change(per_step), rel=1e-4)
    d = sh["diagnostics"]
    assert d["rows"] == 120 and 0 <= d["collapse_rate"] <= 1 and set(d["dead_fraction"]) == {"image", "text", "either"}
    # a matched pair of a shared SAE that is collapsed has cosine distance 0
    assert d["heterogeneity"]["matched"]["count"] == d["matched"] > 0
    if d["collapse_rate"] > 0.5:
        assert d["heterogeneity"]["matched"]["median"] == pytest.approx(0.0, abs=1e-6)
    sp = json.loads((out / "units" / "specific_seed0.json").read_text())
    assert sp["diagnostics"]["collapse_rate"] is None and sp["train_config"]["latents"] == 16
    assert sp["mono_image"] is not None and sp["mono_text"] is not None
    md = (out / "table1.md").read_text()
    assert "Model diagnostics" in md and "collapse rate (F.2)" in md and (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert {e["method"] for e in rep["table"]} == {"shared", "specific", "specific+posthoc"}
    # resuming with the other rows leaves the finished units alone
    before = (out / "units" / "shared_seed0.json").read_text()
    run_table1(plan, out, progress=False, log=lambda s: None, methods=("shared",))
    assert (out / "units" / "shared_seed0.json").read_text() == before
    # plan.json in the flat layout of the code before the plan held a TrainConfig: resumes, no training
    old = {"train": str(data), "eval": str(data), "train_split": "train", "eval_split": "test", "zeroshot": None,
           "external": str(ext), "label_field": "category", "concept_field": None, "positives": "auto", "seeds": [0],
           "latents": 16, "k": 2, "epochs": 7, "batch_size": 40, "steering_alpha": 1.0}
    (out / "plan.json").write_text(json.dumps(old))
    run_table1(plan, out, progress=False, log=lambda s: None, methods=("shared", "specific"))
    assert (out / "units" / "shared_seed0.json").read_text() == before
    (out / "plan.json").write_text(json.dumps({**old, "k": 3}))
    with pytest.raises(ConfigError, match=r"plan.json: this folder holds a table job with different settings \(training.sae.k\)"):
        run_table1(plan, out, progress=False, log=lambda s: None, methods=("shared",))
