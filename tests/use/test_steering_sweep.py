"""The alpha sweep and the default strength (dualsae.use.steering_sweep): each sweep row equals a brute-force
steer + nearest-neighbour count, the auto alpha is the smallest grid value whose share reaches the target
(checked against a scan of the whole grid), and latents matched in one modality are warned about."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dualsae.cli import main
from dualsae.models.aligned import ALIGNMENT_FORMAT, AlignedPair
from dualsae.store.paired import PairedEmbeddings, write_store
from dualsae.use.steering import latent_fires
from dualsae.use.steering_sweep import CALIBRATION_ALPHAS, SweepRow, auto_alpha, modality_warning, strength_sweep, sweep_panel
from dualsae.use.translation import latents_for
from tests.helpers import tied_sae

N, D, M = 120, 8, 6


def _unit(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def _planted(tmp_path, unmatched=None):
    """Unit rows around M concept directions (CLIP-like); tied SAEs on those directions (k = 1)."""
    rng = np.random.default_rng(5)
    w = _unit(rng.normal(size=(M, D)))
    z = rng.integers(0, M, N)
    image = _unit(w[z] + 0.6 * rng.normal(size=(N, D)))
    text = _unit(w[z] + 0.6 * rng.normal(size=(N, D)))
    folder = write_store(tmp_path / "store", image, text, [{"caption": f"c{z[i]}", "id": f"r{i}"} for i in range(N)])
    alignment = {"format": ALIGNMENT_FORMAT, "permutation": list(range(M)), "data": str(folder)}
    if unmatched:
        alignment["unmatched"] = unmatched
    pair = AlignedPair("aligned", tied_sae(w, k=1), tied_sae(w, k=1), alignment)
    return pair, PairedEmbeddings.open(folder), pair.save(tmp_path / "aligned")


def _brute_share(pair, store, latent, alpha, src, n):
    """Steer the sources by hand (x + alpha |x| w), rank every other row by cosine, count the concept."""
    x = store.image[src].astype(np.float64)
    w = pair.decoder_columns("image")[latent].double().numpy()
    w /= np.linalg.norm(w)
    steered = x + alpha * np.linalg.norm(x, axis=1, keepdims=True) * w
    g = store.image.astype(np.float64)
    cos = (steered / np.linalg.norm(steered, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    cos[np.arange(len(src)), src] = -np.inf  # each source left out of its own list
    near = np.argsort(-cos, axis=1, kind="stable")[:, :n]
    fires = latent_fires(latents_for(pair, store, "image"), latent)
    kept = (steered * x).sum(1) / np.linalg.norm(steered, axis=1) / np.linalg.norm(x, axis=1)
    return fires[near].mean(), kept.mean()


def test_sweep_rows_match_brute_force_and_auto_is_the_smallest_alpha_reaching_half(tmp_path):
    pair, store, _ = _planted(tmp_path)
    latent = 2
    sweep = strength_sweep(pair, store, latent, "image", alphas=(0.25, 1.0, 4.0), n_sources=10, n=7)
    src = store.positions_of(sweep.sources)
    assert not latent_fires(latents_for(pair, store, "image"), latent)[src].any()  # sources lack the concept
    for row in sweep.rows:
        share, kept = _brute_share(pair, store, latent, row.alpha, src, 7)
        assert row.share == pytest.approx(share, abs=1e-9) and row.cosine == pytest.approx(kept, abs=1e-5)
    shares = [r.share for r in sweep.rows]
    assert shares == sorted(shares) and shares[0] < 0.5 <= shares[-1]  # a planted concept: steering pulls it in
    # The auto alpha: the first grid value whose (brute-force) share reaches 0.5, the one before it does not.
    assert sweep.auto is not None and sweep.auto in CALIBRATION_ALPHAS
    i = CALIBRATION_ALPHAS.index(sweep.auto)
    assert _brute_share(pair, store, latent, CALIBRATION_ALPHAS[i], src, 7)[0] >= 0.5
    assert i == 0 or _brute_share(pair, store, latent, CALIBRATION_ALPHAS[i - 1], src, 7)[0] < 0.5
    assert sweep.auto in [r.alpha for r in sweep.rows]


@pytest.mark.parametrize("first", [0, 7, 19, 28, None])
def test_auto_alpha_bisection_equals_a_scan_of_the_grid(first):
    grid = CALIBRATION_ALPHAS
    calls = []

    def measure(alpha):  # a share that reaches 0.5 from grid[first] on (never when first is None)
        calls.append(alpha)
        reached = first is not None and alpha >= grid[first]
        return SweepRow(alpha, 0.5 + 0.1 * reached if reached else 0.49 * alpha / grid[-1], 1.0, 1.0)

    alpha, rows = auto_alpha(measure, 0.5, grid)
    assert alpha == (None if first is None else grid[first])
    assert len(calls) <= 7 and len(rows) == len(set(calls))  # bisection: log2(29) + 1 measurements, none repeated


def test_modality_warning_names_one_sided_latents(tmp_path):
    pair, _, _ = _planted(tmp_path, unmatched={"image_only": [4], "text_only": [1], "text_only_shared": [5]})
    assert "live in the image SAE, unmatched in the text SAE" in modality_warning(pair, 4, "image")
    assert "its image decoder column belongs to no live matched image latent" in modality_warning(pair, 5, "image")
    assert "fires on no text row" in modality_warning(pair, 0, "image", fired_other=0)
    assert modality_warning(pair, 0, "image", fired_other=3) is None
    assert "fires on no image row of the data (dead here)" in modality_warning(pair, 0, "image", fired_other=0, fired_self=0)


def test_cli_steer_auto_alpha_sweep_and_warning(tmp_path, capsys):
    pair, store, folder = _planted(tmp_path, unmatched={"image_only": [2], "text_only": [], "text_only_shared": []})
    out = tmp_path / "steer"
    assert main(["steer", str(folder), "--latent", "2", "--sweep", "--sources", "3", "-n", "7", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    doc = json.loads((out / "steer.json").read_text())
    assert doc["alpha_given"] is None and doc["alpha"] == doc["sweep"]["auto_alpha"] is not None
    assert "<- auto" in printed.out and "alpha sweep" in printed.out and "concept share" in printed.out
    assert "warning: latent 2 is matched in one modality only" in printed.err and doc["warning"]
    # The sweep's auto row reaches half the neighbours; the shares grow with alpha.
    rows = doc["sweep"]["rows"]
    assert [r["alpha"] for r in rows] == sorted(r["alpha"] for r in rows)
    assert next(r for r in rows if r["alpha"] == doc["alpha"])["share"] >= 0.5
    # A higher target share asks for a stronger step (the share grows with alpha).
    assert main(["steer", str(folder), "--latent", "2", "--target-share", "0.9", "-n", "7", "--out", str(tmp_path / "s9")]) == 0
    doc9 = json.loads((tmp_path / "s9" / "steer.json").read_text())
    assert doc9["alpha"] >= doc["alpha"] and doc9["sweep"]["target_share"] == 0.9
    assert main(["steer", str(folder), "--latent", "2", "--target-share", "0"]) == 2
    # An explicit alpha is used as given and runs no sweep.
    assert main(["steer", str(folder), "--latent", "2", "--alpha", "0.5", "--out", str(tmp_path / "s2")]) == 0
    doc2 = json.loads((tmp_path / "s2" / "steer.json").read_text())
    assert doc2["alpha"] == 0.5 and doc2["sweep"] is None
    capsys.readouterr()


def test_report_panel_is_the_sweep_with_its_warning(tmp_path):
    pair, store, _ = _planted(tmp_path, unmatched={"image_only": [2], "text_only": [], "text_only_shared": []})
    codes = latents_for(pair, store, "image")
    panel = sweep_panel(pair, store, 2, codes, fired_other=5, n=6)
    sweep = strength_sweep(pair, store, 2, "image", codes=codes, n=6)
    assert panel["rows"] == [r._asdict() for r in sweep.rows] and panel["auto_alpha"] == sweep.auto
    assert "matched in one modality only" in panel["warning"] and "auto alpha" in panel["note"]
    json.dumps(panel)  # the page's data file is JSON
