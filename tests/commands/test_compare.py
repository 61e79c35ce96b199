"""``dualsae compare``: the folder it writes (compare.json, overlap.png, a complete manifest), A against
itself, the planted permutation through the CLI, and one-line errors for bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dualsae.cli import main
from dualsae.files.outdir import read_manifest
from tests.evaluation.test_feature_overlap import permuted_copy
from tests.fault_helpers import KILLED, run_cli
from tests.helpers import make_store
from tests.metrics_helpers import random_sae


def _cli(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture()
def folders(tmp_path):
    """A bare SAE folder, a permuted copy of it, a specific run folder (image/ + text/) and a store, all d = 12."""
    a = random_sae(12, 24, 3, seed=0)
    a.save(tmp_path / "a")
    perm = np.random.default_rng(0).permutation(24)
    permuted_copy(a, perm, noise=0.01).save(tmp_path / "b")
    run = tmp_path / "run"
    a.save(run / "image")
    random_sae(12, 24, 3, seed=1).save(run / "text")
    (run / "config.json").write_text(json.dumps({"train": {"method": "specific"}}))
    make_store(tmp_path / "data", n=300, d=12)
    return tmp_path, perm


def test_same_sae_twice_gives_share_one_and_writes_a_complete_folder(folders, capsys):
    root, _ = folders
    out = root / "cmp"
    code, text, err = _cli(["compare", str(root / "a"), str(root / "run:image"), "--data", str(root / "data"), "--out", str(out),
                            "--no-progress"], capsys)
    assert code == 0, err
    js = json.loads((out / "compare.json").read_text())
    for block in ("decoder", "encoder", "activation"):
        assert [v["share"] for v in js[block]["thresholds"].values()] == [1.0, 1.0], block
    assert js["data"]["modality"] == "image" and js["b"]["member"] == "image"
    assert (out / "overlap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = read_manifest(out)
    assert manifest["complete"] and set(manifest["files"]) == {"compare.json", "overlap.png"}
    assert "decoder cosine" in text and "24 (100.0%)" in text and "shares over the smaller side" in text
    # A rerun of the same job replaces its own folder; another job is refused.
    assert _cli(["compare", str(root / "a"), str(root / "run:image"), "--data", str(root / "data"), "--out", str(out), "--no-progress"], capsys)[0] == 0
    code, _, err = _cli(["compare", str(root / "a"), str(root / "b"), "--out", str(out)], capsys)
    assert code == 2 and "already holds files written by 'dualsae compare' for another job" in err


def test_planted_permutation_through_the_cli(folders, capsys):
    root, perm = folders
    code, _, err = _cli(["compare", str(root / "a"), str(root / "b"), "--out", str(root / "cmp")], capsys)
    assert code == 0, err
    js = json.loads((root / "cmp" / "compare.json").read_text())
    assert js["counterpart"]["b"] == perm.tolist()
    assert js["decoder"]["thresholds"]["0.9"]["share"] == 1.0 and "activation" not in js


def test_sparse_solver_through_the_cli_matches_the_dense_one_and_records_its_certificate(folders, capsys):
    root, perm = folders
    out = {}
    for solver in ("dense", "sparse"):
        code, _, err = _cli(["compare", str(root / "a"), str(root / "b"), "--data", str(root / "data"), "--out", str(root / solver),
                             "--solver", solver, "--candidates", "4", "--no-progress"], capsys)
        assert code == 0, err
        out[solver] = json.loads((root / solver / "compare.json").read_text())
    js, dense = out["sparse"], out["dense"]
    assert js["counterpart"]["b"] == perm.tolist()
    for block in ("decoder", "encoder", "activation"):
        assert js[block]["solver"] == "sparse" and "sparse_solver" not in dense[block]
        assert js[block]["sparse_solver"]["certificate"]["certified"], block
        assert js[block]["total"] == pytest.approx(dense[block]["total"], abs=1e-6)
        assert js[block]["thresholds"] == dense[block]["thresholds"]
    assert js["decoder"]["sparse_solver"]["k"] == 4


@pytest.mark.parametrize("args,expected", [
    (["{root}/missing", "{root}/a"], "missing: no such folder"),
    (["{root}/run", "{root}/a"], "holds two SAEs (specific: image and text); name one as"),
    (["{root}/a", "{root}/small"], "has d=8, {root}/a has d=12"),
    (["{root}/a", "{root}/b", "--data", "{root}/narrow"], "embeddings have dimension d=8, but {root}/a expects d=12"),
    (["{root}/a", "{root}/b", "--thresholds", "0.7,high"], "--thresholds must be comma-separated numbers in [0, 1], found '0.7,high'"),
    (["{root}/a", "{root}/b", "--max-dense", "10", "--solver", "dense"], "above the dense exact solver's limit of 10 (--max-dense)"),
])
def test_bad_inputs_are_one_line_errors_and_write_nothing(folders, capsys, args, expected):
    root, _ = folders
    random_sae(8, 6, 2, seed=0).save(root / "small")
    make_store(root / "narrow", n=50, d=8)
    code, _, err = _cli(["compare", *[a.format(root=root) for a in args], "--out", str(root / "cmp")], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert expected.format(root=root) in err, err
    assert not (root / "cmp").exists()


def test_compare_killed_before_its_figure_is_unfinished_and_the_rerun_finishes_it(folders, capsys):
    root, _ = folders
    out = root / "cmp"
    args = ["compare", str(root / "a"), str(root / "b"), "--out", str(out)]
    killed = run_cli(args, fault="before-replace:*overlap.png")
    assert killed.returncode == KILLED, killed.stderr
    assert (out / "compare.json").is_file() and not (out / "overlap.png").exists()
    code, _, err = _cli(["report", str(root / "a"), "--data", str(root / "data"), "--out", str(root / "site"), "--compare", str(out)], capsys)
    assert code == 2 and "unfinished: 'dualsae compare' was stopped while writing it" in err and not (root / "site").exists()
    assert _cli(args, capsys)[0] == 0  # the same job again finishes its own folder
    assert read_manifest(out)["complete"] and (out / "overlap.png").is_file()
