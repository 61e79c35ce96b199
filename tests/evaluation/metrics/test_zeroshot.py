"""Latent zero-shot classification: brute force, planted classes, strict ties, store loading, prototypes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dualsae.core.errors import DataError
from dualsae.evaluation.metrics.zeroshot import caption_prototypes, load_zero_shot_store, zero_shot, zero_shot_accuracy, zero_shot_accuracy_embeddings
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings, write_store
from tests.metrics_helpers import dense_codes, identity_sae, random_specific_pair, unit_rows


def test_matches_dense_brute_force_variable_templates():
    rng = np.random.default_rng(0)
    d, C = 12, 5
    centres = rng.normal(size=(C, d))
    labels = rng.integers(0, C, 80)
    images = (centres[labels] + 0.8 * rng.normal(size=(80, d))).astype(np.float32)
    class_text = [torch.tensor(centres[c] + 0.5 * rng.normal(size=(t, d)), dtype=torch.float32) for c, t in enumerate([1, 3, 2, 4, 2])]
    pair = random_specific_pair(d, 48, 6, seed=2)
    res = zero_shot_accuracy(pair, images, labels, class_text, batch_size=16)
    u = unit_rows(np.stack([dense_codes(pair, "text", t.numpy()).mean(0) for t in class_text]))
    s = unit_rows(dense_codes(pair, "image", images)) @ u.T
    correct = np.array([s[i, labels[i]] > np.delete(s[i], labels[i]).max() for i in range(80)])
    assert res["top1"] == pytest.approx(correct.mean())
    for c in range(C):
        assert res["per_class"][c] == pytest.approx(correct[labels == c].mean())
    assert 0.1 < res["top1"] < 1.0  # the case is neither trivial nor hopeless


def test_planted_classes_and_strict_ties():
    """Identity SAE, non-negative basis classes: every image is right, except one whose code is all
    in the negative half (scores all 0): argmax would call it class 0, the strict rule calls it wrong."""
    sae = identity_sae(3)
    pair = SAEPair("shared", sae, sae)
    class_text = [torch.eye(3)[c : c + 1] * 2 for c in range(3)]
    images = np.array([[1, 0.1, 0], [0, 1, 0.2], [0.1, 0, 1], [0.9, 0.3, 0.0], [-1, -1, -1]], dtype=np.float32)
    labels = np.array([0, 1, 2, 0, 0])
    res = zero_shot_accuracy(pair, images, labels, class_text)
    assert res["top1"] == pytest.approx(4 / 5)
    assert res["per_class"] == pytest.approx([2 / 3, 1.0, 1.0])
    ref = zero_shot_accuracy_embeddings(images, labels, class_text)
    assert ref["top1"] == pytest.approx(4 / 5)  # (-1,-1,-1) ties all three classes in the embedding space too


def _write_zs_store(folder, n=30, d=6, C=3, T=2, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(C, d))) + np.eye(C, d) * 3
    labels = rng.integers(0, C, n)
    images = np.abs(centres[labels] + 0.3 * rng.normal(size=(n, d)))
    write_store(folder, images, None, [{"label": int(c), "class_name": f"c{c}"} for c in labels])
    class_text = np.stack([centres + 0.1 * rng.normal(size=(C, d)) for _ in range(T)], axis=1).astype(np.float32)
    np.save(folder / "class_text.npy", class_text)
    (folder / "classes.json").write_text(json.dumps({"classes": [f"c{c}" for c in range(C)], "templates": ["a {}.", "the {}."]}))
    return labels


def test_zero_shot_store_loads_and_checks(tmp_path):
    labels = _write_zs_store(tmp_path / "zs")
    data = load_zero_shot_store(tmp_path / "zs")
    assert data.classes == ["c0", "c1", "c2"] and data.templates == ["a {}.", "the {}."]
    np.testing.assert_array_equal(data.labels, labels)
    assert [tuple(t.shape) for t in data.class_text] == [(2, 6)] * 3
    sae = identity_sae(6)
    res = zero_shot(SAEPair("shared", sae, sae), data)
    assert res["top1"] == pytest.approx(res["embedding_reference"]["top1"])  # identity SAE on non-negative data
    assert res["top1"] > 0.9
    np.save(tmp_path / "zs" / "class_text.npy", np.zeros((4, 2, 6), dtype=np.float32))
    with pytest.raises(DataError, match=r"class_text.npy: shape \[4, 2, 6\], expected \[C=3"):
        load_zero_shot_store(tmp_path / "zs")
    _write_zs_store(tmp_path / "zs2")
    rows = [json.loads(line) for line in (tmp_path / "zs2" / "meta.jsonl").read_text().splitlines()]
    rows[4]["label"] = 7
    (tmp_path / "zs2" / "meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"row 4 field 'label' is 7"):
        load_zero_shot_store(tmp_path / "zs2")


def test_caption_prototypes_from_train_split():
    rng = np.random.default_rng(0)
    cats = ["cat", "dog", "cat", "fish", "dog", "cat", "bird"]
    split = ["train", "train", "train", "train", "test", "test", "test"]
    x = rng.normal(size=(7, 4)).astype(np.float32)
    store = PairedEmbeddings(x, x + 1, [{"category": c, "split": s} for c, s in zip(cats, split)])
    data = caption_prototypes(store.split("train"), store.split("test"), "category")
    assert data.classes == ["cat", "dog", "fish"]
    assert [len(t) for t in data.class_text] == [2, 1, 1]
    np.testing.assert_allclose(data.class_text[0].numpy(), x[[0, 2]] + 1)  # the train captions' text embeddings
    assert data.labels.tolist() == [1, 0] and data.dropped == 1  # 'bird' has no training caption
    assert data.images.read("image").numpy().tolist() == x[[4, 5]].tolist()
