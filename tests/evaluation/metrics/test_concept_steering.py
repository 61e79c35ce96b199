"""Concept steering: AP/RR tie rule, brute-force reference, planted concept direction."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from dualsae.alignment.permutation import permute_sae
from dualsae.evaluation.metrics.concept_steering import concept_masks, concept_steering, ranked_ap_rr
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings
from tests.metrics_helpers import dense_codes, identity_sae, random_specific_pair


def test_ap_rr_hand_case_with_ties_and_exclusion():
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1]])
    rel = torch.tensor([False, True, False, True])
    ap, rr = ranked_ap_rr(scores, rel)
    # pessimistic order: 0 (F), 2 (F, tied with 1), 1 (T), 3 (T)
    assert ap.item() == pytest.approx((1 / 3 + 2 / 4) / 2) and rr.item() == pytest.approx(1 / 3)
    ap, rr = ranked_ap_rr(scores, rel, exclude=torch.tensor([0]))
    assert ap.item() == pytest.approx((1 / 2 + 2 / 3) / 2) and rr.item() == pytest.approx(1 / 2)


def test_concept_masks_scalar_and_list():
    m = concept_masks([{"c": "a", "t": ["x", "y"]}, {"c": "b", "t": ["y"]}, {"t": []}], "t")
    assert m["y"].tolist() == [True, True, False] and m["x"].tolist() == [True, False, False]
    assert sorted(concept_masks([{"c": "a"}, {"c": "b"}, {}], "c")) == ["a", "b"]


def _rng(seed, concept, salt):
    return np.random.default_rng([seed, zlib.crc32(concept.encode()), salt])


def _brute_ap_rr(scores: np.ndarray, rel: np.ndarray, src: int) -> tuple[float, float]:
    """Pessimistic ranks written out: rank(r) = 1 + #{higher} + #{irrelevant tied} + #{relevant tied listed before}."""
    items = [n for n in range(len(scores)) if n != src]
    ranks = {}
    for r in items:
        if not rel[r]:
            continue
        ranks[r] = 1 + sum(1 for n in items if scores[n] > scores[r]) + sum(
            1 for n in items if scores[n] == scores[r] and (not rel[n] or n < r))
    sorted_ranks = sorted(ranks.values())
    ap = np.mean([(i + 1) / rk for i, rk in enumerate(sorted_ranks)])
    return float(ap), 1.0 / sorted_ranks[0]


def test_matches_brute_force_reference():
    rng = np.random.default_rng(0)
    n, d = 60, 10
    cats = rng.choice(["a", "b", "c"], n, p=[0.3, 0.3, 0.4])
    image = rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(0.5, 2, (n, 1)).astype(np.float32)
    text = (image + rng.normal(size=(n, d))).astype(np.float32)
    store = PairedEmbeddings(image, text, [{"category": str(c)} for c in cats])
    pair = random_specific_pair(d, 32, 4, seed=1)
    seed, n_src, n_neg, alpha = 3, 7, 15, 0.7
    res = concept_steering(pair, store, "category", n_sources=n_src, n_negative=n_neg, alpha=alpha, min_images=3,
                           max_concepts=None, seed=seed, batch_size=16)
    assert sorted(res["per_concept"]) == ["a", "b", "c"]
    z_t = dense_codes(pair, "text", text)
    dec = pair.decoder_columns("image").double().numpy()
    scale = np.linalg.norm(image.astype(np.float64), axis=1).mean()
    aps, rrs = [], []
    for c in ["a", "b", "c"]:
        with_c = cats == c
        neg = np.sort(_rng(seed, c, 0).choice(np.flatnonzero(~with_c), size=n_neg, replace=False))
        j = int(np.argmax(z_t[with_c].mean(0) - z_t[neg].mean(0)))
        src = np.sort(_rng(seed, c, 1).choice(np.flatnonzero(~with_c), size=n_src, replace=False))
        w = dec[j] / np.linalg.norm(dec[j])
        ap_c, rr_c = [], []
        for s in src:
            st = image[s] + alpha * scale * w
            cos = image @ st / (np.linalg.norm(image, axis=1) * np.linalg.norm(st))
            ap, rr = _brute_ap_rr(cos, with_c, s)
            ap_c.append(ap)
            rr_c.append(rr)
        got = res["per_concept"][c]
        assert got["latent"] == j and got["n_sources"] == n_src and got["images_with"] == int(with_c.sum())
        assert got["map"] == pytest.approx(np.mean(ap_c), abs=1e-6)
        assert got["mrr"] == pytest.approx(np.mean(rr_c), abs=1e-6)
        aps.append(np.mean(ap_c))
        rrs.append(np.mean(rr_c))
    assert res["map"] == pytest.approx(np.mean(aps), abs=1e-6) and res["mrr"] == pytest.approx(np.mean(rrs), abs=1e-6)
    assert res["scale"] == pytest.approx(scale, rel=1e-5)


def _planted_store(seed=0):
    """Concept 'star' images carry +2 e_0; no other image has any e_0 component."""
    rng = np.random.default_rng(seed)
    n, d = 120, 16
    star = np.zeros(n, dtype=bool)
    star[rng.choice(n, 30, replace=False)] = True
    image = rng.uniform(0.1, 1.0, size=(n, d))
    image[:, 0] = np.where(star, 2.0, 0.0)
    text = np.abs(image + 0.05 * rng.normal(size=(n, d)))
    meta = [{"category": "star" if s else "plain"} for s in star]
    return PairedEmbeddings(image.astype(np.float32), text.astype(np.float32), meta)


def test_planted_concept_direction_is_recovered():
    store = _planted_store()
    sae = identity_sae(16)
    res = concept_steering(SAEPair("shared", sae, sae), store, "category", concepts=["star"], alpha=10.0, n_sources=50)
    r = res["per_concept"]["star"]
    assert r["latent"] == 0  # the e_0 coordinate separates the concept captions
    assert r["map"] > 0.99 and r["mrr"] == 1.0
    assert r["map_unsteered"] < 0.6
    # Unaligned specific pair: the text latent's index points at an unrelated image decoder column.
    perm = np.roll(np.arange(32), 5)
    unaligned = SAEPair("specific", sae, permute_sae(sae, perm))
    bad = concept_steering(unaligned, store, "category", concepts=["star"], alpha=10.0, n_sources=50)["per_concept"]["star"]
    assert bad["latent"] == perm[0] and bad["map"] < 0.5


def test_group_field_makes_one_image_per_group():
    """COCO layout: two caption rows per image; the concept is on one caption only, yet the image holds it."""
    base = _planted_store()
    n = base.n
    image = np.repeat(base.image, 2, axis=0)
    text = np.repeat(base.text, 2, axis=0)
    meta = []
    for i, r in enumerate(base.meta):
        meta.append({"group": i, "category": r["category"]})
        meta.append({"group": i, "category": "plain"})
    store = PairedEmbeddings(image, text, meta)
    sae = identity_sae(16)
    res = concept_steering(SAEPair("shared", sae, sae), store, "category", concepts=["star"], alpha=10.0, n_sources=50)
    r = res["per_concept"]["star"]
    assert res["n_test_images"] == n and r["images_with"] == 30 and r["captions_with"] == 30
    assert r["latent"] == 0 and r["map"] > 0.99
