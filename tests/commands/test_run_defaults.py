"""README promises of issue 19 point 7 and the train/info printouts of point 6: ``info`` and ``report`` default
``--data`` to the run's store; ``train`` and ``info`` show train and test reconstruction side by side (numbers
equal to a direct measurement, over-fitting flagged by the documented ratio); no help text states two defaults;
``reproduce synthetic`` resumes a folder's plan without repeating its settings; store rows handed to a user are
absolute row ids (``read_row_ids``)."""

from __future__ import annotations

import argparse
import json
import re
import shutil

import numpy as np
import pytest

from dualsae.cli import build_parser, main
from dualsae.commands.reproduce import resumed_plan
from dualsae.core.errors import DataError
from dualsae.evaluation.metrics.reconstruction import reconstruction_metrics
from dualsae.evaluation.top_rows import top_examples
from dualsae.experiments.synthetic.job import open_job
from dualsae.experiments.synthetic.plan import SyntheticPlan
from dualsae.models.load import load_model
from dualsae.store.paired import PairedEmbeddings
from tests.helpers import ROOT, make_store


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    make_store(tmp / "data", n=300, d=16)
    code = main(["train", "--data", str(tmp / "data"), "--method", "shared", "--latents", "32", "--k", "4", "--batch-size", "32",
                 "--epochs", "2", "--out", str(tmp / "run"), "--no-progress"])
    assert code == 0
    return tmp


def test_train_and_info_print_train_and_test_reconstruction(run, capsys):
    store = PairedEmbeddings.open(run / "data")
    pair = load_model(run / "run")
    tr, te = reconstruction_metrics(pair, store.split("train")), reconstruction_metrics(pair, store.split("test"))
    assert main(["info", str(run / "run"), "--json"]) == 0  # no --data: the run's store
    info = json.loads(capsys.readouterr().out)
    assert info["data"]["path"] == str(run / "data")
    gen = info["generalization"]
    for mod in ("image", "text"):
        assert gen[mod]["train"]["mse"] == pytest.approx(tr[mod]["mse"], rel=1e-6)
        assert gen[mod]["test"]["mse"] == pytest.approx(te[mod]["mse"], rel=1e-6)
        assert gen[mod]["overfit"] == (te[mod]["mse"] / tr[mod]["mse"] > gen["overfit_ratio"])
    assert main(["info", str(run / "run")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"image MSE train [\d.]+ \(240 rows\)  test [\d.]+ \(60 rows\)  test/train [\d.]+", out)


def test_train_printout_shows_both_splits(tmp_path, capsys):
    make_store(tmp_path / "data", n=200, d=8)
    assert main(["train", "--data", str(tmp_path / "data"), "--latents", "16", "--k", "2", "--batch-size", "32", "--epochs", "1",
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "reconstruction of the final model" in out and "over-fitting: test/train MSE > 1.25" in out
    assert re.search(r"text  MSE train [\d.]+ \(160 rows\)  test [\d.]+ \(40 rows\)", out)


def test_info_on_a_folder_without_a_recorded_store_says_why(run, tmp_path, capsys):
    shutil.copytree(run / "run" / "shared", tmp_path / "sae")
    assert main(["info", str(tmp_path / "sae")]) == 0
    captured = capsys.readouterr()
    assert "note: no reconstruction lines:" in captured.err and "records no store" in captured.err and "pass --data" in captured.err
    assert "MSE" not in captured.out


def test_report_defaults_data_to_the_runs_store(run, tmp_path, capsys):
    assert main(["report", str(run / "run"), "--out", str(tmp_path / "rep"), "--probe-latents", "0", "--no-progress"]) == 0
    assert f"rows of {run / 'data'}" in capsys.readouterr().out and (tmp_path / "rep" / "index.html").is_file()


def _parsers(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _parsers(sub, (*path, name))


def test_no_help_text_states_two_defaults():
    seen = 0
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            text = parser._get_formatter()._expand_help(action) if action.help else ""
            seen += 1
            assert text.count("(default") <= 1, f"dualsae {' '.join(path)} {action.option_strings}: {text}"
    assert seen > 100
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["report"].format_help().split())
    assert "(default: one in the model folder)" in help_text and "(default: one in the model folder) (default: None)" not in help_text


def test_reproduce_synthetic_resumes_the_folders_plan(tmp_path):
    shutil.copy(ROOT / "docs" / "synthetic" / "plan.json", tmp_path / "plan.json")  # planned with --epochs 10 40
    plan = resumed_plan(tmp_path, {}, quick=False)
    assert plan.epochs == (10, 40) and plan.seeds == (0, 1, 2)
    open_job(plan, tmp_path)  # the job folder accepts it (no "different settings")
    more = resumed_plan(tmp_path, {"seeds": (0, 1, 2, 3)}, quick=False)
    assert more.seeds == (0, 1, 2, 3) and more.epochs == (10, 40)  # an axis given on the command line replaces the saved one
    open_job(more, tmp_path)
    assert resumed_plan(tmp_path / "new", {}, quick=False) == SyntheticPlan()  # no folder yet: the defaults


def test_rows_handed_to_a_user_are_absolute_row_ids(run):
    store = PairedEmbeddings.open(run / "data")
    test = store.split("test")
    pair = load_model(run / "run")
    j = int(pair.encode("image", test.read("image", [0])).indices[0, 0])
    top = top_examples(pair, j, test, n=3)["image"]
    rows = [r["row"] for r in top]
    assert set(rows) <= set(test.rows_of(np.arange(test.n)).tolist())  # absolute rows of the split
    assert np.array_equal(test.read_row_ids("image", rows).numpy(), store.image[rows])
    assert np.array_equal(test.positions_of(rows), [int(np.flatnonzero(test.index == r)[0]) for r in rows])
    train_row = int(store.split("train").index[0])
    with pytest.raises(DataError, match=f"row {train_row} is not a row of the chosen split"):
        test.read_row_ids("image", [train_row])


def test_info_reads_a_shared_runs_collapse_report(run, tmp_path, capsys):
    assert main(["align", str(run / "run"), "--out", str(tmp_path / "col"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "col" / "collapse.json").read_text())
    capsys.readouterr()
    assert main(["info", str(tmp_path / "col"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["alignment"]["collapse_rate"] == report["collapse_rate"] and info["source_run"] == str(run / "run")
    assert info["method"] == "shared" and info["data"]["path"] == str(run / "data")  # the collapse report's store
    assert main(["info", str(run / "run")]) == 0
    assert "'dualsae align" in capsys.readouterr().out  # the run alone says where its collapse rate comes from
