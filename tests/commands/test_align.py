"""``dualsae align`` at scale: --stats sparse / --solver sparse give the dense result with a certificate
in alignment.json and a correlation/2 file; two torchrun ranks give what one process gives."""

from __future__ import annotations

import json

import numpy as np
from safetensors import safe_open

from dualsae.alignment.correlation import load_sparse_correlation
from dualsae.cli import main
from dualsae.store.paired import write_store
from tests.alignment.test_post_hoc import _planted_pair, _write_run
from tests.helpers import launch_ranks


def _setup(tmp_path, m: int = 48):
    pair, sigma, x, y = _planted_pair(seed=8, m=m)
    meta = [{"caption": f"c{i}", "split": "train" if i < 2400 else "test"} for i in range(len(x))]
    store = write_store(tmp_path / "store", x.numpy(), y.numpy(), meta)
    return _write_run(tmp_path / "run", pair), store, sigma


def test_sparse_align_equals_dense_and_records_certificate(tmp_path, capsys):
    run, store, sigma = _setup(tmp_path)
    base = ["align", str(run), "--data", str(store), "--no-progress", "--shuffles", "20"]
    assert main([*base, "--out", str(tmp_path / "dense"), "--solver", "scipy", "--stats", "dense"]) == 0
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "sparse"), "--solver", "sparse", "--stats", "sparse", "--tiles", "3"]) == 0
    printed = capsys.readouterr().out
    assert "certificate: largest dual violation" in printed and "optimal over all pairs" in printed
    dense, sparse = (json.loads((tmp_path / f / "alignment.json").read_text()) for f in ("dense", "sparse"))
    assert sparse["permutation"] == dense["permutation"]
    assert all(sparse["permutation"][int(sigma[i])] == i for i in range(48))
    assert sparse["total_matched_correlation"] == dense["total_matched_correlation"] or \
        abs(sparse["total_matched_correlation"] - dense["total_matched_correlation"]) < 1e-9
    det = sparse["solver_details"]
    assert sparse["solver"] == "sparse" and sparse["statistics"] == "sparse" and det["certificate"]["certified"]
    assert det["certificate"]["max_dual_violation"] <= det["certificate"]["tolerance"]
    assert det["candidates_final"] >= det["candidates_initial"] > 0 and det["rounds"] >= 1
    assert dense["solver_details"]["certificate"] is None and dense["statistics"] == "dense"
    with safe_open(str(tmp_path / "sparse" / "correlation.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "dualsae.correlation/2"
    # `info` and the heterogeneity command read the sparse folder
    assert main(["info", str(tmp_path / "sparse")]) == 0
    assert main(["analyze", "heterogeneity", str(tmp_path / "sparse"), "--out", str(tmp_path / "het")]) == 0
    assert json.loads((tmp_path / "het" / "heterogeneity.json").read_text())["bins"][-1]["count"] == 48


def test_align_flag_errors(tmp_path, capsys):
    run, store, _ = _setup(tmp_path, m=16)
    base = ["align", str(run), "--data", str(store), "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a"), "--tiles", "0"]) == 2
    assert "--tiles must be >= 1, found 0" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--tiles", "2", "--stats", "dense"]) == 2
    err = capsys.readouterr().err
    assert "tiles" in err and "sparse statistics" in err and len(err.strip().splitlines()) == 1


def _one_process_and_two_ranks(tmp_path, args: list[str]) -> tuple[dict, dict]:
    """alignment.json of ``dualsae <args>`` in one process (``one/``) and under 2 torchrun ranks (``two/``)."""
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    outs = launch_ranks(["-m", "dualsae", *args, "--out", str(tmp_path / "two")])
    assert "certificate" in outs[0] and outs[1] == ""
    return tuple(json.loads((tmp_path / f / "alignment.json").read_text()) for f in ("one", "two"))


def test_two_rank_sparse_align_equals_one_process(tmp_path):
    run, store, _ = _setup(tmp_path, m=32)
    args = ["align", str(run), "--data", str(store), "--no-progress", "--stats", "sparse", "--solver", "sparse",
            "--batch-size", "300", "--shuffles", "0"]
    one, two = _one_process_and_two_ranks(tmp_path, args)
    assert one["permutation"] == two["permutation"] and one["rows"] == two["rows"] == 2400
    a, b = load_sparse_correlation(tmp_path / "one"), load_sparse_correlation(tmp_path / "two")
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.cols, b.cols) and np.array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.values, b.values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.a, b.a, rtol=0, atol=1e-12)


def test_two_rank_pruned_align_with_confidence_equals_one_process(tmp_path):
    """Under torchrun the ranks encode their shares and gather the codes: pruned statistics (refused under
    torchrun before) and the match confidence (re-encoded on rank 0 before) then equal one process's."""
    run, store, sigma = _setup(tmp_path, m=32)
    args = ["align", str(run), "--data", str(store), "--no-progress", "--stats", "pruned", "--keep", "2",
            "--batch-size", "300", "--shuffles", "20"]
    one, two = _one_process_and_two_ranks(tmp_path, args)
    assert one["statistics"] == two["statistics"] == "pruned"
    assert one["permutation"] == two["permutation"] and one["rows"] == two["rows"] == 2400
    assert all(two["permutation"][int(sigma[i])] == i for i in range(32))
    prune = [r["solver_details"]["pruning"] for r in (one, two)]
    assert prune[0]["kept_pairs"] == prune[1]["kept_pairs"] < prune[0]["cofiring_pairs"] == prune[1]["cofiring_pairs"]
    assert abs(one["total_matched_correlation"] - two["total_matched_correlation"]) < 1e-12
    assert two["solver_details"]["certificate"]["certified"]
    # the same codes in the same row order: the same shuffles, so the same null thresholds and supports
    assert one["confidence"] == two["confidence"]
    assert 0 < two["timing"]["encoding_s"] <= two["timing"]["correlation_s"]
