"""Fault injection against the CLI (issue 9): each test injects the real fault (a SIGKILL at a named
save point, a torn or foreign file, a second writer, a read-only or full file system, an extreme
value) and checks what a user then sees: the old complete output, the new complete output, or a
one-line error (exit 2) that says what to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dualsae.cli import main
from dualsae.store.paired import epoch_order, write_store
from tests.fault_helpers import KILLED, cli, cli_env, one_line_error, run_cli, run_cli_on_tmpfs
from tests.helpers import make_store

TRAIN = ["--latents", "16", "--k", "2", "--batch-size", "32", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A paired store and two trained specific runs on it (seeds 0 and 1). Tests copy, never modify."""
    root = tmp_path_factory.mktemp("faults")
    make_store(root / "data", n=200, d=8)
    for name, seed in (("runA", 0), ("runB", 1)):
        assert main(["train", "--data", str(root / "data"), "--out", str(root / name), "--seed", str(seed), *TRAIN]) == 0
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def _align(base: Path, run: str, out: Path, *extra: str) -> list[str]:
    return ["align", base / run, "--data", base / "data", "--out", out, "--no-progress", *extra]


# ---------------------------------------------------------------------- 1. foreign folders


def test_writers_refuse_a_folder_they_did_not_write(base, tmp_path, capsys):
    victim = tmp_path / "victim"
    shutil.copytree(base / "runB", victim)
    before = _files(victim)
    code, _, err = cli(_align(base, "runA", victim), capsys)
    assert one_line_error(code, err, "already holds files", "--overwrite")
    assert _files(victim) == before  # run B's weights are untouched
    # The same job again writes into its own folder; another job needs --overwrite.
    out = tmp_path / "aligned"
    assert cli(_align(base, "runA", out), capsys)[0] == 0
    assert cli(_align(base, "runA", out), capsys)[0] == 0
    code, _, err = cli(_align(base, "runB", out), capsys)
    assert one_line_error(code, err, "written by 'dualsae align' for another job")
    assert cli(_align(base, "runB", out, "--overwrite"), capsys)[0] == 0
    assert json.loads((out / "alignment.json").read_text())["source_run"] == str(base / "runB")
    # train, analyze and eval refuse a folder (or file) that holds something of someone else's.
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("mine")
    code, _, err = cli(["train", "--data", base / "data", "--out", notes, *TRAIN], capsys)
    assert one_line_error(code, err, "already holds files written by something else (mine.txt)")
    code, _, err = cli(["analyze", "heterogeneity", out, "--out", notes, "--no-progress"], capsys)
    assert one_line_error(code, err, "already holds files")
    code, _, err = cli(["eval", out, "--data", base / "data", "--out", notes, "--tasks", "recon", "--no-progress"], capsys)
    assert one_line_error(code, err, "already holds files")
    assert sorted(p.name for p in notes.iterdir()) == ["mine.txt"] and (notes / "mine.txt").read_text() == "mine"
    code, _, err = cli(["train", "--data", base / "data", "--out", notes, "--overwrite", *TRAIN], capsys)
    assert code == 0 and not (notes / "mine.txt").exists()


# ---------------------------------------------------------------------- 2. outputs as a unit


def test_align_killed_mid_rewrite_is_unfinished_never_mixed(base, tmp_path, capsys):
    out = tmp_path / "aligned"
    assert cli(_align(base, "runA", out), capsys)[0] == 0
    killed = run_cli(_align(base, "runB", out, "--overwrite"), fault="align-between-saes")
    assert killed.returncode == KILLED, killed.stderr
    # image/ is run B's alignment, text/ still run A's: both readers refuse instead of loading the mix.
    code, _, err = cli(["info", out], capsys)
    assert one_line_error(code, err, "unfinished", "'dualsae align'")
    code, _, err = cli(["eval", out, "--data", base / "data", "--out", tmp_path / "ev", "--tasks", "recon", "--no-progress"], capsys)
    assert one_line_error(code, err, "unfinished")
    assert cli(_align(base, "runB", out, "--overwrite"), capsys)[0] == 0  # the rerun finishes it
    assert cli(["info", out], capsys)[0] == 0


def test_a_folder_mixed_by_hand_fails_its_manifest(base, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(_align(base, "runA", a), capsys)[0] == 0
    assert cli(_align(base, "runB", b), capsys)[0] == 0
    shutil.copy(b / "text" / "model.safetensors", a / "text" / "model.safetensors")  # same shapes, other weights
    code, _, err = cli(["info", a], capsys)
    assert one_line_error(code, err, "text/model.safetensors: differs from the file 'dualsae align' wrote")


def test_train_killed_between_saes_is_unfinished_and_resume_checks_the_store(base, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", base / "data", "--out", run, *TRAIN]
    killed = run_cli(args, fault="train-between-saes")
    assert killed.returncode == KILLED, killed.stderr
    assert (run / "image").is_dir() and not (run / "text").exists()
    code, _, err = cli(["info", run], capsys)
    assert one_line_error(code, err, "unfinished", "dualsae train --resume")
    # Without its manifest (a run written by the library's train()), the half-saved run is still refused.
    from dualsae.core.errors import CheckpointError
    from dualsae.models.load import load_model

    manifest = (run / "manifest.json").read_bytes()
    (run / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"unfinished: holds only \['image'\] of the SAEs"):
        load_model(run)
    (run / "manifest.json").write_bytes(manifest)
    # --resume on another store of the same shape is refused (its fingerprint differs) ...
    make_store(tmp_path / "other", n=200, d=8, seed=7)
    code, _, err = cli(["train", "--data", tmp_path / "other", "--out", run, "--resume", "--no-progress"], capsys)
    assert one_line_error(code, err, "same shape but other contents")
    # ... and on the right one finishes the run.
    assert cli([*args, "--resume"], capsys)[0] == 0
    code, out, _ = cli(["info", run, "--json"], capsys)
    assert code == 0 and set(json.loads(out)["saes"]) == {"image", "text"}


# ---------------------------------------------------------------------- 3. reproduce unit files


def _leave_temporary(path: Path, obj) -> None:
    """A real kill between write and rename: a process writes ``path`` atomically and is SIGKILLed
    at the rename; it leaves the complete hidden temporary beside ``path``."""
    before = set(path.parent.iterdir())
    code = "import json, sys; from dualsae.files.atomic import write_json; write_json(sys.argv[1], json.loads(sys.argv[2]))"
    r = subprocess.run([sys.executable, "-c", code, str(path), json.dumps(obj)], env=cli_env(f"before-replace:*{path.name}"))
    (temp,) = set(path.parent.iterdir()) - before
    assert r.returncode == KILLED and temp.name.startswith(f".{path.name}.") and json.loads(temp.read_text()) == obj


SYNTH = ["--seeds", "0", "--distances", "0.0", "0.5", "--multipliers", "1.0", "--latents", "96", "--k", "4", "--epochs", "2",
         "--n-train", "512", "--n-eval", "128", "--no-progress"]


def test_synthetic_report_counts_finished_units_only(tmp_path, capsys):
    from dualsae.experiments.synthetic.job import build_report
    from dualsae.experiments.synthetic.plan import plan_from_json

    out = tmp_path / "job"
    assert cli(["reproduce", "synthetic", "--out", out, *SYNTH, "--max-units", "1"], capsys)[0] == 0
    saved = json.loads((out / "plan.json").read_text())
    plan = plan_from_json(saved)
    (unit,) = list((out / "units").iterdir())
    rows = json.loads(unit.read_text())
    # The same unit's file killed before its rename, and an empty temporary (a kill before the first byte).
    _leave_temporary(unit, rows)
    (out / "units" / f".{unit.name}.abc123.tmp.json").write_text("")
    assert len([p for p in (out / "units").iterdir() if p.name.startswith(".")]) == 2
    report = build_report(plan, out)
    assert report["units_done"] == 1 and len(report["rows"]) == len(rows)
    # A rerun sweeps the temporaries and still counts one unit.
    code, text, _ = cli(["reproduce", "synthetic", "--out", out, *SYNTH, "--max-units", "0"], capsys)
    assert code == 0 and "1/6 trainings done" in text
    assert not [p for p in (out / "units").iterdir() if p.name.startswith(".")]
    # A damaged unit file or plan is one line naming it, not a traceback.
    unit.write_text("{not json")
    code, _, err = cli(["reproduce", "synthetic", "--out", out, *SYNTH, "--max-units", "0"], capsys)
    assert one_line_error(code, err, unit.name, "damaged unit result")
    (out / "plan.json").write_text("[1, 2")
    code, _, err = cli(["reproduce", "synthetic", "--out", out, *SYNTH, "--max-units", "0"], capsys)
    assert one_line_error(code, err, "plan.json: not valid JSON")


def test_table1_counts_each_method_seed_once(tmp_path):
    from dualsae.experiments.table1.table import Table1Plan, build_table

    plan = Table1Plan.from_settings(train="t", eval="e", seeds=(0,), latents=16, k=2, epochs=1, batch_size=8)
    units = tmp_path / "units"
    units.mkdir()
    row = {"method": "shared", "seed": 0, "recon_mse_image": 1.0}
    # Two kills between write and rename of this unit (each left a complete temporary), then it finished.
    _leave_temporary(units / "shared_seed0.json", {**row, "recon_mse_image": 9.0})
    _leave_temporary(units / "shared_seed0.json", {**row, "recon_mse_image": 5.0})
    (units / "shared_seed0.json").write_text(json.dumps(row))
    table = build_table(plan, tmp_path)
    (entry,) = table["table"]
    assert entry["seeds"] == 1 and table["rows"] == [row]


# ---------------------------------------------------------------------- 4. numeric guards


def _store_with_huge_cell(folder: Path, position_in_second_batch: bool = True) -> int:
    """200 rows; one cell 1e30 in a row of the *second* batch of epoch 0 (batch size 32, seed 0)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.normal(size=(64, 8)).astype(np.float32)
    row = int(epoch_order(64, 0, 0)[40])
    x[row, 3] = 1e30
    write_store(folder, x, y)
    return row


def test_huge_value_is_refused_or_stops_training_with_the_last_good_checkpoint(tmp_path, capsys):
    row = _store_with_huge_cell(tmp_path / "data")
    args = ["train", "--data", tmp_path / "data", "--latents", "16", "--k", "2", "--batch-size", "32", "--epochs", "2",
            "--split", "all", "--checkpoint-every", "1", "--no-progress"]
    code, _, err = cli([*args, "--out", tmp_path / "run"], capsys)
    assert one_line_error(code, err, f"image.npy: row {row} has norm", "--allow-outliers")
    run = tmp_path / "run2"
    code, _, err = cli([*args, "--out", run, "--allow-outliers"], capsys)
    assert one_line_error(code, err, "training stopped at step 2: the loss is not finite", "last good checkpoint (step 1)")
    from safetensors.torch import load_file

    state = load_file(str(run / "checkpoint" / "state.safetensors"))
    assert all(bool(np.isfinite(t.float().numpy()).all()) for t in state.values())
    assert not (run / "image").exists()
    assert one_line_error(*cli(["info", run], capsys)[::2], "unfinished")


def test_info_flags_non_finite_weights(tmp_path, capsys):
    import torch

    from dualsae.models.sae import SAE, SAEConfig

    sae = SAE(SAEConfig(d=8, m=16, k=2))
    with torch.no_grad():
        sae.W_enc[3, 1] = float("nan")
    sae.save(tmp_path / "sae")
    code, out, err = cli(["info", tmp_path / "sae", "--json"], capsys)
    assert code == 0 and json.loads(out)["saes"]["shared"]["non_finite_tensors"] == ["W_enc"]
    assert "NaN or inf in W_enc" in err


@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_far_from_unit_scale_warns_and_logs_significant_digits(tmp_path, capsys, scale):
    make_store(tmp_path / "unit", n=200, d=8)
    from dualsae.store.paired import PairedEmbeddings

    s = PairedEmbeddings.open(tmp_path / "unit")
    write_store(tmp_path / "scaled", s.read("image").numpy() * scale, s.read("text").numpy() * scale)
    # --input-scale off: the default (auto) rescales such rows instead of warning (tests/training/test_input_scale.py).
    code, _, err = cli(["train", "--data", tmp_path / "scaled", "--out", tmp_path / "run", "--log-every", "1", "--input-scale", "off", *TRAIN], capsys)
    assert code == 0 and err.count("median row norm is") == 2  # once per modality
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    mse = [r["mse_image"] for r in rows]
    assert all(np.isfinite(mse)) and min(mse) > 0
    # Each logged loss keeps 7 significant digits, at any scale (6 fixed decimals made 1e-4 runs log 0.0).
    assert all(abs(v - float(f"{v:.7g}")) == 0 and len(f"{v:.7g}".replace(".", "").lstrip("0")) > 3 for v in mse)


# ---------------------------------------------------------------------- 5. one writer per folder


def test_second_writer_fails_naming_the_holder(base, tmp_path, capsys):
    from dualsae.files.lock import output_lock

    run = tmp_path / "run"
    with output_lock(run):  # a real flock held by "another" writer (another open file description)
        code, _, err = cli(["train", "--data", base / "data", "--out", run, *TRAIN], capsys)
        assert one_line_error(code, err, f"in use by another dualsae process (pid {os.getpid()})")
        code, _, err = cli(["train", "--data", base / "data", "--out", run, "--resume", "--no-progress"], capsys)
        assert one_line_error(code, err, f"(pid {os.getpid()})")
    with output_lock(tmp_path / "job"):
        code, _, err = cli(["reproduce", "synthetic", "--out", tmp_path / "job", "--quick", "--no-progress"], capsys)
        assert one_line_error(code, err, f"(pid {os.getpid()})")
    # A lock left by a killed holder (its process is gone) does not block.
    assert cli(["train", "--data", base / "data", "--out", run, *TRAIN], capsys)[0] == 0


# ---------------------------------------------------------------------- 6. store fingerprints


def test_store_mismatches_are_said_loudly(base, tmp_path, capsys):
    # align on a store with another row count than the training store
    make_store(tmp_path / "bigger", n=260, d=8)
    code, _, err = cli(_align(base, "runA", tmp_path / "al"), capsys)
    assert code == 0 and "warning" not in err
    code, _, err = cli(["align", base / "runA", "--data", tmp_path / "bigger", "--out", tmp_path / "al2", "--no-progress"], capsys)
    assert code == 0 and "trained on a store of 200 rows, this one has 260" in err
    # a model trained on every row, evaluated on the store's "test" rows: those were training rows
    run = tmp_path / "all"
    assert cli(["train", "--data", base / "data", "--out", run, "--split", "all", *TRAIN], capsys)[0] == 0
    code, _, err = cli(["eval", run, "--data", base / "data", "--out", tmp_path / "ev", "--tasks", "recon", "--no-progress"], capsys)
    assert code == 0 and "40 of the 40 rows used here were training rows" in err
    code, _, err = cli(["eval", base / "runA", "--data", base / "data", "--out", tmp_path / "ev2", "--tasks", "recon", "--no-progress"], capsys)
    assert code == 0 and "training rows" not in err


# ---------------------------------------------------------------------- tracebacks -> one line


def _resumable(base: Path, tmp_path: Path) -> tuple[Path, list]:
    run = tmp_path / "run"
    args = ["train", "--data", base / "data", "--out", run, "--latents", "16", "--k", "2", "--batch-size", "32", "--epochs", "3",
            "--checkpoint-every", "4", "--log-every", "1", "--no-progress"]
    killed = run_cli(args, fault="train-between-saes")
    assert killed.returncode == KILLED
    shutil.rmtree(run / "image")
    return run, args


def test_damaged_run_folders_on_resume(base, tmp_path, capsys):
    run, args = _resumable(base, tmp_path)
    pristine = tmp_path / "pristine"
    shutil.copytree(run, pristine)
    # A torn last metrics line (a full disk) is dropped and the run continues.
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "lo')
    assert cli([*args, "--resume"], capsys)[0] == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, len(lines) + 1))
    ckpt = Path("checkpoint") / "state.safetensors"
    damages = {
        "truncated checkpoint": lambda r: (r / ckpt).write_bytes((pristine / ckpt).read_bytes()[:100]),
        "random checkpoint": lambda r: (r / ckpt).write_bytes(os.urandom(4096)),
        "checkpoint is a folder": lambda r: ((r / ckpt).unlink(), (r / ckpt).mkdir()),
        "config not JSON": lambda r: (r / "config.json").write_text("{"),
        "unknown field": lambda r: _edit(r / "config.json", lambda c: c["train"].update(colour="red")),
        "train is a number": lambda r: _edit(r / "config.json", lambda c: c.update(train=5)),
        "k is null": lambda r: _edit(r / "config.json", lambda c: c["train"].update(k=None)),
        "latents is a string": lambda r: _edit(r / "config.json", lambda c: c["train"].update(latents="32")),
    }
    for what, damage in damages.items():
        shutil.rmtree(run)
        shutil.copytree(pristine, run)
        damage(run)
        code, _, err = cli([*args, "--resume"], capsys)
        assert one_line_error(code, err, str(run)), (what, err)


def _edit(path: Path, change) -> None:
    cfg = json.loads(path.read_text())
    change(cfg)
    path.write_text(json.dumps(cfg))


def test_bad_values_and_flags_are_one_line(base, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base / "runA", run)
    # An SAE config with a wrong type names its file (the manifest is not what is tested here).
    (run / "manifest.json").unlink()
    _edit(run / "image" / "config.json", lambda c: c["sae"].update(m="16"))
    code, _, err = cli(["info", run], capsys)
    assert one_line_error(code, err, "image/config.json", "'m' must be int")
    make_store(tmp_path / "wide", n=50, d=12)
    data = base / "data"
    assert cli(_align(base, "runA", tmp_path / "aligned"), capsys)[0] == 0
    cases = [
        (["info", base / "runA", "--data", tmp_path / "wide"], "expects d=8"),
        # every command that reads rows through a model names the store and both widths
        (["align", base / "runA", "--data", tmp_path / "wide", "--out", tmp_path / "t2"], "expects d=8"),
        (["analyze", "heterogeneity", base / "runA", "--data", tmp_path / "wide", "--out", tmp_path / "het"], "expects d=8"),
        (["analyze", "top", base / "runA", "--data", tmp_path / "wide", "--latent", "0"], "expects d=8"),
        (["eval", base / "runA", "--data", tmp_path / "wide", "--out", tmp_path / "ev"], "expects d=8"),
        (["report", base / "runA", "--data", tmp_path / "wide", "--out", tmp_path / "rep"], "expects d=8"),
        (["translate", tmp_path / "aligned", "--data", tmp_path / "wide", "--rows", "0"], "expects d=8"),
        (["info", base / "runA", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["analyze", "top", base / "runA", "--data", data, "--latent", "0", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["train", "--data", data, "--out", tmp_path / "t1", "--lr", "nan", *TRAIN], "'lr' must be a finite number > 0"),
        (["train", "--data", data, "--out", tmp_path / "t1", "--beta1", "1.5", *TRAIN], "'beta1' must be in [0, 1)"),
        (["train", "--data", data, "--out", tmp_path / "t1", "--eps", "-1", *TRAIN], "'eps'"),
        (["train", "--data", data, "--out", tmp_path / "t1", "--weight-decay", "-1", *TRAIN], "'weight_decay'"),
        (["train", "--data", data, "--out", tmp_path / "t1", "--grad-clip", "-1", *TRAIN], "'grad_clip'"),
        (["train", "--data", data, "--out", tmp_path / "t1", "--device", "tpu", *TRAIN], "--device must be"),
        (["align", base / "runA", "--data", data, "--out", tmp_path / "t2", "--device", "cuda:x"], "--device must be"),
        (["eval", base / "runA", "--data", data, "--out", tmp_path / "ev", "--device", "gpu"], "--device must be"),
        (["analyze", "top", base / "runA", "--data", data, "--latent", "0", "--device", "gpu"], "--device must be"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases += [(["train", "--data", data, "--out", tmp_path / "t1", "--device", "cuda", *TRAIN], "no CUDA device"),
                  (["align", base / "runA", "--data", data, "--out", tmp_path / "t2", "--device", "cuda"], "no CUDA device"),
                  (["eval", base / "runA", "--data", data, "--out", tmp_path / "ev", "--device", "cuda"], "no CUDA device")]
    for args, needle in cases:
        code, _, err = cli(args, capsys)
        assert one_line_error(code, err, needle), (args, err)
    for name in ("t1", "t2", "ev", "het", "rep"):
        assert not (tmp_path / name).exists(), name


def test_bad_out_paths_fail_before_any_work(base, tmp_path, capsys, monkeypatch):
    import dualsae.evaluation.tasks

    monkeypatch.setattr(dualsae.evaluation.tasks, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    (tmp_path / "file").write_text("x")
    cases = [
        (["train", "--data", base / "data", "--out", tmp_path / "file", *TRAIN], "is an existing file"),
        (["train", "--data", base / "data", "--out", tmp_path / "file" / "run", *TRAIN], "is a file, not a folder"),
        (_align(base, "runA", tmp_path / "file"), "is an existing file"),
        (["eval", base / "runA", "--data", base / "data", "--out", tmp_path, "--tasks", "recon"], "already holds files"),
        (["eval", base / "runA", "--data", base / "data", "--out", tmp_path / "file" / "ev", "--tasks", "recon"], "is a file, not a folder"),
    ]
    for args, needle in cases:
        code, _, err = cli(args, capsys)
        assert one_line_error(code, err, needle), (args, err)


def test_read_only_and_full_file_systems(base, tmp_path):
    """A real read-only and a real full file system (a tmpfs in a private mount namespace): eval fails
    before it computes anything, the others before they write anything."""
    mnt = tmp_path / "mnt"
    evaluate = ["eval", base / "runA", "--data", base / "data", "--tasks", "recon", "--no-progress"]
    ro = run_cli_on_tmpfs(mnt, "ro,size=64k", [[*evaluate, "--out", mnt / "ev"], _align(base, "runA", mnt / "al")])
    assert ro.stdout.splitlines() == ["rc=2", "rc=2"], ro.stdout + ro.stderr
    assert ro.stderr.count("(read-only file system)") == 2 and "Traceback" not in ro.stderr
    full = run_cli_on_tmpfs(mnt, "size=64k", [[*evaluate, "--out", mnt / "ev"], ["train", "--data", base / "data", "--out", mnt / "run", *TRAIN]],
                            fill=True)
    assert full.stdout.splitlines() == ["rc=2", "rc=2"], full.stdout + full.stderr
    assert full.stderr.count("(no space left on the device)") == 2 and "Traceback" not in full.stderr


def test_damaged_stores_are_one_line(tmp_path, capsys):
    make_store(tmp_path / "ok", n=50, d=8)
    out = ["--out", tmp_path / "run", *TRAIN]
    stores = {}
    for name, damage in {
        "meta not utf8": lambda d: (d / "meta.jsonl").write_bytes(b'{"caption": "caf\xe9"}\n' * 50),
        "meta is a folder": lambda d: ((d / "meta.jsonl").unlink(), (d / "meta.jsonl").mkdir()),
        "random image.npy": lambda d: (d / "image.npy").write_bytes(os.urandom(2048)),
    }.items():
        d = tmp_path / name.replace(" ", "_")
        shutil.copytree(tmp_path / "ok", d)
        damage(d)
        stores[name] = d
    for name, needle in (("meta not utf8", "not UTF-8"), ("meta is a folder", "is a folder"), ("random image.npy", "not a .npy file")):
        code, _, err = cli(["train", "--data", stores[name], *out], capsys)
        assert one_line_error(code, err, needle), (name, err)


def test_image_only_store_says_which_modality_is_missing(tmp_path, capsys):
    make_store(tmp_path / "img", n=100, d=8, text=False)
    code, _, err = cli(["train", "--data", tmp_path / "img", "--out", tmp_path / "run", *TRAIN], capsys)
    assert code == 0 and err.count("has no text.npy; training the image SAE only") == 1


# ---------------------------------------------------------------------- also: stray temporaries


def test_killed_align_leaves_no_temporary_after_the_rerun(base, tmp_path, capsys):
    out = tmp_path / "al"
    killed = run_cli(_align(base, "runA", out), fault="before-replace:*correlation.safetensors")
    assert killed.returncode == KILLED
    assert [p.name for p in out.iterdir() if ".tmp" in p.name]  # the kill left one
    assert cli(_align(base, "runA", out), capsys)[0] == 0
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
