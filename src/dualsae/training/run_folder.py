"""A training run's folder, the writer side of :mod:`dualsae.models.run_schema`: ``config.json``
(and the checks a resumed run makes against it), ``metrics.jsonl`` rows, checkpoints, and on
completion the SAE folder(s) and ``summary.json``. Under torchrun rank 0 alone writes.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from dualsae.core.distributed import Distributed
from dualsae.core.errors import CheckpointError
from dualsae.files.atomic import append_jsonl, write_json
from dualsae.files.faults import fault_point
from dualsae.files.jsonfiles import read_json_object
from dualsae.models.run_schema import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    MODALITY_FOLDERS,
    RUN_FORMAT,
    SHARED_FOLDER,
    SUMMARY_FILE,
)
from dualsae.store.fingerprint import resume_mismatch, store_fingerprint
from dualsae.store.paired import PairedEmbeddings
from dualsae.training.checkpoint import (
    last_good,
    load_checkpoint,
    save_checkpoint,
    truncate_metrics,
)
from dualsae.training.config import TrainConfig, steps_per_epoch
from dualsae.training.guards import check_weights
from dualsae.training.input_scale import input_scales
from dualsae.training.step import _Member, member_layout


def run_config_dict(config: TrainConfig, store: PairedEmbeddings, calibration: dict | None = None,
                    scales: dict[str, float] | None = None) -> dict:
    """The content of ``config.json``: format, the training config, the store it trains on (with each
    SAE's input scale, :mod:`dualsae.training.input_scale`) and, for a measured group-sparse scale,
    its calibration record. ``scales``: the input scales when already measured."""
    out = {
        "format": RUN_FORMAT,
        "train": config.to_dict(),
        "data": {
            "path": str(store.root) if store.root is not None else None,
            "rows": store.n,
            "d": store.d,
            "modalities": [m for m in ("image", "text") if store.has(m)],
            "fingerprint": store_fingerprint(store),
            "input_scale": scales if scales is not None else input_scales(config.input_scale, config.seed, member_layout(config, store), store),
        },
    }
    if calibration is not None:
        out["calibration"] = calibration
    return out


def check_resume_config(run_dir: Path, config: TrainConfig, store: PairedEmbeddings) -> None:
    """Refuse to resume ``run_dir`` with another training config, store or rows than it started with.

    The saved config is compared field by field in the flat form (:meth:`TrainConfig.flat_dict`),
    so a run written before the SAE fields were nested resumes as before.
    """
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing; --resume needs a run folder started by 'dualsae train'")
    saved = read_json_object(cfg_path, error=CheckpointError)
    old_train = saved.get("train", {})
    if not isinstance(old_train, dict) or not isinstance(saved.get("data", {}), dict):
        raise CheckpointError(f"{cfg_path}: fields 'train' and 'data' must be JSON objects; not a config written by 'dualsae train'")
    old, new = TrainConfig.from_dict(old_train, str(cfg_path)).flat_dict(), config.flat_dict()
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise CheckpointError(
                f"{cfg_path}: field '{key}' is {old.get(key)!r} in the saved run, the resumed run asks for {new.get(key)!r}; "
                "resume needs the same training config"
            )
    old_data = saved.get("data", {})
    if isinstance(old_data.get("fingerprint"), dict):
        why = resume_mismatch(old_data["fingerprint"], store)
        if why:
            raise CheckpointError(f"{cfg_path}: {why}; --resume needs the store and rows the run started on")
    now = run_config_dict(config, store)["data"]
    for key in ("rows", "d", "modalities", "input_scale"):
        if key in old_data and old_data[key] != now[key]:
            raise CheckpointError(f"{cfg_path}: data field '{key}' is {old_data[key]!r} in the saved run, the store given now has {now[key]!r}")


def saved_completely(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds the end of a finished training: ``summary.json`` (written after every
    SAE folder) and those SAE folders. A kill after it (while the checkpoint is removed, or before the
    manifest is committed) leaves such a folder; :func:`drop_checkpoint` and a commit finish it."""
    if not (run_dir / SUMMARY_FILE).is_file():
        return False
    saved = [run_dir / name for name in (SHARED_FOLDER, *MODALITY_FOLDERS) if (run_dir / name).is_dir()]
    return bool(saved) and all((p / "model.safetensors").is_file() and (p / "config.json").is_file() for p in saved)


def drop_checkpoint(run_dir: Path) -> None:
    """Remove the checkpoint of a finished run (what :meth:`RunFolder.finish` does last)."""
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)


class RunFolder:
    """The folder one training run writes (``path`` None: a run that writes nothing)."""

    def __init__(self, path: str | Path | None, config: TrainConfig, store: PairedEmbeddings, dist: Distributed) -> None:
        self.path = Path(path) if path is not None else None
        self.config, self.store, self.dist = config, store, dist
        self.writes = self.path is not None and dist.is_main
        self.t0 = time.time()
        self._measured: dict[str, float] | None = None

    def begin(self, members: list[_Member], resume: bool) -> int:
        """Open the folder for this run and return the first step: a new run refuses a folder holding a
        run and writes ``config.json``; a resumed one checks it, restores the checkpoint and drops the
        metrics rows logged after it."""
        run_dir, dist = self.path, self.dist
        if run_dir is None:
            return 0
        if resume:
            check_resume_config(run_dir, self.config, self.store)
            if (run_dir / SUMMARY_FILE).is_file():
                raise CheckpointError(f"{run_dir}/{SUMMARY_FILE}: this run already finished; nothing to resume")
            start = load_checkpoint(run_dir, members)
            dist.barrier()  # every rank has read the checkpoint before rank 0 touches the folder
            if dist.is_main:
                truncate_metrics(run_dir / METRICS_FILE, start)
            return start
        if (run_dir / CONFIG_FILE).exists():
            raise CheckpointError(f"{run_dir}: already holds a run (config.json); pass --resume to continue it or choose a new --out")
        dist.barrier()  # every rank has checked the folder before rank 0 writes into it
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / CONFIG_FILE, run_config_dict(self.config, self.store, scales=self._measured_scales()))
        return 0

    def input_scales(self, resume: bool) -> dict[str, float]:
        """{member name: input scale} of this run: a resumed run's recorded factors (1.0 for a run recorded
        before input scaling, which trained unscaled), else measured (the same float on every rank)."""
        if resume and self.path is not None:
            saved = read_json_object(self.path / CONFIG_FILE, error=CheckpointError).get("data", {}).get("input_scale")
            if saved is None:
                return {name: 1.0 for name, _ in member_layout(self.config, self.store)}
            return {name: float(v) for name, v in saved.items()}
        return self._measured_scales()

    def _measured_scales(self) -> dict[str, float]:
        if self._measured is None:
            self._measured = input_scales(self.config.input_scale, self.config.seed, member_layout(self.config, self.store), self.store)
        return self._measured

    def record_dir(self, resume: bool) -> Path | None:
        """Where the group-sparse scale is read back (resume) or recorded (rank 0), else None."""
        return self.path if self.dist.is_main or resume else None

    def last_good(self) -> str:
        """Where the last good state is (for a divergence message)."""
        return last_good(self.path)

    def start_clock(self) -> None:
        self.t0 = time.time()

    def log(self, step: int, total: int, lr: float, logs: dict[str, float], rows: int, global_rows: int) -> dict[str, float]:
        """After step ``step`` (0-based), at every ``log_every``-th and the last: the global batch's
        logs (every rank takes part), and rank 0 appends the ``metrics.jsonl`` row."""
        done = step + 1
        if self.path is None or not (done % self.config.log_every == 0 or done == total):
            return logs
        logs = self.dist.mean_logs(logs, rows, global_rows)
        if self.writes:
            row = {"step": done, "epoch": step // steps_per_epoch(self.store.n, self.config.batch_size), "lr": lr}
            # Significant digits, not fixed decimals: losses of inputs scaled by 1e-4 are ~1e-9.
            row.update({k: float(f"{v:.7g}") for k, v in logs.items()})
            row["time_s"] = round(time.time() - self.t0, 2)
            append_jsonl(self.path / METRICS_FILE, row)
        return logs

    def checkpoint(self, done: int, total: int, members: list[_Member]) -> None:
        """Every ``checkpoint_every`` steps before the last: check the weights, then save them."""
        if self.writes and done % self.config.checkpoint_every == 0 and done < total:
            check_weights(done, ((mem.name, mem.sae) for mem in members), self.last_good)
            save_checkpoint(self.path, members, done)

    def finish(self, members: list[_Member], total: int, logs: dict[str, float], calibration: dict | None) -> None:
        """Save the SAE folder(s) (their input scale folded in already) and ``summary.json`` (which marks
        the run finished), then drop the checkpoint."""
        if not self.writes:
            return
        for i, mem in enumerate(members):
            if i:
                fault_point("train-between-saes", str(self.path))
            mem.sae.save(self.path / mem.name)
        summary = {"steps": total, "seconds": round(time.time() - self.t0, 2), "final": logs,
                   "input_scale": {mem.name: mem.input_scale for mem in members}}
        if calibration is not None:
            summary["calibration"] = calibration
        write_json(self.path / SUMMARY_FILE, summary)
        fault_point("train-after-summary", str(self.path))
        drop_checkpoint(self.path)
