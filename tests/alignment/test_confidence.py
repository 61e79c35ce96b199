"""Match confidence (dualsae.alignment.confidence): co-firing support and the permutation-null threshold
against a dense brute-force reference, and thresholds that leave weak matches unmatched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dualsae.alignment.confidence import ConfidenceOptions, match_confidence
from dualsae.alignment.post_hoc import align
from dualsae.cli import main
from dualsae.core.codes import SparseCodes
from dualsae.core.errors import ConfigError
from dualsae.models.pair import SAEPair
from dualsae.models.sae import SAE
from dualsae.store.paired import PairedEmbeddings, write_store
from tests.helpers import tied_sae


def sparse(dense: np.ndarray, k: int) -> SparseCodes:
    t = torch.as_tensor(dense, dtype=torch.float32)
    vals, idx = t.topk(k, dim=1)
    return SparseCodes(vals, idx, t.shape[1])


def test_support_and_null_equal_a_dense_reference():
    rng = np.random.default_rng(0)
    n, m, k = 240, 10, 3
    zi = np.zeros((n, m))
    zt = np.zeros((n, m))
    for r in range(n):
        zi[r, rng.choice(m, k, replace=False)] = rng.exponential(size=k) + 0.1
        zt[r, rng.choice(m, k, replace=False)] = rng.exponential(size=k) + 0.1
    zt[:, 7] = np.where(zi[:, 2] > 0, zi[:, 2] + 0.05, 0)  # planted: text 7 copies image 2
    zi[rng.random(n) < 0.3, 4] = 0  # some rows with fewer active latents
    zi, zt = zi.astype(np.float32).astype(np.float64), zt.astype(np.float32).astype(np.float64)  # codes hold float32
    image, text = np.array([2, 4, 0, 9]), np.array([7, 1, 5, 3])
    opts = ConfidenceOptions(shuffles=50, quantile=0.9, seed=3)
    got = match_confidence(sparse(zi, k), sparse(zt, k + 1), image, text, opts)

    support = ((zi[:, image] != 0) & (zt[:, text] != 0)).sum(0)
    assert got.support.tolist() == support.tolist()
    gen = torch.Generator().manual_seed(3)
    samples = []
    for _ in range(50):
        perm = torch.randperm(n, generator=gen).numpy()
        samples.append([np.corrcoef(zi[:, i], zt[perm, j])[0, 1] for i, j in zip(image, text)])
    ref = np.quantile(np.array(samples), 0.9, axis=0)
    np.testing.assert_allclose(got.null_threshold, ref, rtol=1e-9, atol=1e-9)
    # the planted pair is far above its null, an unrelated pair is not
    corr = [np.corrcoef(zi[:, i], zt[:, j])[0, 1] for i, j in zip(image, text)]
    assert corr[0] > 0.9 > got.null_threshold[0]
    assert corr[2] < got.null_threshold[2] + 0.1


def test_rare_latents_get_a_higher_null_threshold():
    n = 400
    zi = np.zeros((n, 4))
    zt = np.zeros((n, 4))
    zi[:, 0] = zt[:, 0] = 0  # filler
    rare_i, rare_t = np.arange(0, 4), np.arange(10, 14)
    zi[rare_i, 1] = 1.0
    zt[rare_t, 1] = 1.0
    zi[np.arange(0, n, 2), 2] = 1.0
    zt[np.arange(1, n, 2), 2] = 1.0
    got = match_confidence(sparse(zi, 2), sparse(zt, 2), np.array([1, 2]), np.array([1, 2]),
                           ConfidenceOptions(shuffles=300, quantile=0.99))
    assert got.null_threshold[0] > 2 * got.null_threshold[1]


# ---------------------------------------------------------------------------- end to end
def planted_run(tmp_path):
    """Specific SAEs with 4 features; text latents in reversed order; feature 3 has only 2 rows."""
    d = 8
    phi = np.eye(d, dtype=np.float32)[:4]
    psi = np.eye(d, dtype=np.float32)[4:]
    feature = np.repeat(np.arange(4), [12, 12, 12, 2])
    store = write_store(tmp_path / "store", 2 * phi[feature], 2 * psi[feature],
                        [{"caption": f"f{f}"} for f in feature])
    run = tmp_path / "run"
    run.mkdir()
    tied_sae(phi).save(run / "image")
    tied_sae(psi[::-1].copy()).save(run / "text")
    (run / "config.json").write_text(json.dumps({"train": {"method": "specific", "split": "all"},
                                                 "data": {"path": str(store)}}))
    return run, store


def test_align_reports_support_and_drops_thin_matches(tmp_path):
    run, store_dir = planted_run(tmp_path)
    store = PairedEmbeddings.open(store_dir)
    pair = SAEPair("specific", SAE.load(run / "image"), SAE.load(run / "text"))
    full = align(pair, store, progress=False, confidence=ConfidenceOptions())
    m = full.report["matched"]
    assert m["image"] == [0, 1, 2, 3] and m["text"] == [3, 2, 1, 0]
    assert m["support"] == [12, 12, 12, 2]
    assert all(c > t for c, t in zip(m["correlation"], m["null_threshold"]))
    thin = align(pair, store, progress=False, confidence=ConfidenceOptions(min_support=3))
    r = thin.report
    assert r["matched"]["image"] == [0, 1, 2] and r["matched"]["support"] == [12, 12, 12]
    assert r["unmatched"]["image_only"] == [3] and r["unmatched"]["text_only"] == [0]
    assert r["confidence"]["dropped_by_threshold"] == 1
    high = align(pair, store, progress=False, confidence=ConfidenceOptions(min_correlation=1.01))
    assert high.report["matched_count"] == 0 and len(high.report["unmatched"]["image_only"]) == 4


def test_cli_align_thresholds_and_console(tmp_path, capsys):
    run, _ = planted_run(tmp_path)
    out = tmp_path / "aligned"
    # --data omitted: the store recorded in the run's config.json
    assert main(["align", str(run), "--out", str(out), "--min-support", "3", "--min-correlation", "null",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "co-firing support (rows): q1 12  median 12  q3 12" in text
    assert "now modality-only" in text and "matched 3;" in text
    doc = json.loads((out / "alignment.json").read_text())
    assert len(doc["matched"]["support"]) == len(doc["matched"]["null_threshold"]) == 3
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "3 matched pairs" in info and "modality-only: image 1, text 1" in info


def test_bad_threshold_flags_are_one_line_errors(tmp_path, capsys):
    run, _ = planted_run(tmp_path)
    assert main(["align", str(run), "--out", str(tmp_path / "a"), "--min-correlation", "high"]) == 2
    assert "--min-correlation must be a number or 'null'" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        ConfidenceOptions(min_correlation="null", shuffles=0)
