"""The real-data path on ../shared/data/emoji (real paired 512-d embeddings; see its README)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import EMOJI

pytestmark = pytest.mark.skipif(not (EMOJI / "image.npy").is_file(), reason=f"{EMOJI} not present (../shared beside the checkout)")


@pytest.fixture(scope="module")
def trained(emoji):
    from dualsae.alignment.post_hoc import align
    from dualsae.training.config import TrainConfig
    from dualsae.training.trainer import train

    cfg = TrainConfig.from_preset("real", method="specific", latents=512, k=16, batch_size=256, epochs=6, lr=2e-3)
    pair = train(emoji.split("train"), cfg, None, progress=False)
    return pair, align(pair, emoji.split("train"), progress=False)


def test_store_as_documented(emoji):
    assert (emoji.n, emoji.d) == (8280, 512)
    assert emoji.split("train").n == 6675 and emoji.split("test").n == 1605
    x = emoji.read("image", np.arange(10)).numpy()
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_specific_sae_reconstructs_held_out_rows(emoji, trained):
    from dualsae.evaluation.metrics.reconstruction import reconstruction_metrics

    pair, _ = trained
    stats = reconstruction_metrics(pair, emoji.split("test"), progress=False)
    # A short run (6 epochs, 256 latents per modality) already explains most of the variance of
    # unseen captions/images; the 30-epoch, 1024-latent run of the README reaches ~0.84 / 0.86.
    assert stats["image"]["explained_variance"] > 0.6
    assert stats["text"]["explained_variance"] > 0.6


def test_posthoc_alignment_enables_retrieval(emoji, trained):
    from dualsae.evaluation.metrics.retrieval import cross_modal_retrieval

    pair, result = trained
    test = emoji.split("test")
    assert result.report["matched_count"] > 100
    assert result.report["mean_matched_correlation"] > 0.2
    before = cross_modal_retrieval(pair, test, positives="caption", progress=False)
    after = cross_modal_retrieval(result.pair, test, positives="caption", progress=False)
    # Unaligned specific SAEs share no index space (retrieval near chance, 1/1605); aligned ones do.
    assert before["image_to_text"]["R@10"] < 0.05
    assert after["image_to_text"]["R@10"] > 5 * max(before["image_to_text"]["R@10"], 0.01)
    assert after["text_to_image"]["R@10"] > 5 * max(before["text_to_image"]["R@10"], 0.01)
