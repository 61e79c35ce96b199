"""``python -m dualsae.launch``: real ``torchrun`` (two gloo ranks on CPU) whose last printed line is
the failing rank's one-line reason, and Ctrl-C without a traceback (issue 20, class 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from dualsae.launch import _StderrFilter, summary_lines
from tests.helpers import ROOT, make_store

TINY = ["--latents", "16", "--k", "2", "--batch-size", "8", "--no-progress"]


def _launch(args: list, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    env.pop("DUALSAE_FAULT", None)
    return subprocess.Popen([sys.executable, "-m", "dualsae.launch", "--standalone", "--nproc-per-node", "2", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def test_summary_names_the_causing_rank_last_and_the_filter_drops_only_torchruns_signal_traceback(capsys):
    lines = summary_lines([(0, "cause", "dualsae: error: x: in use"), (1, "follows", "dualsae: error: rank 1 stops with it")], 2)
    assert lines[-1] == "dualsae: error: x: in use" and "rank 0" in lines[0]
    assert "without a dualsae error" in summary_lines([], -9)[0]
    stream = iter(["a\n", "Traceback (most recent call last):\n", "  File x\n",
                   "torch.distributed.elastic.multiprocessing.api.SignalException: Process 1 got signal: 2\n",
                   "Traceback (most recent call last):\n", "  File y\n", "ValueError: a bug in a rank\n", "b\n"])
    filt = _StderrFilter(None)
    for line in stream:
        filt.feed(line)
    filt.flush()
    err = capsys.readouterr().err
    assert "SignalException" not in err and "ValueError: a bug in a rank" in err and err.startswith("a\n") and err.endswith("b\n")
    assert filt.dropped


def test_a_refused_torchrun_train_ends_with_the_ranks_one_line(tmp_path):
    make_store(tmp_path / "data", n=64, d=8)
    (tmp_path / "file").write_text("x")
    proc = _launch(["train", "--data", tmp_path / "data", "--out", tmp_path / "file", "--epochs", "1", *TINY])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "ChildFailedError" in err or "FAILED" in err  # torchrun's report is still there ...
    assert err.rstrip("\n").splitlines()[-1] == f"dualsae: error: {tmp_path / 'file'}: is an existing file; expected a folder (or a path that does not exist yet)"


def test_ctrl_c_under_torchrun_prints_no_traceback(tmp_path):
    make_store(tmp_path / "data", n=64, d=8)
    run = tmp_path / "run"
    proc = _launch(["train", "--data", tmp_path / "data", "--out", run, "--epochs", "5000", *TINY], start_new_session=True)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: the whole foreground group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.rstrip("\n").splitlines()[-1] == "dualsae: interrupted"
    # ... and the run resumes (the usual kill semantics).
    assert (run / "config.json").is_file()
