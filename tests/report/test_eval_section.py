"""The report's evaluation section holds metrics.json's numbers (as eval wrote them, rounded to 4 digits)
in the model / raw-embedding / baseline columns, row for row the table ``dualsae eval`` prints, and the
train/test reconstruction flags over-fitting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualsae.evaluation.eval_table import table_rows
from dualsae.report.eval_section import eval_section, split_reconstruction

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "eval" / "metrics.json"


def test_section_numbers_equal_metrics_json():
    doc = json.loads(FIXTURE.read_text())
    t = doc["tasks"]
    rows = {(r["task"], r["metric"]): r for r in eval_section(doc)["rows"]}

    def check(key, model, raw=None, baseline=None):
        r = rows[key]
        for col, want in (("model", model), ("raw", raw), ("baseline", baseline)):
            assert (r[col] is None) if want is None else r[col] == pytest.approx(want, abs=5e-5), (key, col)

    rec = t["recon"]["image"]
    check(("recon", "MSE (image)"), rec["mse"], None, rec["mse"] / (1 - rec["explained_variance"]))
    check(("recon", "explained variance (text)"), t["recon"]["text"]["explained_variance"], None, 0.0)
    r, ref = t["retrieval"], t["retrieval"]["embedding_reference"]
    for k in (1, 5, 10):  # this metrics.json predates the stored chance level: no baseline, not a guess
        check(("retrieval", f"image→text R@{k}"), r["image_to_text"][f"R@{k}"], ref["image_to_text"][f"R@{k}"])
        check(("retrieval", f"text→image R@{k}"), r["text_to_image"][f"R@{k}"], ref["text_to_image"][f"R@{k}"])
    z = t["zeroshot"]
    check(("zeroshot", "top-1"), z["top1"], z["embedding_reference"]["top1"], z["majority_baseline"])
    check(("zeroshot", "mean per class"), z["mean_per_class"], z["embedding_reference"]["mean_per_class"],
          1 / sum(v is not None for v in z["per_class"]))
    s = t["steering"]
    assert rows[("steering", "mAP")]["model"] == pytest.approx(s["map"], abs=5e-5)
    assert rows[("steering", "MRR")]["raw"] == pytest.approx(s["mrr_unsteered"], abs=5e-5)
    check(("monosemanticity", "MS mean (image)"), t["monosemanticity"]["image"]["mean"])
    # One table: the report shows exactly the rows `dualsae eval` prints, in its order.
    assert [(r["task"], r["metric"]) for r in eval_section(doc)["rows"]] == [(r.task, r.metric) for r in table_rows(doc)]
    assert all("_" not in r["metric"] for r in rows.values())  # names, not JSON keys


def test_skipped_tasks_are_listed_and_missing_tasks_absent():
    doc = {"tasks": {"recon": {"image": {"mse": 0.2, "explained_variance": 0.5}}}, "skipped": {"zeroshot": "no labels"}}
    t = eval_section(doc)
    assert [r["metric"] for r in t["rows"]] == ["MSE (image)", "explained variance (image)"]
    assert t["rows"][0]["baseline"] == pytest.approx(0.4) and t["rows"][0]["note"] == "baseline: mean embedding"
    assert t["skipped"] == {"zeroshot": "no labels"}


def test_split_reconstruction_flags_overfitting():
    train = {"image": {"mse": 0.128, "explained_variance": 0.8, "n_rows": 10}, "text": {"mse": 0.2, "explained_variance": 0.7, "n_rows": 10}}
    test = {"image": {"mse": 0.200, "explained_variance": 0.7, "n_rows": 5}, "text": {"mse": 0.21, "explained_variance": 0.69, "n_rows": 5}}
    got = split_reconstruction(train, test, overfit_ratio=1.25)["modalities"]
    assert got["image"]["ratio"] == pytest.approx(0.2 / 0.128, abs=1e-3) and got["image"]["overfit"]
    assert not got["text"]["overfit"]
    only_test = split_reconstruction(None, test, 1.25)["modalities"]["image"]
    assert only_test["ratio"] is None and not only_test["overfit"] and only_test["test"]["mse"] == 0.2
    assert split_reconstruction(None, None, 1.25) is None
