"""``dualsae eval`` and dualsae.evaluation.tasks: tasks, skips, files, agreement with the metric functions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dualsae.cli import main
from dualsae.core.errors import ConfigError, DataError
from dualsae.evaluation.metrics.retrieval import cross_modal_retrieval
from dualsae.evaluation.tasks import EvalOptions, evaluate, parse_tasks
from dualsae.store.paired import PairedEmbeddings
from tests.metrics_helpers import brute_force_monosemanticity, dense_codes, make_category_store, make_specific_run, make_zeroshot_store


def test_eval_skips_tasks_without_inputs(tmp_path, capsys):
    data, model = make_category_store(tmp_path / "data"), make_specific_run(tmp_path / "run")
    out = tmp_path / "m" / "metrics.json"
    rc = main(["eval", str(model), "--data", str(data), "--out", str(out.parent), "--no-progress"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "dualsae.metrics/1" and doc["method"] == "specific" and doc["split"] == "test"
    assert doc["n_rows"] == 40 and set(doc["tasks"]) == {"recon", "retrieval"}
    assert "--zeroshot" in doc["skipped"]["zeroshot"] and "--concept-field" in doc["skipped"]["steering"]
    assert "--external" in doc["skipped"]["monosemanticity"]
    assert doc["tasks"]["retrieval"]["positives"] == "caption"  # auto: captions repeat, no group field
    text = capsys.readouterr()
    assert "image→text R@1" in text.out and "monosemanticity: skipped (needs --external" in text.out
    assert (out.parent / "metrics.md").read_text().count("| retrieval |") == 6  # R@1/5/10 both ways
    assert "skipping zeroshot" in text.err


def test_eval_all_tasks_agree_with_library(tmp_path, capsys):
    data, model = make_category_store(tmp_path / "data"), make_specific_run(tmp_path / "run")
    ext = make_category_store(tmp_path / "ext", d=5, seed=9)  # another "encoder" of the same 120 rows
    zs = make_zeroshot_store(tmp_path / "zs")
    out = tmp_path / "ev" / "metrics.json"
    rc = main(["eval", str(model), "--data", str(data), "--out", str(tmp_path / "ev"), "--tasks", "all", "--positives", "row",
               "--zeroshot", str(zs), "--external", str(ext), "--concept-field", "tags", "--no-progress"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["skipped"] == {} and set(doc["tasks"]) == {"recon", "retrieval", "zeroshot", "steering", "monosemanticity"}
    from dualsae.models.load import load_model

    pair = load_model(model)
    test = PairedEmbeddings.open(data).split("test")
    ref = cross_modal_retrieval(pair, test, positives="row")
    assert doc["tasks"]["retrieval"]["image_to_text"]["R@1"] == pytest.approx(ref["image_to_text"]["R@1"])
    st = doc["tasks"]["steering"]
    assert st["selection_rows"] == "train split" and set(st["per_concept"]) <= {"red", "green", "blue", "x", "y"}
    assert doc["tasks"]["zeroshot"]["n_classes"] == 3 and "image_reconstruction" in doc["tasks"]["zeroshot"]
    ms = doc["tasks"]["monosemanticity"]
    assert (out.parent / ms["plot_file"]).is_file()
    curve = np.load(out.parent / ms["image"]["curve_file"])
    assert len(curve) == ms["image"]["n_scored"] and np.all(np.diff(curve) <= 0)
    # caption-prototype zero-shot from the training split, through the library
    res = evaluate(pair, test, EvalOptions(tasks=("zeroshot",), label_field="category", progress=False),
                   train_store=PairedEmbeddings.open(data).split("train"))
    assert res["tasks"]["zeroshot"]["classes"] == ["blue", "green", "red"]
    assert res["tasks"]["zeroshot"]["n_images"] == 40


def test_eval_external_encoder_of_other_widths(tmp_path):
    """An external store with image [N, 7] and text [N, 3] (float16, one encoder per modality) is
    accepted, and each modality's scores equal the O(N^2) definition against its own encoder."""
    from dualsae.models.load import load_model

    data, model = make_category_store(tmp_path / "data"), make_specific_run(tmp_path / "run")
    rng = np.random.default_rng(4)
    ext = tmp_path / "ext"
    ext.mkdir()
    widths = {"image": 7, "text": 3}
    for mod, w in widths.items():
        e = rng.normal(size=(120, w)) + 0.3
        np.save(ext / f"{mod}.npy", (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float16))
    out = tmp_path / "ev" / "metrics.json"
    rc = main(["eval", str(model), "--data", str(data), "--out", str(tmp_path / "ev"), "--tasks", "monosemanticity",
               "--external", str(ext), "--no-progress"])
    assert rc == 0
    doc = json.loads(out.read_text())["tasks"]["monosemanticity"]
    pair = load_model(model)
    test = PairedEmbeddings.open(data).split("test")
    for mod in widths:
        x = test.read(mod).numpy()
        ref = brute_force_monosemanticity(dense_codes(pair, mod, x), np.load(ext / f"{mod}.npy")[test.index].astype(np.float64))
        ref = np.sort(ref[~np.isnan(ref)])[::-1]
        curve = np.load(out.parent / doc[mod]["curve_file"])
        assert len(curve) == len(ref) > 5
        np.testing.assert_allclose(curve, ref, rtol=1e-5, atol=1e-6)
        assert doc[mod]["mean"] == pytest.approx(ref.mean(), rel=1e-5)
    # a training store must still have one width
    with pytest.raises(DataError, match="text.npy has dimension 3, image.npy has 7"):
        PairedEmbeddings.open(ext)


def test_eval_errors(tmp_path, capsys):
    data, model = make_category_store(tmp_path / "data"), make_specific_run(tmp_path / "run")
    bad_ext = make_category_store(tmp_path / "ext", n=50)
    rc = main(["eval", str(model), "--data", str(data), "--out", str(tmp_path / "m"), "--tasks", "recon,nope"])
    assert rc == 2 and "unknown task(s) ['nope']" in capsys.readouterr().err
    rc = main(["eval", str(model), "--data", str(data), "--out", str(tmp_path / "m"), "--tasks", "monosemanticity",
               "--external", str(bad_ext), "--no-progress"])
    assert rc == 2 and "has 50 rows, the data store 120" in capsys.readouterr().err
    assert not (tmp_path / "m" / "metrics.json").exists()
    assert parse_tasks("steering,recon") == ("recon", "steering")
    with pytest.raises(ConfigError):
        EvalOptions(positives="maybe")


def test_eval_rejects_wrong_dimension(tmp_path, capsys):
    data, model = make_category_store(tmp_path / "data", d=6), make_specific_run(tmp_path / "run", d=8)
    rc = main(["eval", str(model), "--data", str(data), "--out", str(tmp_path / "m"), "--tasks", "recon", "--no-progress"])
    assert rc == 2 and "embeddings have dimension d=6, but the model's image SAE (data store) expects d=8" in capsys.readouterr().err
