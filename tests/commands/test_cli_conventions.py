"""The CLI polish list of issue 10 point 4: store opening, --data defaults, --out folders, eval exit
codes, zero-shot baseline, analyze top, progress lines in logs, help defaults, file modes, config errors."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

from dualsae.cli import build_parser, main
from dualsae.core.errors import ConfigError
from dualsae.store.paired import PairedEmbeddings, write_store
from dualsae.training.config import TrainConfig
from tests.helpers import make_clip_retrieval, make_store


def test_paired_embeddings_open_reads_clip_retrieval_with_every_column(tmp_path):
    make_clip_retrieval(tmp_path / "cr", sizes=(3, 2))
    store = PairedEmbeddings.open(tmp_path / "cr")
    assert store.n == 5
    assert store.meta[4] == {"caption": "c4", "url": "u4", "key": "000000004", "width": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny specific run and its aligned folder (recorded store: the planted helper store)."""
    root = tmp_path_factory.mktemp("polish")
    store = make_store(root / "store", n=300, d=8)
    run, aligned = root / "run", root / "aligned"
    assert main(["train", "--data", str(store), "--method", "specific", "--latents", "16", "--k", "2",
                 "--batch-size", "64", "--epochs", "1", "--preset", "synthetic", "--out", str(run), "--no-progress"]) == 0
    assert main(["align", str(run), "--out", str(aligned), "--no-progress", "--shuffles", "10"]) == 0
    return store, run, aligned


def test_checkpoints_and_models_get_the_json_file_mode(trained):
    _, run, aligned = trained
    expect = 0o666 & ~_umask()
    for path in (run / "image" / "model.safetensors", aligned / "correlation.safetensors", run / "config.json"):
        assert os.stat(path).st_mode & 0o777 == expect, path


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


def test_eval_out_is_a_folder_and_a_skipped_requested_task_fails(trained, capsys):
    store, _, aligned = trained
    out = trained[0].parent / "ev"
    # default tasks: what can run runs, the rest is skipped quietly (exit 0); --data from the aligned folder
    assert main(["eval", str(aligned), "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert "recon" in doc["tasks"] and "steering" in doc["skipped"]
    # asked for steering without --concept-field: metrics.json written, exit 1
    assert main(["eval", str(aligned), "--data", str(store), "--tasks", "recon,steering", "--out", str(out), "--no-progress"]) == 1
    assert "requested task(s) skipped: steering" in capsys.readouterr().err
    assert main(["eval", str(aligned), "--out", str(out / "m.json")]) == 2


def test_zero_shot_prints_the_majority_baseline(trained, capsys, tmp_path):
    store, _, aligned = trained
    meta = [json.loads(line) for line in (store / "meta.jsonl").read_text().splitlines()]
    for i, r in enumerate(meta):
        r["label"] = "a" if i % 4 else "b"  # 75% of rows are class a
    s2 = write_store(tmp_path / "s2", np.load(store / "image.npy"), np.load(store / "text.npy"), meta)
    assert main(["eval", str(aligned), "--data", str(s2), "--tasks", "zeroshot", "--label-field", "label",
                 "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["tasks"]["zeroshot"]["majority_baseline"] == pytest.approx(0.75)
    top1 = next(line for line in capsys.readouterr().out.splitlines() if "top-1" in line)  # the eval table's row
    assert top1.split()[-3:] == ["0.7500", "majority", "class"]


def test_analyze_top_collapses_captions_and_takes_several_latents(trained, tmp_path, capsys):
    store, _, aligned = trained
    meta = [{"caption": "same" if i % 2 else f"row {i}"} for i in range(300)]
    s2 = write_store(tmp_path / "s2", np.load(store / "image.npy"), np.load(store / "text.npy"), meta)
    from dualsae.evaluation.top_rows import top_examples_many
    from dualsae.models.load import load_model

    pair = load_model(aligned)
    st = PairedEmbeddings.open(s2)
    got = top_examples_many(pair, st, [0, 3], "image", n=4)
    codes = pair.encode("image", st.read("image"))
    for ex, j in zip(got, (0, 3)):
        fires = ((codes.indices == j) & (codes.values != 0)).any(1)
        assert ex.fired == int(fires.sum()) and ex.n_rows == 300
        caps = [r["caption"] for r in ex.rows]
        assert len(caps) == len(set(caps))  # identical captions merged
        act = (codes.values * (codes.indices == j)).sum(1)
        same = [i for i in range(1, 300, 2) if act[i] > 0]
        top_same = [r for r in ex.rows if r["caption"] == "same"]
        if same:
            assert top_same and top_same[0]["count"] == len(same) and top_same[0]["activation"] == pytest.approx(float(act[same].max()))
    assert main(["analyze", "top", str(aligned), "--data", str(s2), "--latent", "0", "3", "-n", "4", "--modality", "image"]) == 0
    out = capsys.readouterr().out
    assert out.count("latent ") >= 2 and "fires on" in out and "rows (" in out


def test_progress_prints_plain_lines_when_not_a_terminal(monkeypatch):
    from dualsae.core.progress import tqdm

    monkeypatch.setenv("DUALSAE_PROGRESS_SECONDS", "0")
    buf = io.StringIO()
    for _ in tqdm(range(3), desc="work", file=buf):
        pass
    text = buf.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) >= 2 and lines[-1].startswith("work: 100%")


def test_train_help_shows_real_defaults():
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    text = sub.format_help()
    assert "(default: None)" not in text
    assert "default: 1024 with --preset real, 256 with --preset synthetic" in " ".join(text.split())
    assert "default: 8192" in text


def test_odd_latents_for_specific_and_oversized_batch_are_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="even"):
        TrainConfig(method="specific", latents=2047)
    TrainConfig.from_preset(method="shared", latents=2047, k=4)  # fine for one shared SAE
    store = make_store(tmp_path / "s", n=100, d=8)
    assert main(["train", "--data", str(store), "--latents", "15", "--k", "2", "--out", str(tmp_path / "r")]) == 2
    assert "must be even" in capsys.readouterr().err
    assert main(["train", "--data", str(store), "--latents", "16", "--k", "2", "--batch-size", "500",
                 "--out", str(tmp_path / "r2")]) == 2
    assert "larger than the 80 rows of the training split" in capsys.readouterr().err
