"""``dualsae diagnose``: curve inversion, regime boundaries, modality gap, and the placement of
synthetic stores of known distance with the packaged calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dualsae.cli import main
from dualsae.core.errors import DataError
from dualsae.diagnose.pilots import QuickConfig, modality_gap
from dualsae.diagnose.placement import (
    CROSSING_FEATURE_RECOVERY,
    CROSSING_RECONSTRUCTION,
    diagnose,
    place,
    regime_of,
)
from dualsae.diagnose.regime_curve import REGIME_CURVE_SYNTH, RegimeCurve, invert_curve
from dualsae.store.generator import SynthConfig, write_synthetic
from dualsae.store.paired import PairedEmbeddings
from tests.helpers import make_store


def test_invert_curve_interpolates_spans_flats_and_clips():
    d = np.array([0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
    y = np.array([0.9, 0.8, 0.6, 0.4, 0.1, 0.0, 0.0])  # decreasing, flat tail
    r = invert_curve(d, y, 0.5)  # between 0.2 (0.6) and 0.3 (0.4)
    assert r["estimate"] == pytest.approx(0.25) and r["clipped"] is None
    r = invert_curve(d, y, 0.25)  # between 0.3 (0.4) and 0.5 (0.1): 0.3 + 0.15/0.3 * 0.2
    assert r["estimate"] == pytest.approx(0.4)
    r = invert_curve(d, y, 0.0)  # flat tail: every distance from 0.7 on
    assert (r["low"], r["high"]) == (0.7, 1.0) and r["estimate"] == pytest.approx(0.85)
    r = invert_curve(d, y, 0.95)  # above the curve: nearest end
    assert (r["low"], r["high"], r["clipped"]) == (0.0, 0.0, "above")
    r = invert_curve(d, np.array([0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.91]), 0.95)  # increasing curve, above
    assert (r["low"], r["clipped"]) == (1.0, "above")


def test_regime_boundaries_are_the_committed_crossings():
    assert regime_of(0.0) == regime_of(CROSSING_FEATURE_RECOVERY - 1e-6) == "shared ahead"
    assert regime_of(CROSSING_FEATURE_RECOVERY) == regime_of(CROSSING_RECONSTRUCTION - 1e-6) == "crossover"
    assert regime_of(CROSSING_RECONSTRUCTION) == regime_of(1.0) == "specific ahead"
    # The placement of an interval that spans regimes names them all and falls back to the safer method.
    cal = RegimeCurve(np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.5, 0.0]), np.array([0.2, 0.5, 0.8]), {}, [], {})
    pl = place(0.95, None, cal)  # -> distance 0.05
    assert pl["regime"] == "shared ahead" and pl["estimate"] == pytest.approx(0.05)
    pl = place(None, 0.5, cal)
    assert pl["regime"] == "specific ahead" and pl["based_on"] == "heterogeneity"
    flat = RegimeCurve(np.array([0.0, 0.3, 1.0]), np.array([1.0, 1.0, 0.0]), np.array([0.2, 0.5, 0.8]), {}, [], {})
    pl = place(1.0, 0.8, flat)  # collapse 1.0 fits every distance in [0, 0.3]
    assert pl["regimes_spanned"] == ["shared ahead", "crossover", "specific ahead"]
    assert pl["recommendation"].startswith("modality-specific SAEs + post-hoc alignment: the estimate spans regimes")


def test_modality_gap_matches_brute_force(tmp_path):
    make_store(tmp_path / "s", n=300, d=12)
    store = PairedEmbeddings.open(tmp_path / "s")
    gap = modality_gap(store, seed=3, batch_size=64)  # several batches
    x = np.load(tmp_path / "s" / "image.npy").astype(np.float64)
    y = np.load(tmp_path / "s" / "text.npy").astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    perm = np.random.default_rng([3, 11]).permutation(300)
    assert gap["centroid_distance"] == pytest.approx(np.linalg.norm(x.mean(0) - y.mean(0)), rel=1e-9)
    assert gap["mean_pair_cosine"] == pytest.approx((x * y).sum(1).mean(), rel=1e-9)
    assert gap["mean_random_pair_cosine"] == pytest.approx((x * y[perm]).sum(1).mean(), rel=1e-9)


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    make_store(tmp_path / "img", n=100, d=8, text=False)
    assert main(["diagnose", str(tmp_path / "img"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "text.npy" in err
    make_store(tmp_path / "tiny", n=40, d=8)
    assert main(["diagnose", str(tmp_path / "tiny"), "--no-progress"]) == 2
    assert "at least 64" in capsys.readouterr().err
    assert main(["diagnose", str(tmp_path / "tiny"), "--top-fraction", "0"]) == 2
    assert "--top-fraction must be in (0, 1]" in capsys.readouterr().err  # the flag typed, not the config field (issue 20)
    (tmp_path / "cal.json").write_text(json.dumps({"format": "dualsae.diagnose-calibration/1", "curve": [{"distance": 0}]}))
    with pytest.raises(DataError, match="cal.json: field 'curve'"):
        RegimeCurve.load(tmp_path / "cal.json")
    assert main(["diagnose"]) == 2
    assert "STORE" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    assert main(["diagnose", "--from-json", str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing field 'quick'" in err


@pytest.fixture(scope="module")
def known_distance_stores(tmp_path_factory):
    """Stores at distance 0.1 and 0.7 from the calibration's reduced App. E.2 problem, with data seeds
    the calibration never used."""
    root = tmp_path_factory.mktemp("diagnose")
    out = {}
    for dist in (0.1, 0.7):
        out[dist] = write_synthetic(SynthConfig(alpha=1.0 - dist, seed=77, **REGIME_CURVE_SYNTH), root / f"d{dist}", progress=False)
    return out


def test_known_distances_are_placed_in_their_regimes(known_distance_stores, tmp_path, capsys):
    torch.set_num_threads(1)
    # 0.1 through the library: the low-distance side (the shared SAE is not behind on feature recovery).
    low = diagnose(PairedEmbeddings.open(known_distance_stores[0.1]), QuickConfig(), progress=False)
    assert low["placement"]["estimate"] < CROSSING_RECONSTRUCTION, low["placement"]
    assert low["placement"]["regime"] != "specific ahead"
    # 0.7 through the CLI (with a minimal pilot), with diagnose.json written.
    fast = ["--seeds", "2", "--pilot-steps", "16", "--pilot-eval-rows", "256", "--label-field", "none"]
    assert main(["diagnose", str(known_distance_stores[0.7]), "--out", str(tmp_path / "out"), "--no-progress", *fast]) == 0
    printed = capsys.readouterr().out
    synthetic = printed.split("synthetic reference, not your data")[1]
    assert "regime: SPECIFIC AHEAD" in synthetic
    assert "what the synthetic curve alone suggests (not measured on this store): modality-specific SAEs + post-hoc alignment" in synthetic
    high = json.loads((tmp_path / "out" / "diagnose.json").read_text())["synthetic_reference"]
    assert high["placement"]["regime"] == "specific ahead" and high["placement"]["estimate"] >= 0.5
    # A saved report placed again with the same table gives the same placement, without training.
    assert main(["diagnose", "--from-json", str(tmp_path / "out" / "diagnose.json"), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "diagnose.json").read_text())["synthetic_reference"]
    assert again["placement"] == high["placement"] and again["collapse"] == high["collapse"]
    # Both statistics move the way Fig. 5a and Fig. 2 say: less collapse, more heterogeneity further apart.
    assert high["collapse"]["collapse_rate"] < low["collapse"]["collapse_rate"]
    assert high["heterogeneity"]["median_top_distance"] > low["heterogeneity"]["median_top_distance"]
