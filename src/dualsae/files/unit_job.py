"""One resumable plan-and-units job: ``plan.json`` + ``units/<key>.json``, finished units skipped.

The paper's experiments (Figs. 5-6 of Sec. 6.1, Table 1 of Sec. 6.2) and diagnose's regime curve
are each a *plan* (what to run, saved as ``FOLDER/plan.json``) cut into *units* (one training and
its measurements), each unit's result written atomically to ``FOLDER/units/<key>.json`` as soon as
it finishes. A rerun of the same plan skips every unit whose files exist; a rerun with other
settings is refused in one line naming the field(s) that differ. This module owns all of that, and
the pool of worker processes that runs units in parallel:

    job = UnitJob.open(folder, plan_dict, read_saved=upgrade, axes=("seeds",), what="synthetic job")
    for unit, docs in job.run(units, work, keys=lambda u: [u.key], workers=2):
        ...  # docs: {key: document}, already written to units/

It lives in ``files/`` (it reads and writes JSON files and imports nothing above ``files`` and
``core``), so that ``experiments`` and ``diagnose``, independent siblings in the layers contract,
both use it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import torch

from dualsae.core.errors import ConfigError, DataError
from dualsae.core.progress import tqdm
from dualsae.files.atomic import write_json
from dualsae.files.jsonfiles import read_json_object
from dualsae.files.outdir import finished_json_files

U = TypeVar("U")

PLAN_FILE = "plan.json"
UNITS_DIR = "units"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"k": 4}}`` -> ``{"train.k": 4}`` (lists and scalars are leaves)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for key, val in d.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(_flat(val, name) if isinstance(val, dict) else {name: val})
    return out


def plan_differences(saved: dict, current: dict, axes: Iterable[str] = ()) -> list[str]:
    """Dotted names of the fields where two plans differ; an ``axes`` field (a list) may gain
    values (a rerun that extends a finished job keeps every finished unit)."""
    a, b = _flat(json.loads(json.dumps(saved))), _flat(json.loads(json.dumps(current)))
    axes = set(axes)
    return sorted(k for k in set(a) | set(b)
                  if a.get(k) != b.get(k) and not (k in axes and set(a.get(k) or []) <= set(b.get(k) or [])))


def _run_in_worker(job: tuple[Callable[[Any], dict[str, Any]], Any, int]) -> tuple[Any, dict[str, Any]]:
    """Entry point of a worker process (module level, so that spawn can pickle it)."""
    work, unit, threads = job
    torch.set_num_threads(threads)
    return unit, work(unit)


@dataclass(frozen=True)
class UnitJob:
    """A job folder: ``plan.json``, ``units/`` (see the module docstring)."""

    folder: Path

    @classmethod
    def open(cls, folder: str | os.PathLike[str], plan: dict, *, read_saved: Callable[[dict], dict] | None = None,
             axes: Iterable[str] = (), what: str = "job", rewrite: bool = True) -> "UnitJob":
        """Create (or reopen) the job folder for ``plan`` (a JSON-able dict).

        A saved ``plan.json`` is first passed through ``read_saved`` (which turns the layout of an
        older version into the current one) and compared with ``plan``; any field that differs,
        other than values added to an ``axes`` field, raises :class:`ConfigError` naming the file and
        the fields. ``plan.json`` is then (re)written with ``plan`` (``rewrite``; otherwise only when
        missing, so that a folder written by an older version keeps its file as it was)."""
        job = cls(Path(folder))
        job.units.mkdir(parents=True, exist_ok=True)
        path = job.folder / PLAN_FILE
        current = json.loads(json.dumps(plan))
        if path.is_file():
            saved = read_json_object(path, "delete it to start the job afresh", ConfigError)
            diff = plan_differences(read_saved(saved) if read_saved else saved, current, axes)
            if diff:
                raise ConfigError(f"{path}: this folder holds a {what} with different settings ({', '.join(diff)}); "
                                  "use another --out")
            if not rewrite:
                return job
        write_json(path, current)
        return job

    @property
    def units(self) -> Path:
        return self.folder / UNITS_DIR

    def unit_path(self, key: str) -> Path:
        return self.units / f"{key}.json"

    def is_done(self, keys: Iterable[str]) -> bool:
        """Whether every file of a unit exists (a unit may write several, e.g. a model and its aligned copy)."""
        return all(self.unit_path(k).is_file() for k in keys)

    def finished(self, error: type[Exception] = DataError) -> dict[str, Any]:
        """``{key: document}`` of every finished unit file (temporaries a kill left never count)."""
        return finished_json_files(self.units, error)  # type: ignore[arg-type]

    def pending(self, units: Sequence[U], keys: Callable[[U], Sequence[str]]) -> list[U]:
        """The units of ``units`` that have a file missing, in order."""
        return [u for u in units if not self.is_done(keys(u))]

    def run(self, units: Sequence[U], work: Callable[[U], dict[str, Any]], *, keys: Callable[[U], Sequence[str]],
            workers: int = 1, threads_per_worker: int | None = None, progress: bool = False, total: int | None = None,
            desc: str = "units", max_units: int | None = None) -> Iterator[tuple[U, dict[str, Any]]]:
        """Run every unfinished unit of ``units`` and yield ``(unit, {key: document})`` as each finishes,
        its files already written (atomically).

        ``work(unit)`` returns the unit's documents by key (``keys(unit)``). With ``workers`` > 1
        the units run in that many spawned processes (spawn, not fork: a forked copy of a process
        whose OpenMP pool has started can deadlock), each with ``threads_per_worker`` torch threads
        (default: the usable cores split evenly); ``work`` and the units must then be picklable
        (a module-level function or a ``functools.partial`` of one). ``total``: units of the whole
        plan for the progress bar (default ``len(units)``); ``max_units``: stop after this many."""
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, found {workers}")
        if threads_per_worker is not None and threads_per_worker < 1:
            raise ConfigError(f"threads per worker must be >= 1, found {threads_per_worker}")
        todo = self.pending(units, keys)
        if max_units is not None:
            todo = todo[:max_units]
        total = len(units) if total is None else total
        bar = tqdm(total=total, initial=total - len(self.pending(units, keys)), desc=desc, unit="run", disable=not progress)
        try:
            for unit, docs in self._results(todo, work, min(workers, max(1, len(todo))), threads_per_worker):
                wanted = list(keys(unit))
                if sorted(docs) != sorted(wanted):
                    raise DataError(f"unit {wanted[0] if wanted else '?'}: its work returned {sorted(docs)}, expected {wanted}")
                for key in wanted:
                    write_json(self.unit_path(key), docs[key])
                bar.set_postfix_str(wanted[0] if wanted else "")
                bar.update(1)
                yield unit, docs
        finally:
            bar.close()

    @staticmethod
    def _results(todo: list[U], work: Callable[[U], dict[str, Any]], workers: int,
                 threads_per_worker: int | None) -> Iterator[tuple[U, dict[str, Any]]]:
        """(unit, documents) as units finish: in order in this process, or in any order from workers."""
        if workers == 1:
            for unit in todo:
                yield unit, work(unit)
            return
        threads = threads_per_worker or max(1, usable_cores() // workers)
        # Not ``with Pool``: its __exit__ terminates the workers mid-shutdown, which leaves their
        # semaphores to the resource tracker ("leaked semaphore objects" at exit). A finished run
        # closes and joins; only a failure or an interrupt terminates.
        pool = multiprocessing.get_context("spawn").Pool(workers)
        try:
            yield from pool.imap_unordered(_run_in_worker, [(work, unit, threads) for unit in todo], chunksize=1)
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()


__all__ = ["UnitJob", "plan_differences", "usable_cores", "PLAN_FILE", "UNITS_DIR"]
