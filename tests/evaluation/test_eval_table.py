"""The evaluation table (dualsae.evaluation.eval_table): its baselines reproduce the exact numbers of a random
ranking / majority classifier (brute force over every ordering), each task's rows carry the model, the raw
embeddings and the baseline, ``dualsae eval`` prints it and writes metrics.md, and a misspelt meta field is a
one-line error listing the store's fields."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from dualsae.cli import main
from dualsae.evaluation.eval_table import markdown_table, table_rows, text_table
from dualsae.evaluation.metrics.concept_steering import random_ranking, ranked_ap_rr
from dualsae.evaluation.metrics.retrieval import RetrievalProtocol, chance_recall
from tests.metrics_helpers import make_category_store, make_specific_run


def test_chance_recall_equals_the_share_of_orderings_with_a_hit():
    # 6 gallery items; query keys with 1, 2 and 3 positives.
    gallery = np.array([0, 1, 1, 2, 2, 2])
    proto = RetrievalProtocol("caption", np.arange(3), np.array([0, 1, 2]), np.arange(6), gallery)
    got = chance_recall(proto, ks=(1, 2, 4))["image_to_text"]
    for k in (1, 2, 4):
        per_query = [np.mean([any(gallery[list(top)] == q) for top in itertools.combinations(range(6), k)]) for q in (0, 1, 2)]
        assert got[f"R@{k}"] == pytest.approx(np.mean(per_query), abs=1e-12)
    one = RetrievalProtocol("row", np.arange(50), np.arange(50), np.arange(50), np.arange(50))
    assert chance_recall(one, ks=(1, 10))["text_to_image"] == pytest.approx({"R@1": 1 / 50, "R@10": 10 / 50})  # k / N


@pytest.mark.parametrize("n,r", [(5, 1), (6, 2), (7, 3)])
def test_random_ranking_equals_the_mean_over_every_ordering(n, r):
    relevant = torch.zeros(n, dtype=torch.bool)
    relevant[:r] = True
    perms = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.float64)  # each ordering's scores
    ap, rr = ranked_ap_rr(-perms, relevant)
    want_ap, want_rr = random_ranking(n, r)
    assert want_ap == pytest.approx(float(ap.mean()), abs=1e-12) and want_rr == pytest.approx(float(rr.mean()), abs=1e-12)


def _doc():
    return {"model": "m", "method": "aligned", "m": 8, "data": "d", "split": "test", "n_rows": 10, "skipped": {"monosemanticity": "needs --external"},
            "tasks": {"recon": {"image": {"mse": 0.2, "explained_variance": 0.6}, "text": {"mse": 0.1, "explained_variance": 0.75}},
                      "zeroshot": {"top1": 0.58, "mean_per_class": 0.43, "majority_baseline": 0.3, "per_class": [0.5, 0.2, None, 0.6],
                                   "embedding_reference": {"top1": 0.53, "mean_per_class": 0.48}, "n_images": 10, "n_classes": 4}}}


def test_table_rows_hold_model_raw_and_baseline():
    rows = {(r.task, r.metric): r for r in table_rows(_doc())}
    mse = rows[("recon", "MSE (image)")]
    assert mse.model == 0.2 and mse.raw is None and mse.baseline == pytest.approx(0.2 / 0.4) and not mse.higher_is_better  # total variance
    assert rows[("recon", "explained variance (text)")].baseline == 0.0
    top1, mpc = rows[("zeroshot", "top-1")], rows[("zeroshot", "mean per class")]
    assert (top1.model, top1.raw, top1.baseline) == (0.58, 0.53, 0.3)
    assert (mpc.model, mpc.raw) == (0.43, 0.48) and mpc.baseline == pytest.approx(1 / 3)  # majority: 1 of the 3 classes with images
    text, md = text_table(_doc()), markdown_table(_doc())
    assert "this model" in text and "raw embeddings" in text and "monosemanticity: skipped (needs --external)" in text
    assert "| zeroshot | mean per class ↑ | 0.4300 | 0.4800 | 0.3333 | majority class |" in md


def test_eval_prints_the_table_and_writes_metrics_md(tmp_path, capsys):
    data, model = make_category_store(tmp_path / "data"), make_specific_run(tmp_path / "run")
    out = tmp_path / "e"
    assert main(["eval", str(model), "--data", str(data), "--out", str(out), "--label-field", "category", "--concept-field", "category",
                 "--sources", "5", "--negatives", "20", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "metrics.json").read_text())
    md = (out / "metrics.md").read_text()
    for task in ("recon", "retrieval", "zeroshot", "steering"):
        assert f"| {task} |" in md and task in printed
    zs = doc["tasks"]["zeroshot"]
    assert f"| zeroshot | top-1 ↑ | {zs['top1']:.4f} | {zs['embedding_reference']['top1']:.4f} | {zs['majority_baseline']:.4f} |" in md
    ch = doc["tasks"]["retrieval"]["chance"]["image_to_text"]
    assert 0 < ch["R@1"] < ch["R@5"] < ch["R@10"] <= 1


def test_misspelt_label_field_is_an_error_listing_the_fields(tmp_path, capsys):
    data, model = make_category_store(tmp_path / "data"), make_specific_run(tmp_path / "run")
    out = tmp_path / "e"
    assert main(["eval", str(model), "--data", str(data), "--out", str(out), "--label-field", "categroy", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--label-field (label_field) 'categroy'" in err
    assert "caption, category, split, tags" in err and "meta.jsonl" in err
    assert not (out / "metrics.json").exists()
