"""torchrun semantics on CPU: two gloo processes started here (with the environment torchrun sets)
train, align and extract exactly as one process does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dualsae.alignment.correlation import load_correlation
from dualsae.alignment.post_hoc import align
from dualsae.core.distributed import Distributed
from dualsae.core.errors import ConfigError
from dualsae.files.lock import output_lock
from dualsae.files.outdir import check_finished, verify_files
from dualsae.models.load import load_model
from dualsae.models.sae import SAE
from dualsae.store.paired import PairedEmbeddings
from dualsae.training.config import TrainConfig
from dualsae.training.trainer import train
from tests.helpers import launch_ranks, make_store, start_ranks, wait_ranks

#: One config per method; AuxK fires (short dead window), BatchTopK is on for two of them.
CONFIGS = {
    "specific": dict(method="specific", latents=64, k=4, dead_window=60),
    "shared": dict(method="shared", latents=32, k=3, activation="batchtopk", dead_window=60),
    "group-sparse": dict(method="group-sparse", latents=32, k=3, activation="batchtopk"),
    "iso-energy": dict(method="iso-energy", latents=32, k=3),
}
COMMON = dict(batch_size=30, epochs=3, preset="synthetic", checkpoint_every=5, log_every=2)
TOL = 1e-5  # max abs weight difference allowed between 2 ranks and 1 process (float32 sums in another order)

_WORKER = r"""
import sys, time
from pathlib import Path
from dualsae.store.paired import PairedEmbeddings
from dualsae.core.distributed import Distributed
from dualsae.training.config import TrainConfig
from dualsae.training.trainer import train
configs, common = {configs}, {common}
data, out, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
store = PairedEmbeddings.open(data).split("train")
dist = Distributed.from_env()
if mode == "all":
    for name, cfg in configs.items():
        run = out / "specific" if name == "specific" else None
        pair = train(store, TrainConfig.from_preset(**cfg, **common), run, progress=False, dist=dist)
        if dist.is_main:
            for mod in ("image", "text"):
                pair.sae_for(mod).save(out / f"{{name}}.{{mod}}")
    # torchrun align through the command line: each rank streams its batches, rank 0 solves and writes
    from dualsae.cli import main
    sys.exit(main(["align", str(out / "specific"), "--data", data, "--out", str(out / "aligned"), "--batch-size", "37", "--no-progress"]))
else:  # a run slowed down so that the test can kill it between two checkpoints
    train(store, TrainConfig.from_preset(**configs["specific"], **common), out / "run", progress=False, dist=dist,
          on_step=lambda step, logs: time.sleep(0.05))
dist.close()
"""


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("ddp") / "data", n=400, d=12)


@pytest.fixture(scope="module")
def reference(data) -> dict:
    """One process: every method's trained model."""
    store = PairedEmbeddings.open(data).split("train")
    out = {}
    for name, cfg in CONFIGS.items():
        out[name] = train(store, TrainConfig.from_preset(**cfg, **COMMON), progress=False)
    return out


def test_two_ranks_train_every_method_and_align_like_one_process(data, reference, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(configs=repr(CONFIGS), common=repr(COMMON)))
    outs = launch_ranks([str(script), str(data), str(tmp_path), "all"])
    for name in CONFIGS:
        for mod in ("image", "text"):
            ref = reference[name].sae_for(mod).state_dict()
            got = SAE.load(tmp_path / f"{name}.{mod}").state_dict()
            diff = _max_diff(ref, got)
            assert diff < TOL, f"{name} {mod}: max abs weight difference {diff:.3g} between 2 ranks and 1 process"
            # counters and BatchTopK threshold are global-batch statistics: identical, not just close
            assert torch.equal(ref["samples_since_fired"], got["samples_since_fired"]), name
            assert abs(ref["threshold"].item() - got["threshold"].item()) < TOL, name
    assert (reference["specific"].sae_for("image").dead_mask().any()
            or reference["specific"].sae_for("text").dead_mask().any()), "AuxK should have had dead latents to use"
    # align: the 2-rank command equals one process aligning the same (2-rank) model
    run = tmp_path / "specific"
    store = PairedEmbeddings.open(data).split("train")
    align(load_model(run), store, batch_size=37, progress=False).save(tmp_path / "aligned1")
    (c1, li1, lt1), (c2, li2, lt2) = load_correlation(tmp_path / "aligned1"), load_correlation(tmp_path / "aligned")
    assert torch.equal(li1, li2) and torch.equal(lt1, lt2) and (c1 - c2).abs().max().item() < 1e-12
    perm = [json.loads((tmp_path / f / "alignment.json").read_text())["permutation"] for f in ("aligned1", "aligned")]
    assert perm[0] == perm[1]
    assert "matched" in outs[0] and outs[1] == ""  # rank 0 alone reports
    timing = json.loads((tmp_path / "aligned" / "alignment.json").read_text())["timing"]
    assert timing["correlation_s"] > 0  # the statistics computed across ranks before align() are timed, not 0
    assert timing["total_s"] >= timing["correlation_s"] + timing["assignment_s"]


def test_killed_two_rank_run_resumes_with_two_or_one_ranks(data, reference, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(configs=repr(CONFIGS), common=repr(COMMON)))
    run = tmp_path / "run"
    procs = start_ranks([str(script), str(data), str(tmp_path), "slow"])
    ckpt = run / "checkpoint" / "state.safetensors"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.02)
    time.sleep(0.1)
    for p in procs:  # the real fault: both ranks die mid-run
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert ckpt.exists() and not (run / "summary.json").exists(), "the run should have been killed mid-way"
    shutil.copytree(run, tmp_path / "run1")
    # the same number of ranks, through the command line as torchrun starts it
    launch_ranks(["-m", "dualsae", "train", "--data", str(data), "--out", str(run), "--resume", "--no-progress"])
    # another number of ranks: one process
    store = PairedEmbeddings.open(data).split("train")
    one = train(store, TrainConfig.from_preset(**CONFIGS["specific"], **COMMON), tmp_path / "run1", resume=True, progress=False)
    resumed = load_model(run)
    for mod in ("image", "text"):
        ref = reference["specific"].sae_for(mod).state_dict()
        assert _max_diff(ref, resumed.sae_for(mod).state_dict()) < TOL, f"{mod}: 2-rank resume"
        assert _max_diff(ref, one.sae_for(mod).state_dict()) < TOL, f"{mod}: 1-process resume of a 2-rank run"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # 320 training rows // 30 x 3 epochs  # rank 0 alone logs: no duplicated rows
    manifest = check_finished(run)  # the torchrun command committed the folder as a unit
    assert manifest["complete"] and "image/model.safetensors" in manifest["files"]
    verify_files(run, manifest)


def test_torchrun_commands_keep_the_folder_rules_and_stop_every_rank_on_a_refusal(data, tmp_path):
    """Under torchrun, rank 0 locks and claims the output folder like one process does; when it
    refuses (another job's folder, a folder in use) every rank exits 2 at once instead of waiting
    for ever in the next collective."""
    flags = ["--method", "shared", "--latents", "16", "--k", "2", "--epochs", "1", "--batch-size", "40", "--no-progress"]
    train = ["-m", "dualsae", "train", "--data", str(data), *flags]
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    run = tmp_path / "run"
    launch_ranks([*train, "--out", str(run)])
    cases = [
        ([*train, "--out", str(foreign)], "already holds files written by something else"),
        (["-m", "dualsae", "align", str(run), "--data", str(data), "--out", str(foreign), "--no-progress"], "already holds files"),
        ([*train[:-1], "--out", str(run), "--resume", "--no-progress"], f"in use by another dualsae process (pid {os.getpid()})"),
    ]
    with output_lock(run, "the test's hold"):
        for args, needle in cases:
            procs = start_ranks(args)
            errs = wait_ranks(procs)
            assert [p.returncode for p in procs] == [2, 2], (args, errs)
            assert needle in errs[0] and errs[0].count("\n") == 1, errs[0]
            assert "rank 0 stopped" in errs[1] and errs[1].count("\n") == 1, errs[1]
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    verify_files(run, check_finished(run))  # the held run is untouched


_CLOSE_WORKER = r"""
import os, torch
from dualsae.core.distributed import Distributed
from dualsae.training.config import TrainConfig
from dualsae.training.step import make_adamw
dist = Distributed.from_env()
dist.sum(torch.ones(3))
lin = torch.nn.Linear(3, 3)
opt = make_adamw(lin.parameters(), TrainConfig.from_preset(method="specific", latents=4, k=1))
lin(torch.randn(2, 3)).sum().backward()
opt.step()  # imports torch._dynamo, as every training does
dist.close()
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print(sum("gloo" in n for n in names))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc")
def test_close_ends_the_group_threads_after_an_optimizer_step(tmp_path):
    # A group that outlives close() keeps gloo threads that may free a collective's tensors while the
    # interpreter shuts down, aborting the rank at exit (a flaky SIGABRT of the 2-rank tests).
    script = tmp_path / "worker.py"
    script.write_text(_CLOSE_WORKER)
    outs = launch_ranks([str(script)])
    assert [out.strip() for out in outs] == ["0", "0"], outs


def test_batch_slices_cover_the_global_batch():
    pos = np.arange(31)
    parts = [Distributed(r, 3).slice(pos) for r in range(3)]
    assert [len(p) for p in parts] == [10, 10, 11]
    np.testing.assert_array_equal(np.concatenate(parts), pos)
    assert list(Distributed(1, 3).shards(8)) == [1, 4, 7]


def test_more_ranks_than_rows_per_batch_is_refused(data):
    store = PairedEmbeddings.open(data).split("train")
    with pytest.raises(ConfigError, match="each of the 4 ranks needs at least one row"):
        train(store, TrainConfig.from_preset(method="shared", latents=16, k=2, batch_size=3, epochs=1), progress=False, dist=Distributed(0, 4))
