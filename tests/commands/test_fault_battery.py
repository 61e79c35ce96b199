"""Issue 20's fault classes against the CLI: each test injects the fault the way the battery found it
(a retrained run, a damaged file, a bad flag value, a refused or killed run, a full disk) and checks
that the user sees a complete output, a resumable one, or one line (exit 2) naming what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dualsae.cli import main
from tests.fault_helpers import KILLED, cli, one_line_error, run_cli_killed
from tests.helpers import make_store

TRAIN = ["--latents", "16", "--k", "2", "--batch-size", "32", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A paired store, a specific run and its alignment. Tests copy, never modify."""
    root = tmp_path_factory.mktemp("battery")
    make_store(root / "data", n=200, d=8)
    assert main(["train", "--data", str(root / "data"), "--out", str(root / "run"), *TRAIN]) == 0
    assert main(["align", str(root / "run"), "--data", str(root / "data"), "--out", str(root / "al"), "--no-progress"]) == 0
    return root


def _align(run: Path, data: Path, out: Path, *extra) -> list:
    return ["align", run, "--data", data, "--out", out, "--no-progress", *extra]


# ---------------------------------------------------------------------- 1. silently wrong results


def test_align_rerun_into_its_folder_drops_the_stale_correlation(base, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "al"
    shutil.copytree(base / "run", run)
    assert cli(_align(run, base / "data", out), capsys)[0] == 0
    assert (out / "correlation.safetensors").is_file()
    # Retrain the run in place (another seed), then align again into the same folder without the correlation.
    assert cli(["train", "--data", base / "data", "--out", run, "--overwrite", "--seed", "5", *TRAIN], capsys)[0] == 0
    assert cli(_align(run, base / "data", out, "--no-correlation"), capsys)[0] == 0
    assert not (out / "correlation.safetensors").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "correlation.safetensors" not in manifest["files"]
    assert set(manifest["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
                                      and p.name != "manifest.json" and not p.name.startswith(".")}
    # analyze heterogeneity now needs the data instead of reading the old run's statistics.
    code, _, err = cli(["analyze", "heterogeneity", out, "--out", tmp_path / "het", "--no-progress", "--data", base / "data"], capsys)
    assert code == 0, err


def test_a_flipped_bit_in_model_safetensors_is_refused_on_every_load(base, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    path = run / "text" / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10  # inside the last weight: the file still parses, same size
    path.write_bytes(bytes(raw))
    for target in (run, run / "text"):  # the run, and the SAE folder inside it (no manifest of its own)
        code, _, err = cli(["info", target], capsys)
        assert one_line_error(code, err, "text/model.safetensors: differs from the file 'dualsae train' wrote"), (target, err)
    code, _, err = cli(_align(run, base / "data", tmp_path / "al"), capsys)
    assert one_line_error(code, err, "differs from the file")


def _npy(path: Path, array) -> Path:
    np.save(path, array, allow_pickle=False)
    return path


def test_translate_refuses_meaningless_embeddings_and_steer_a_non_finite_alpha(base, tmp_path, capsys):
    good = np.ones((2, 8), np.float32)
    nan, inf = good.copy(), good.copy()
    nan[1, 2], inf[0, 0] = np.nan, np.inf
    cases = {
        "nan": (_npy(tmp_path / "nan.npy", nan), "row 1 contains NaN"),
        "inf": (_npy(tmp_path / "inf.npy", inf), "row 0 contains inf"),
        "int64": (_npy(tmp_path / "int.npy", np.ones((2, 8), np.int64)), "holds dtype int64"),
        "empty": (_npy(tmp_path / "empty.npy", np.zeros((0, 8), np.float32)), "has shape [0, 8]"),
        "strings": (_npy(tmp_path / "str.npy", np.array([["a"] * 8] * 2)), "holds dtype <U1"),
        "width": (_npy(tmp_path / "wide.npy", np.ones((2, 9), np.float32)), "expected [q, 8]"),
    }
    for name, (path, needle) in cases.items():
        code, out, err = cli(["translate", base / "al", "--data", base / "data", "--embeddings", path], capsys)
        assert one_line_error(code, err, path.name, "--embeddings", needle), (name, err)
    code, _, _ = cli(["translate", base / "al", "--data", base / "data", "--embeddings", _npy(tmp_path / "ok.npy", good)], capsys)
    assert code == 0
    for alpha in ("nan", "inf", "-inf"):
        code, _, err = cli(["steer", base / "al", "--data", base / "data", "--latent", "0", f"--alpha={alpha}"], capsys)
        assert one_line_error(code, err, "--alpha must be a finite number"), (alpha, err)


@pytest.mark.parametrize("command", ["translate", "steer", "diagnose"])
def test_out_that_is_a_file_or_under_a_file_is_one_line(base, tmp_path, capsys, command):
    (tmp_path / "file").write_text("x")
    args = {"translate": ["translate", base / "al", "--data", base / "data", "--rows", "0"],
            "steer": ["steer", base / "al", "--data", base / "data", "--latent", "0"],
            "diagnose": ["diagnose", base / "data", "--no-progress"]}[command]
    for out, needle in ((tmp_path / "file", "is an existing file"), (tmp_path / "file" / "sub", "is a file, not a folder")):
        code, _, err = cli([*args, "--out", out], capsys)
        assert one_line_error(code, err, needle), (out, err)


def test_out_on_a_read_only_file_system_is_one_line(base, tmp_path):
    from tests.fault_helpers import run_cli_on_tmpfs

    mnt = tmp_path / "mnt"
    commands = [["translate", base / "al", "--data", base / "data", "--rows", "0", "--out", mnt / "t"],
                ["steer", base / "al", "--data", base / "data", "--latent", "0", "--out", mnt / "s"],
                ["diagnose", base / "data", "--no-progress", "--out", mnt / "d"]]
    ro = run_cli_on_tmpfs(mnt, "ro,size=64k", commands)
    assert ro.stdout.splitlines()[-3:] == ["rc=2"] * 3 or [ln for ln in ro.stdout.splitlines() if ln.startswith("rc=")] == ["rc=2"] * 3, ro.stdout + ro.stderr
    assert ro.stderr.count("(read-only file system)") == 3 and "Traceback" not in ro.stderr


# ---------------------------------------------------------------------- 2. runs that get stuck


def test_a_refused_train_leaves_no_claim_behind(tmp_path, capsys):
    make_store(tmp_path / "data", n=50, d=8)
    make_store(tmp_path / "img", n=50, d=8, text=False)
    make_store(tmp_path / "two", n=2, d=8, split=False)
    cases = [
        (["--data", tmp_path / "data", "--batch-size", "500"], "larger than the"),
        (["--data", tmp_path / "two", "--split", "all", "--batch-size", "3"], "larger than the"),
        (["--data", tmp_path / "img", "--method", "iso-energy"], "which method iso-energy needs"),
    ]
    for extra, needle in cases:
        out = tmp_path / "run"
        code, _, err = cli(["train", *extra, "--out", out, "--latents", "16", "--k", "2", "--epochs", "1", "--no-progress"], capsys)
        assert one_line_error(code, err, needle), (extra, err)
        assert not out.exists(), (extra, sorted(p.name for p in out.iterdir()))
    # The corrected rerun into the same --out is not refused as "another job".
    code, _, err = cli(["train", "--data", tmp_path / "data", "--out", tmp_path / "run", "--batch-size", "8", "--latents", "16", "--k", "2",
                        "--epochs", "1", "--no-progress"], capsys)
    assert code == 0, err


KILL_TRAIN = ["--latents", "16", "--k", "2", "--batch-size", "16", "--epochs", "2", "--checkpoint-every", "6", "--no-progress"]

#: Every named point a ``train`` passes (files/faults.py), as DUALSAE_FAULT values.
TRAIN_POINTS = ["before-replace:*/run/manifest.json", "before-replace:*/run/config.json", "before-replace:*state.safetensors",
                "before-replace:*image/model.safetensors", "before-replace:*image/config.json", "train-between-saes",
                "before-replace:*text/model.safetensors", "before-replace:*text/config.json", "before-replace:*summary.json",
                "train-after-summary", "commit:*/run"]


@pytest.fixture(scope="module")
def train_kills(base) -> dict[str, Path]:
    """The uninterrupted run, and one run killed at each point of TRAIN_POINTS (one fork server)."""
    ref = base / "kill-reference"
    assert main(["train", "--data", str(base / "data"), "--out", str(ref), *map(str, KILL_TRAIN)]) == 0
    runs = {point: base / "kills" / f"k{i}" / "run" for i, point in enumerate(TRAIN_POINTS)}
    codes = run_cli_killed([(["train", "--data", base / "data", "--out", run, *KILL_TRAIN], point) for point, run in runs.items()])
    assert codes == [KILLED] * len(runs), dict(zip(runs, codes))
    return {"reference": ref, **runs}


@pytest.mark.parametrize("point", TRAIN_POINTS)
def test_train_killed_at_any_point_reads_complete_or_resumes_to_the_uninterrupted_result(base, train_kills, capsys, point):
    run, uninterrupted = train_kills[point], train_kills["reference"]
    args = ["train", "--data", base / "data", "--out", run, *KILL_TRAIN]
    code, _, err = cli(["info", run], capsys)
    if code != 0:  # not complete: the reader says to resume, and --resume does
        assert one_line_error(code, err, "unfinished", "dualsae train --resume"), err
        code, _, err = cli([*args, "--resume"], capsys)
        assert code == 0, err
    assert cli(["info", run], capsys)[0] == 0
    for sae in ("image", "text"):
        assert (run / sae / "model.safetensors").read_bytes() == (uninterrupted / sae / "model.safetensors").read_bytes(), sae
    assert not (run / "checkpoint").exists() and not [p for p in run.rglob("*") if ".tmp" in p.name]
    rows = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == [json.loads(line)["step"] for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]


def test_truncated_correlation_without_a_manifest_is_one_line(base, tmp_path, capsys):
    al = tmp_path / "al"
    shutil.copytree(base / "al", al)
    (al / "manifest.json").unlink()  # an aligned folder from before manifests: nothing to check the file against
    with open(al / "correlation.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) - 7)
    for args in (["info", al], ["analyze", "top", al, "--latent", "0", "--data", base / "data"]):
        code, _, err = cli(args, capsys)
        assert one_line_error(code, err, "correlation.safetensors: not a readable safetensors file"), (args, err)


def test_a_matched_list_shorter_than_the_others_is_one_line(base, tmp_path, capsys):
    al = tmp_path / "al"
    shutil.copytree(base / "al", al)
    (al / "manifest.json").unlink()
    doc = json.loads((al / "alignment.json").read_text())
    doc["matched"]["correlation"] = doc["matched"]["correlation"][:2]
    (al / "alignment.json").write_text(json.dumps(doc))
    code, _, err = cli(["analyze", "top", al, "--latent", "0", "1", "2", "3", "--data", base / "data"], capsys)
    assert one_line_error(code, err, "alignment.json: field 'matched.correlation' has 2 entries"), err


def test_a_manifest_that_is_a_folder_is_refused(base, tmp_path, capsys):
    al = tmp_path / "al"
    shutil.copytree(base / "al", al)
    (al / "manifest.json").unlink()
    (al / "manifest.json").mkdir()
    for args in (["info", al], ["analyze", "top", al, "--latent", "0", "--data", base / "data"],
                 ["eval", al, "--data", base / "data", "--out", tmp_path / "ev", "--tasks", "recon", "--no-progress"]):
        code, _, err = cli(args, capsys)
        assert one_line_error(code, err, "manifest.json: unreadable or not a dualsae manifest"), (args, err)


def test_eval_on_a_changed_training_store_warns(base, tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    make_store(data, n=400, d=8)
    assert cli(["train", "--data", data, "--out", run, *TRAIN], capsys)[0] == 0
    shutil.rmtree(data)
    make_store(data, n=300, d=8)  # the store the run records, regenerated with fewer rows
    code, _, err = cli(["eval", run, "--out", tmp_path / "ev", "--tasks", "recon", "--no-progress"], capsys)
    assert code == 0 and err.count("the training store of") == 1 and "now has 300 rows" in err and "when it had 400" in err, err


# ---------------------------------------------------------------------- 3. one line, not a traceback (report)


def test_report_flags_are_checked_and_its_lock_error_names_out(base, tmp_path, capsys):
    from dualsae.report.build import report_lock

    args = ["report", base / "al", "--data", base / "data", "--out", tmp_path / "site", "--no-progress", "--probe-latents", "0"]
    for extra, needle in ((["--probe", "9999"], "--probe 9999: not a latent of"), (["--alpha", "nan"], "--alpha must be a finite number"),
                          (["--device", "tpu9"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu9'"),
                          (["--device", "meta"], "--device must be auto, cpu, cuda or cuda:N, got 'meta'")):
        code, _, err = cli([*args, *extra], capsys)
        assert one_line_error(code, err, needle), (extra, err)
        assert not (tmp_path / "site").exists()
    with report_lock(tmp_path / "site"):
        code, _, err = cli(args, capsys)
    assert one_line_error(code, err, f"{tmp_path / 'site'}: in use by another dualsae process"), err


def test_diagnose_on_constant_rows_and_confidence_flags_say_one_line_naming_the_flag(base, tmp_path, capsys):
    from dualsae.store.paired import write_store

    for name, value in (("zeros", 0.0), ("const", 1.5)):
        write_store(tmp_path / name, np.full((300, 8), value, np.float32), np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32))
        code, out, err = cli(["diagnose", tmp_path / name, "--no-progress"], capsys)
        assert one_line_error(code, err, "every image row sampled (300) is", "all zero" if value == 0 else "constant") and err.count("\n") == 1, err
    code, _, err = cli(["diagnose", base / "data", "--no-progress", "--batch-size", "500"], capsys)
    assert one_line_error(code, err, "--batch-size is 500, larger than the 200 pairs"), err
    code, _, err = cli(["diagnose", base / "data", "--no-progress", "--rows", "0"], capsys)
    assert one_line_error(code, err, "--rows must be an integer >= 1"), err
    for extra, needle in ((["--shuffles", "-1"], "--shuffles must be >= 0"), (["--min-support", "-3"], "--min-support must be >= 0"),
                          (["--null-quantile", "1.5"], "--null-quantile must be in (0, 1)"),
                          (["--min-correlation", "1.5"], "--min-correlation must be a correlation in [-1, 1]"),
                          (["--min-correlation", "-2"], "in [-1, 1]"), (["--min-correlation", "nan"], "in [-1, 1]"),
                          (["--min-correlation", "inf"], "in [-1, 1]")):
        code, _, err = cli(_align(base / "run", base / "data", tmp_path / "al", *extra), capsys)
        assert one_line_error(code, err, needle), (extra, err)
        assert not (tmp_path / "al").exists()


def test_a_full_disk_during_training_is_one_line_and_the_run_resumes(tmp_path, capsys):
    """A real full disk (a tmpfs of 1.2 MB in a private mount namespace): the first checkpoint (~0.8 MB)
    fits, the second's temporary does not. The run stops with one line; copied to a roomy disk, it resumes
    to the weights of an uninterrupted run."""
    from tests.fault_helpers import run_cli_on_tmpfs

    make_store(tmp_path / "data", n=256, d=32)
    args = ["--data", tmp_path / "data", "--latents", "1024", "--k", "4", "--batch-size", "32", "--epochs", "2",
            "--checkpoint-every", "4", "--no-progress"]
    mnt, moved = tmp_path / "mnt", tmp_path / "moved"
    full = run_cli_on_tmpfs(mnt, "size=1200k", [["train", *args, "--out", mnt / "run"]], copy_out=moved)
    assert full.stdout.splitlines() == ["rc=2"], full.stdout + full.stderr
    assert "(no space left on the device)" in full.stderr and "Traceback" not in full.stderr, full.stderr
    assert full.stderr.count("dualsae: error:") == 1
    run = moved / "run"
    assert (run / "checkpoint" / "state.safetensors").is_file() and not [p for p in run.rglob("*") if ".tmp" in p.name]
    code, _, err = cli(["train", *args, "--out", run, "--resume"], capsys)
    assert code == 0, err
    assert cli(["train", *args, "--out", tmp_path / "ref"], capsys)[0] == 0
    for sae in ("image", "text"):
        assert (run / sae / "model.safetensors").read_bytes() == (tmp_path / "ref" / sae / "model.safetensors").read_bytes()


# ---------------------------------------------------------------------- 5. every named write point of the other writers

SYNTH = ["--quick", "--distances", "0.5", "--gs-multipliers", "1", "--iso-multipliers", "1", "--latents", "64", "--k", "4",
         "--epochs", "2", "--n-train", "512", "--n-eval", "128", "--no-progress"]
TABLE1 = ["--seeds", "0", "--latents", "16", "--k", "2", "--epochs", "1", "--batch-size", "32", "--methods", "specific", "--no-progress"]

#: (command, DUALSAE_FAULT) for every named point (files/faults.py) those writers pass.
OTHER_POINTS = [
    ("align", "before-replace:*/out/manifest.json"), ("align", "before-replace:*/out/image/model.safetensors"),
    ("align", "align-between-saes"), ("align", "before-replace:*/out/text/config.json"),
    ("align", "before-replace:*/out/alignment.json"), ("align", "before-replace:*/out/correlation.safetensors"), ("align", "commit:*/out"),
    ("synthetic", "before-replace:*/out/plan.json"), ("synthetic", "before-replace:*/out/units/*"),
    ("synthetic", "before-replace:*/out/results.json"), ("synthetic", "commit:*/out"),
    ("table1", "before-replace:*/out/plan.json"), ("table1", "before-replace:*/out/units/*"),
    ("table1", "before-replace:*/out/table1.json"), ("table1", "commit:*/out"),
    ("extract", "before-replace:*/out/manifest.json"), ("extract", "before-replace:*/out/.shards/*done.json"), ("extract", "extract-assembly"),
    ("extract", "before-replace:*/out/image.npy"), ("extract", "before-replace:*/out/extract.json"), ("extract", "commit:*/out"),
    ("report", "before-replace:*/.out.tmp-*/manifest.json"), ("report", "commit:*/.out.tmp-*"), ("report", "report-swap"),
]


def _command(kind: str, base: Path, inputs: dict, out: Path) -> list:
    return {
        "align": _align(base / "run", base / "data", out),
        "synthetic": ["reproduce", "synthetic", *SYNTH, "--out", out],
        "table1": ["reproduce", "table1", "--train", base / "data", "--eval", base / "data", *TABLE1, "--out", out],
        "extract": ["extract", "--model", inputs.get("clip", ""), "--format", "jsonl", "--table", inputs.get("table", ""), "--shard-size", "2",
                    "--out", out],
        "report": ["report", base / "al", "--data", base / "data", "--out", out, "--no-progress", "--probe-latents", "1"],
    }[kind]


def _result(kind: str, out: Path):
    """What must equal the uninterrupted run's (timings left out)."""
    def untimed(obj):
        if isinstance(obj, dict):
            return {k: untimed(v) for k, v in obj.items() if not any(t in k for t in ("second", "time", "_s", "timing"))}
        return [untimed(v) for v in obj] if isinstance(obj, list) else obj
    if kind == "align":
        return (out / "text" / "model.safetensors").read_bytes(), json.loads((out / "alignment.json").read_text())["permutation"]
    if kind == "synthetic":
        return untimed(json.loads((out / "results.json").read_text())["rows"])
    if kind == "table1":
        return untimed(json.loads((out / "table1.json").read_text())["table"])
    if kind == "extract":
        return (out / "image.npy").read_bytes(), (out / "text.npy").read_bytes()
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def other_kills(base, tmp_path_factory) -> dict:
    pytest.importorskip("transformers")
    from tests.extract.test_extraction import _build_clip, _table

    root = tmp_path_factory.mktemp("other-kills")
    _build_clip(root / "clip")
    table, _, _ = _table(root, 5)
    inputs = {"clip": root / "clip", "table": table}
    refs = {kind: root / "ref" / kind / "out" for kind in {k for k, _ in OTHER_POINTS}}
    cases = [(_command(kind, base, inputs, out), None) for kind, out in refs.items()]
    killed = {(kind, point): root / f"k{i}" / "out" for i, (kind, point) in enumerate(OTHER_POINTS)}
    expected = [0] * len(refs)
    for (kind, point), out in killed.items():
        if point == "report-swap":  # the swap happens only when a report replaces an earlier one
            cases.append((_command(kind, base, inputs, out), None))
            expected.append(0)
        cases.append((_command(kind, base, inputs, out), point))
        expected.append(KILLED)
    codes = run_cli_killed(cases)
    assert codes == expected, [(c[1], got) for c, got, want in zip(cases, codes, expected) if got != want]
    return {"inputs": inputs, "refs": refs, "killed": killed}


@pytest.mark.parametrize("kind,point", OTHER_POINTS)
def test_a_kill_at_any_named_point_reads_complete_or_reruns_to_the_uninterrupted_result(base, other_kills, capsys, kind, point):
    from dualsae.files.outdir import check_finished, read_claim, verify_files

    out, ref = other_kills["killed"][(kind, point)], other_kills["refs"][kind]
    finished = out.is_dir() and (read_claim(out) or {}).get("complete")
    if not finished:  # the documented way on: the same command again (a resume for reproduce and extract)
        code, _, err = cli(_command(kind, base, other_kills["inputs"], out), capsys)
        assert code == 0, err
    verify_files(out, check_finished(out))
    assert _result(kind, out) == _result(kind, ref)
    # No temporary inside the output (a report killed mid-swap may leave its old copy beside it; the next run removes it).
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
