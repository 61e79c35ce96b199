"""Latent cross-modal retrieval: sparse scores, pessimistic ranks, COCO / caption / row protocols."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualsae.core.codes import SparseCodes
from dualsae.core.errors import DataError
from dualsae.evaluation.metrics.retrieval import (
    auto_positives,
    build_protocol,
    cross_modal_retrieval,
    embedding_retrieval,
    first_positive_ranks,
    normalize_codes,
    recall_summary,
    retrieval_from_codes,
    sparse_scores,
)
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings
from tests.metrics_helpers import dense_codes, identity_sae, random_specific_pair, unit_rows


def _brute_ranks(scores: np.ndarray, qkeys: np.ndarray, gkeys: np.ndarray) -> np.ndarray:
    """Rank of the best positive, one query and one gallery item at a time (pessimistic ties)."""
    out = []
    for q in range(scores.shape[0]):
        pos = [g for g in range(scores.shape[1]) if gkeys[g] == qkeys[q]]
        if not pos:
            out.append(0)
            continue
        best = max(scores[q, g] for g in pos)
        out.append(1 + sum(1 for g in range(scores.shape[1]) if gkeys[g] != qkeys[q] and scores[q, g] >= best))
    return np.array(out)


def test_sparse_scores_equal_dense_cosine():
    g = torch.Generator().manual_seed(0)
    m = 50
    q = SparseCodes(torch.rand(7, 5, generator=g), torch.stack([torch.randperm(m, generator=g)[:5] for _ in range(7)]), m)
    gal = SparseCodes(torch.rand(30, 4, generator=g), torch.stack([torch.randperm(m, generator=g)[:4] for _ in range(30)]), m)
    gal.values[3] = 0  # an all-zero gallery code scores 0 against everything
    s = sparse_scores(normalize_codes(q), normalize_codes(gal))
    ref = unit_rows(q.to_dense().double().numpy()) @ unit_rows(gal.to_dense().double().numpy()).T
    assert s.shape == (7, 30)
    np.testing.assert_allclose(s.numpy(), ref, atol=1e-6)
    assert float(s[:, 3].abs().max()) == 0.0


def test_ranks_pessimistic_ties_hand_case():
    scores = torch.tensor([[0.5, 0.5, 0.2], [0.0, 0.0, 0.0], [0.1, 0.9, 0.9], [0.3, 0.2, 0.1]])
    qk = np.array([1, 0, 2, 9])
    gk = np.array([0, 1, 2])
    r = first_positive_ranks(lambda a, b: scores[a:b], 4, qk, gk, chunk=3)
    # q0: positive item 1 tied with negative item 0 -> 2; q1: all tied -> last (3);
    # q2: positive item 2 tied with negative item 1 -> 2; q3: no positive -> 0
    assert r.tolist() == [2, 3, 2, 0]
    s = recall_summary(r, (1, 2, 3))
    assert s["R@1"] == 0.0 and s["R@2"] == pytest.approx(2 / 3) and s["R@3"] == 1.0
    assert s["n_queries"] == 3 and s["n_without_positive"] == 1


def test_ranks_match_brute_force_with_many_ties():
    rng = np.random.default_rng(1)
    scores = np.round(rng.random((23, 17)), 1)  # coarse values: many exact ties
    qk = rng.integers(0, 8, 23)
    gk = rng.integers(0, 8, 17)
    r = first_positive_ranks(lambda a, b: torch.tensor(scores[a:b]), 23, qk, gk, chunk=5)
    np.testing.assert_array_equal(r, _brute_ranks(scores, qk, gk))


def _coco_store() -> PairedEmbeddings:
    """3 images (groups 7, 8, 9; 2 + 2 + 1 captions), embeddings in the non-negative orthant."""
    e = np.eye(3)
    image = np.stack([e[0], e[0], e[1], e[1], e[2]])
    text = np.array([[1, 0, 0], [0.1, 1, 0], [0, 1, 0.2], [0, 0.2, 1], [1, 0, 0.1]], dtype=np.float64)
    meta = [{"group": g, "caption": f"c{i}"} for i, g in enumerate([7, 7, 8, 8, 9])]
    return PairedEmbeddings(image.astype(np.float32), text.astype(np.float32), meta)


def test_coco_protocol_hand_case():
    """Worked by hand: text->image ranks [1, 2, 1, 2, 2]; image->text (best caption of each image) [1, 2, 3]."""
    store = _coco_store()
    sae = identity_sae(3)
    pair = SAEPair("shared", sae, sae)
    res = cross_modal_retrieval(pair, store, positives="group", ks=(1, 2, 3), batch_size=2)
    assert res["n_images"] == 3 and res["n_texts"] == 5
    t2i, i2t = res["text_to_image"], res["image_to_text"]
    assert (t2i["R@1"], t2i["R@2"], t2i["R@3"]) == pytest.approx((2 / 5, 1.0, 1.0))
    assert (i2t["R@1"], i2t["R@2"], i2t["R@3"]) == pytest.approx((1 / 3, 2 / 3, 1.0))
    assert i2t["median_rank"] == 2.0 and t2i["median_rank"] == 2.0
    # identity SAE on non-negative data: latent cosines are embedding cosines
    ref = embedding_retrieval(store, positives="group", ks=(1, 2, 3))
    for d in ("image_to_text", "text_to_image"):
        assert res[d] == ref[d]


def test_caption_and_row_protocols():
    meta = [{"caption": c} for c in ["a", "b", "a", "c"]]
    p = build_protocol(meta, "caption")
    assert p.image_keys.tolist() == [0, 1, 0, 2] and p.text_keys.tolist() == [0, 1, 0, 2]
    assert auto_positives(meta) == "caption"
    assert auto_positives([{"caption": "x"}, {"caption": "y"}]) == "row"
    assert auto_positives([{"group": 1}, {"group": 1}]) == "group"
    # group protocol without a group field = row protocol
    g = build_protocol([{}, {}, {}], "group")
    assert g.image_rows.tolist() == [0, 1, 2] and g.image_keys.tolist() == g.text_keys.tolist() == [0, 1, 2]
    with pytest.raises(DataError, match="caption"):
        build_protocol([{"caption": "a"}, {}], "caption")
    # image 0's caption is also row 2's: under 'caption' a hit at row 2 counts, under 'row' it does not
    codes_i = SparseCodes(torch.tensor([[1.0], [1.0], [1.0], [1.0]]), torch.tensor([[0], [1], [2], [3]]), 4)
    codes_t = SparseCodes(torch.tensor([[1.0], [1.0], [1.0], [1.0]]), torch.tensor([[2], [1], [0], [3]]), 4)
    cap = retrieval_from_codes(codes_i, codes_t, p, ks=(1,))
    row = retrieval_from_codes(codes_i, codes_t, build_protocol(meta, "row"), ks=(1,))
    assert cap["image_to_text"]["R@1"] == 1.0 and row["image_to_text"]["R@1"] == 0.5


def test_all_zero_codes_score_zero_recall():
    z = SparseCodes(torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.long), 8)
    res = retrieval_from_codes(z, z, build_protocol([{}] * 4, "row"), ks=(1, 3))
    assert res["image_to_text"]["R@1"] == 0.0 and res["image_to_text"]["R@3"] == 0.0
    assert res["image_to_text"]["median_rank"] == 4.0


def test_random_pair_matches_dense_brute_force():
    rng = np.random.default_rng(3)
    n, d = 60, 12
    groups = rng.integers(0, 25, n)
    img_by_group = rng.normal(size=(25, d))
    image = img_by_group[groups].astype(np.float32)  # captions of one image share its embedding
    text = (img_by_group[groups] + rng.normal(size=(n, d))).astype(np.float32)
    meta = [{"group": int(g)} for g in groups]
    store = PairedEmbeddings(image, text, meta)
    pair = random_specific_pair(d, 40, 5, seed=4)
    res = cross_modal_retrieval(pair, store, positives="group", ks=(1, 5, 10), batch_size=16)
    proto = build_protocol(meta, "group")
    ci = unit_rows(dense_codes(pair, "image", image[proto.image_rows]))
    ct = unit_rows(dense_codes(pair, "text", text))
    r_i2t = _brute_ranks(ci @ ct.T, proto.image_keys, proto.text_keys)
    r_t2i = _brute_ranks(ct @ ci.T, proto.text_keys, proto.image_keys)
    for key, r in (("image_to_text", r_i2t), ("text_to_image", r_t2i)):
        for k in (1, 5, 10):
            assert res[key][f"R@{k}"] == pytest.approx(float((r <= k).mean()))
        assert res[key]["median_rank"] == float(np.median(r))
    assert res["n_images"] == len(np.unique(groups))
