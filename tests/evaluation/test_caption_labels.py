"""Caption-word labels recover a planted word; concept agreement is high for a match whose two sides
share their planted word and low for one whose sides carry different words; the z-score equals the
Monroe et al. formula computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dualsae.evaluation.caption_labels import Vocabulary, agreement, caption_tokens, side_labels

COMMON = ["red", "blue", "green", "face", "hand", "star", "moon", "tree", "car", "boat", "fish", "bird"]


def _captions(n=300, seed=0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(COMMON, size=3, replace=False)) + " with the light" for _ in range(n)]


def _plant(captions: list[str], rows: np.ndarray, word: str) -> None:
    for r in rows:
        captions[r] = f"{captions[r]} {word}"


def test_tokens_drop_stop_words_digits_and_repeats():
    assert caption_tokens("The Cat: with 2 cats, the CAT!") == ["cat", "cats"]
    assert caption_tokens(None) == []


def test_labels_recover_planted_words_and_agreement_separates_matches():
    caps = _captions()
    rng = np.random.default_rng(1)
    rows = rng.permutation(len(caps))
    top = {"zebra_i": rows[:20], "zebra_t": rows[20:40], "kettle_i": rows[40:60], "violin_t": rows[60:80], "plain": rows[80:100]}
    _plant(caps, np.concatenate([top["zebra_i"], top["zebra_t"]]), "zebra")
    _plant(caps, top["kettle_i"], "kettle")
    _plant(caps, top["violin_t"], "violin")
    _plant(caps, rows[200:205], "kettle")  # the word also occurs (rarely) outside the top rows
    vocab = Vocabulary.of(caps)
    # latent 0: both sides zebra (agreeing match); latent 1: image side kettle, text side violin;
    # latent 2: random rows on both sides (nothing distinctive)
    image = side_labels(vocab, [top["zebra_i"], top["kettle_i"], top["plain"]])
    text = side_labels(vocab, [top["zebra_t"], top["violin_t"], rows[100:120]])
    assert image.words[0][0] == "zebra" and text.words[0][0] == "zebra"
    assert image.words[1][0] == "kettle" and text.words[1][0] == "violin"
    assert "with" not in sum(image.words, []) and "light" not in sum(image.words, [])  # everywhere: not distinctive
    assert image.words[2] == [] and text.words[2] == []  # random rows: no word passes z >= 1.96
    ag = agreement(image, text)
    assert ag[0] > 0.9 and ag[1] < 0.1 and math.isnan(ag[2])


def test_z_score_is_the_informative_dirichlet_log_odds():
    caps = ["cat dog", "cat", "dog fish", "fish", "fish bird", "bird"]
    vocab = Vocabulary.of(caps)
    lab = side_labels(vocab, [np.array([0, 1])], words=5, z_min=-99, prior=2.0)
    # by hand: top captions hold cat x2, dog x1 (n = 3); the store cat 2, dog 2, fish 3, bird 2 (9 tokens)
    total, a0, n = 9.0, 2.0, 3.0

    def z(y, count):
        alpha = a0 * count / total
        rest, rest_total = count - y, total - n
        d = math.log((y + alpha) / (n + a0 - y - alpha)) - math.log((rest + alpha) / (rest_total + a0 - rest - alpha))
        return d / math.sqrt(1 / (y + alpha) + 1 / (rest + alpha))

    assert lab.words[0] == ["cat", "dog"]
    assert lab.z[0] == pytest.approx([round(z(2, 2), 2), round(z(1, 2), 2)])
