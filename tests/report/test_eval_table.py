"""The report's evaluation table holds metrics.json's numbers (as eval wrote them, rounded to 4 digits)
in the model / raw-embedding / baseline columns, and the train/test reconstruction flags over-fitting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualsae.report.eval_table import eval_table, train_test_reconstruction

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "eval" / "metrics.json"


def test_table_numbers_equal_metrics_json():
    doc = json.loads(FIXTURE.read_text())
    t = doc["tasks"]
    rows = {(r["task"], r["metric"]): r for r in eval_table(doc)["rows"]}

    def check(key, model, raw=None, baseline=None):
        r = rows[key]
        for col, want in (("model", model), ("raw", raw), ("baseline", baseline)):
            assert (r[col] is None) if want is None else r[col] == pytest.approx(want, abs=5e-5), (key, col)

    rec = t["recon"]["image"]
    check(("reconstruction", "MSE image (eq. 4)"), rec["mse"], None, rec["mse"] / (1 - rec["explained_variance"]))
    check(("reconstruction", "explained variance text"), t["recon"]["text"]["explained_variance"], None, 0.0)
    r, ref = t["retrieval"], t["retrieval"]["embedding_reference"]
    for k in (1, 5, 10):
        check(("retrieval", f"image → text R@{k}"), r["image_to_text"][f"R@{k}"], ref["image_to_text"][f"R@{k}"], k / r["n_texts"])
        check(("retrieval", f"text → image R@{k}"), r["text_to_image"][f"R@{k}"], ref["text_to_image"][f"R@{k}"], k / r["n_images"])
    z = t["zeroshot"]
    check(("zero-shot", "top-1"), z["top1"], z["embedding_reference"]["top1"], z["majority_baseline"])
    check(("zero-shot", "mean per class"), z["mean_per_class"], z["embedding_reference"]["mean_per_class"], 1 / z["n_classes"])
    s = t["steering"]
    check(("steering", "mAP"), s["map"], s["map_unsteered"])
    check(("steering", "MRR"), s["mrr"], s["mrr_unsteered"])
    check(("monosemanticity", "MS image (mean over latents)"), t["monosemanticity"]["image"]["mean"])
    assert len(rows) == 4 + 6 + 2 + 2 + 2  # every task and metric once; no raw JSON keys
    assert all("_" not in r["metric"] for r in rows.values())  # names, not JSON keys


def test_skipped_tasks_are_listed_and_missing_tasks_absent():
    doc = {"tasks": {"recon": {"image": {"mse": 0.2, "explained_variance": 0.5}}}, "skipped": {"zeroshot": "no labels"}}
    t = eval_table(doc)
    assert [r["metric"] for r in t["rows"]] == ["MSE image (eq. 4)", "explained variance image"]
    assert t["skipped"] == {"zeroshot": "no labels"}


def test_train_test_reconstruction_flags_overfitting():
    train = {"image": {"mse": 0.128, "explained_variance": 0.8, "n_rows": 10}, "text": {"mse": 0.2, "explained_variance": 0.7, "n_rows": 10}}
    test = {"image": {"mse": 0.200, "explained_variance": 0.7, "n_rows": 5}, "text": {"mse": 0.21, "explained_variance": 0.69, "n_rows": 5}}
    got = train_test_reconstruction(train, test, overfit_ratio=1.25)["modalities"]
    assert got["image"]["ratio"] == pytest.approx(0.2 / 0.128, abs=1e-3) and got["image"]["overfit"]
    assert not got["text"]["overfit"]
    assert train_test_reconstruction(None, None) is None
