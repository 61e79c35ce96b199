"""The shape of an evaluation task: one entry of the table that ``dualsae eval`` (:func:`dualsae.evaluation.tasks.evaluate`)
and Table 1 (``experiments/table1``) iterate.

A task is a :class:`Task`: a name, ``run(ctx) -> dict`` (raise :class:`Skip` with the reason when
its inputs are missing), the Table 1 columns it fills (``columns``: (key, label, higher is better),
``table_row(result) -> {key: value}``), the lines it adds to ``dualsae eval``'s detailed summary, and its rows
of the evaluation table (``table(result) -> [TableRow]``: this model, the raw embeddings, a baseline;
:mod:`dualsae.evaluation.eval_table`).
Each metric module under ``evaluation/metrics/`` defines its ``TASK``; a new metric is one new file
plus one line in :data:`dualsae.evaluation.tasks.REGISTRY`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol

from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings


class TaskSettings(Protocol):
    """The settings a task reads (:class:`dualsae.evaluation.tasks.EvalOptions` is one; that module
    holds the registry of the tasks, so this one names its class only in words)."""

    positives: str
    group_field: str
    caption_field: str
    label_field: str | None
    concept_field: str | None
    steering_alpha: float
    steering_sources: int
    steering_negatives: int
    max_concepts: int | None
    seed: int
    batch_size: int
    device: str
    progress: bool


class Skip(Exception):
    """A task's inputs are missing; the message is the reason recorded under ``skipped``."""


@dataclass
class TaskContext:
    """What every task may use: the model, the evaluation rows and :class:`EvalOptions`; the training
    rows (caption prototypes, steering latent selection), a zero-shot store, an external encoder's
    embeddings of the same rows (monosemanticity), and where artefacts go (None: not written)."""

    pair: SAEPair
    store: PairedEmbeddings
    options: TaskSettings
    train_store: PairedEmbeddings | None = None
    zeroshot: Any = None
    external: Any = None
    artefact_prefix: Path | None = None

    @property
    def kw(self) -> dict:
        """batch_size / device / progress for the metric functions."""
        o = self.options
        return {"batch_size": o.batch_size, "device": o.device, "progress": o.progress}

    @property
    def both_encoders(self) -> bool:
        return self.pair.image is not None and self.pair.text is not None


def has_field(rows: list[dict], field: str) -> bool:
    """Whether any meta row holds ``field``."""
    return any(field in r for r in rows)


def fmt(v: Any, spec: str = ".4f") -> str:
    """A number for the printed summary ("-" for None / NaN)."""
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


Column = tuple[str, str, bool]


class TableRow(NamedTuple):
    """One row of the evaluation table (:mod:`dualsae.evaluation.eval_table`): a task's metric for this
    model, for the raw embeddings (None where the metric has no raw-embedding form) and for the
    baseline named by ``baseline_kind`` (majority class, chance, mean embedding, unsteered source)."""

    task: str
    metric: str
    model: float | None
    raw: float | None = None
    baseline: float | None = None
    baseline_kind: str = ""
    higher_is_better: bool = True


@dataclass(frozen=True)
class Task:
    """name; run(ctx) -> result dict; columns: Table 1 columns (key, label, higher is better);
    table_row(result) -> {column key: value}; lines(result) -> summary lines; table(result) -> the
    task's rows of the evaluation table."""

    name: str
    run: Callable[[TaskContext], dict]
    columns: tuple[Column, ...] = ()
    table_row: Callable[[dict], dict] = lambda result: {}
    lines: Callable[[dict], list[str]] = lambda result: []
    table: Callable[[dict], list[TableRow]] = lambda result: []


__all__ = ["Column", "Skip", "TableRow", "Task", "TaskContext", "fmt", "has_field"]
