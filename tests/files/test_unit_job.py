"""The one resumable plan-and-units runner (files/unit_job.py): plan.json checks, atomic unit files,
finished units skipped on resume, several files per unit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dualsae.core.errors import ConfigError, DataError
from dualsae.files.unit_job import UnitJob, plan_differences


def test_plan_differences_name_nested_fields_and_accept_axis_extensions():
    saved = {"seeds": [0], "train": {"k": 4, "lr": 1e-3}, "d": 64}
    assert plan_differences(saved, saved) == []
    assert plan_differences(saved, {**saved, "seeds": [0, 1]}, axes=("seeds",)) == []
    assert plan_differences(saved, {**saved, "seeds": [1]}, axes=("seeds",)) == ["seeds"]
    assert plan_differences(saved, {**saved, "train": {"k": 5, "lr": 1e-3}}) == ["train.k"]
    assert plan_differences(saved, {**saved, "extra": 1}) == ["extra"]


def test_a_changed_plan_is_refused_in_one_line_naming_the_field(tmp_path):
    UnitJob.open(tmp_path / "job", {"k": 4, "seeds": [0]}, what="test job")
    assert json.loads((tmp_path / "job" / "plan.json").read_text()) == {"k": 4, "seeds": [0]}
    with pytest.raises(ConfigError, match=r"plan.json: this folder holds a test job with different settings \(k\); use another --out"):
        UnitJob.open(tmp_path / "job", {"k": 5, "seeds": [0]}, what="test job")
    # An older layout is read through read_saved before the comparison; rewrite=False keeps the old file.
    (tmp_path / "job" / "plan.json").write_text(json.dumps({"K": 4, "seeds": [0]}))
    UnitJob.open(tmp_path / "job", {"k": 4, "seeds": [0]}, read_saved=lambda d: {"k": d["K"], "seeds": d["seeds"]}, rewrite=False)
    assert json.loads((tmp_path / "job" / "plan.json").read_text()) == {"K": 4, "seeds": [0]}
    UnitJob.open(tmp_path / "job", {"k": 4, "seeds": [0, 1]}, read_saved=lambda d: {"k": d["K"], "seeds": d["seeds"]},
                 axes=("seeds",))
    assert json.loads((tmp_path / "job" / "plan.json").read_text()) == {"k": 4, "seeds": [0, 1]}


def test_units_are_written_as_they_finish_and_skipped_on_resume(tmp_path):
    job = UnitJob.open(tmp_path / "job", {"n": 3})
    calls: list[int] = []

    def work(u: int) -> dict:
        calls.append(u)
        docs = {f"u{u}": {"u": u}}
        if u == 2:  # a unit may write several files (Table 1: a model and its aligned copy)
            docs["u2+extra"] = {"u": u, "extra": True}
        return docs

    def keys(u: int) -> list[str]:
        return [f"u{u}"] + (["u2+extra"] if u == 2 else [])

    done = [u for u, _ in job.run([0, 1, 2], work, keys=keys, max_units=2)]
    assert done == calls == [0, 1] and sorted(job.finished()) == ["u0", "u1"]
    # A unit with one of its files missing is not finished; temporaries never count.
    (job.units / ".u0.json.abc.tmp.json").write_text("{")
    assert job.pending([0, 1, 2], keys) == [2]
    assert [u for u, _ in job.run([0, 1, 2], work, keys=keys)] == [2] and calls == [0, 1, 2]
    assert job.finished()["u2+extra"] == {"u": 2, "extra": True}
    assert list(job.run([0, 1, 2], work, keys=keys)) == [] and calls == [0, 1, 2]
    with pytest.raises(ConfigError, match="workers"):
        list(job.run([3], work, keys=keys, workers=0))
    with pytest.raises(DataError, match="expected"):
        list(job.run([3], lambda u: {"wrong": {}}, keys=keys))



_WORKER_MODULE = """
from tqdm import tqdm


def work(unit):
    for _ in tqdm(range(2), desc=unit):  # a bar in a worker makes tqdm's multiprocessing lock there
        pass
    return {unit: {"unit": unit}}
"""

_WORKER_SCRIPT = """
import sys
from dualsae.files.unit_job import UnitJob
from unit_work import work
if __name__ == "__main__":
    job = UnitJob.open(sys.argv[1], {"p": 1})
    print(sorted(key for _, docs in job.run([f"u{i}" for i in range(4)], work, keys=lambda u: [u], workers=2)
                 for key in docs))
"""


def test_worker_runs_finish_without_leaking_their_semaphores(tmp_path):
    # `with Pool` terminated the workers on exit, before they released the lock their tqdm bars
    # made, and the resource tracker then warned of "leaked semaphore objects" at the end of every
    # parallel `make demo`.
    (tmp_path / "unit_work.py").write_text(_WORKER_MODULE)
    script = tmp_path / "run_workers.py"
    script.write_text(_WORKER_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "job")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(["u0", "u1", "u2", "u3"])
    assert "leaked" not in done.stderr, done.stderr
    assert sorted(p.name for p in (tmp_path / "job" / "units").iterdir()) == ["u0.json", "u1.json", "u2.json", "u3.json"]
