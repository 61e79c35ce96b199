"""The command line: help everywhere, one-line actionable errors, nothing written on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dualsae.cli import build_parser, main
from tests.helpers import make_store


def _subcommands(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield [name], sub
                for rest, subsub in _subcommands(sub):
                    yield [name, *rest], subsub


def test_help_on_every_command(capsys):
    cmds = list(_subcommands(build_parser()))
    names = {" ".join(c) for c, _ in cmds}
    for required in ("train", "info", "align", "reproduce synthetic"):
        assert required in names
    for cmd, _ in cmds:
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0
        assert "usage: dualsae" in capsys.readouterr().out


def _run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_info_roundtrip(tmp_path, capsys):
    make_store(tmp_path / "data", n=300, d=16)
    code, out, _ = _run(["train", "--data", str(tmp_path / "data"), "--method", "specific", "--latents", "32", "--k", "4",
                         "--batch-size", "32", "--epochs", "2", "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert code == 0 and "trained specific (16 latents per SAE, k=4)" in out
    code, out, _ = _run(["info", str(tmp_path / "run"), "--data", str(tmp_path / "data"), "--json"], capsys)
    info = json.loads(out)
    assert info["parameters"] == 2 * (2 * 16 * 16 + 16 + 16)
    assert info["data"]["split"] == "test" and info["data"]["image"]["n_rows"] == 60
    ev = info["data"]["image"]["explained_variance"]
    assert 0 < ev < 1
    # MSE and explained variance agree with a direct computation.
    from dualsae.models.load import load_model
    from dualsae.store.paired import PairedEmbeddings

    pair = load_model(tmp_path / "run")
    x = PairedEmbeddings.open(tmp_path / "data").split("test").read("image")
    mse = (x - pair.sae_for("image").reconstruct(x)).pow(2).sum(1).mean().item()
    assert info["data"]["image"]["mse"] == pytest.approx(mse, rel=1e-5)
    live = info["data"]["image"]["live_latents"]
    assert 0 < live <= 16 and info["data"]["image"]["dead_fraction"] == pytest.approx(1 - live / 16)


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["--method", "joint"], "--method must be one of specific, shared, group-sparse, iso-energy, found 'joint'"),
        (["--preset", "huge"], "--preset must be one of real, synthetic, found 'huge'"),
        (["--latents", "16", "--k", "8"], "'k' must satisfy 1 <= k < m, found k=8 with m=8 latents per SAE"),
    ],
)
def test_train_bad_options_one_line_and_nothing_written(tmp_path, capsys, extra, pattern):
    make_store(tmp_path / "data", n=100, d=8)
    code, _, err = _run(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--no-progress", *extra], capsys)
    assert code == 2
    assert err.startswith("dualsae: error: ") and err.count("\n") == 1
    assert pattern in err
    assert not (tmp_path / "run").exists()


def test_train_bad_data_one_line(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    x = np.ones((10, 4), np.float32)
    x[3, 1] = np.nan
    np.save(folder / "image.npy", x)
    np.save(folder / "text.npy", np.ones((10, 4), np.float32))
    code, _, err = _run(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--latents", "8", "--k", "2"], capsys)
    assert code == 2 and "image.npy: row 3 contains NaN" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_resume_with_different_config_is_refused(tmp_path, capsys):
    make_store(tmp_path / "data", n=200, d=8)
    base = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--latents", "16", "--k", "2",
            "--batch-size", "32", "--epochs", "1", "--no-progress"]
    assert _run(base, capsys)[0] == 0
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    code, _, err = _run([*base, "--resume", "--k", "3"], capsys)
    assert code == 2 and "field 'k' is 2 in the saved run, the resumed run asks for 3" in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_info_on_broken_checkpoint(tmp_path, capsys):
    make_store(tmp_path / "data", n=200, d=8)
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--latents", "16", "--k", "2",
                 "--batch-size", "32", "--epochs", "1", "--no-progress", "--method", "shared"]) == 0
    from safetensors.torch import load_file, save_file

    path = tmp_path / "run" / "shared" / "model.safetensors"
    t = load_file(str(path))
    t["W_enc"] = t["W_enc"][:, :4].contiguous()
    save_file(t, str(path))
    capsys.readouterr()
    code, _, err = _run(["info", str(tmp_path / "run")], capsys)
    assert code == 2 and "tensor 'W_enc' has shape [16, 4], expected [16, 8]" in err


def test_console_script_entry_point(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dualsae.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("dualsae ")


def test_seeded_split_of_training_is_reused_by_align_eval_info_and_resume(tmp_path, capsys):
    """A store without a meta 'split': train with a non-default seeded split; align, eval and info
    without split flags must use those same rows (and their complement), and --resume keeps them."""
    from dualsae.store.paired import PairedEmbeddings

    make_store(tmp_path / "data", n=200, d=8, split=False)
    store = PairedEmbeddings.open(tmp_path / "data")
    train_rows = store.split("train", test_fraction=0.35, seed=7)
    assert len(train_rows) != len(store.split("train"))  # the defaults would pick other rows
    base = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--latents", "16", "--k", "2",
            "--batch-size", "16", "--epochs", "1", "--no-progress"]
    assert _run([*base, "--test-fraction", "0.35", "--split-seed", "7"], capsys)[0] == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (cfg["split"], cfg["test_fraction"], cfg["split_seed"]) == ("train", 0.35, 7)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == len(train_rows) // 16
    # --resume without the split flags takes the recorded split: the config check passes and only
    # the finished run stops it (a default split would be refused as a changed field first).
    code, _, err = _run([*base, "--resume"], capsys)
    assert code == 2 and "already finished" in err
    code, out, _ = _run(["align", str(tmp_path / "run"), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "al"),
                         "--no-progress"], capsys)
    assert code == 0
    rep = json.loads((tmp_path / "al" / "alignment.json").read_text())
    assert rep["rows"] == len(train_rows) and (rep["test_fraction"], rep["split_seed"]) == (0.35, 7)
    held_out = len(store.split("test", test_fraction=0.35, seed=7))
    code, out, _ = _run(["info", str(tmp_path / "run"), "--data", str(tmp_path / "data"), "--json"], capsys)
    assert json.loads(out)["data"]["image"]["n_rows"] == held_out
    code, out, _ = _run(["eval", str(tmp_path / "al"), "--data", str(tmp_path / "data"), "--tasks", "recon",
                         "--out", str(tmp_path / "m"), "--no-progress"], capsys)
    assert code == 0 and json.loads((tmp_path / "m" / "metrics.json").read_text())["n_rows"] == held_out
