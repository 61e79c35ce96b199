"""Run the real-data evaluations of paper Sec. 6.2 for one model and write ``metrics.json``.

Tasks are the entries of :data:`REGISTRY` (name -> :class:`dualsae.evaluation.task_table.Task`),
run in this order; each is defined beside its metric:

* ``recon``           reconstruction MSE (eq. 4), explained variance, L0, dead latents per modality
                      (``dualsae.evaluation.metrics.reconstruction``)
* ``retrieval``       latent cross-modal Recall@1/5/10 both ways, plus the same protocol in the raw
                      embedding space for reference (``dualsae.evaluation.metrics.retrieval``)
* ``zeroshot``        latent zero-shot top-1 accuracy: a zero-shot store (``--zeroshot``; also its
                      image reconstruction MSE, Table 1's ImageNet column) or caption prototypes of
                      a meta label field (``label_field``, from the training split)
                      (``dualsae.evaluation.metrics.zeroshot``)
* ``steering``        concept steering mAP / MRR over the values of ``concept_field``
                      (``dualsae.evaluation.metrics.concept_steering``)
* ``monosemanticity`` MS score of every latent against an external encoder's embeddings of the
                      same rows (``external``), per modality; sorted curves written beside
                      metrics.json as ``.npy`` and a PNG (``dualsae.evaluation.metrics.monosemanticity``)

A task whose inputs are missing is skipped and the reason recorded under ``skipped``. Table 1
(``experiments/table1``) iterates the same registry for its columns.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dualsae.core.errors import ConfigError, DataError
from dualsae.core.modalities import MODALITIES
from dualsae.evaluation.metrics import (
    concept_steering,
    monosemanticity,
    reconstruction,
    retrieval,
    zeroshot,
)
from dualsae.evaluation.metrics.zeroshot import load_zero_shot_store
from dualsae.evaluation.task_table import Skip, Task, TaskContext
from dualsae.files.atomic import write_json
from dualsae.models.load import load_model, training_rows
from dualsae.models.pair import SAEPair
from dualsae.models.provenance import store_warnings
from dualsae.store.paired import PairedEmbeddings, open_store

#: The eval tasks, in the order they run (and Table 1's columns): one line per task.
REGISTRY: dict[str, Task] = {t.name: t for t in (
    reconstruction.TASK,
    retrieval.TASK,
    zeroshot.TASK,
    concept_steering.TASK,
    monosemanticity.TASK,
)}
TASKS = tuple(REGISTRY)
METRICS_FORMAT = "dualsae.metrics/1"


@dataclass(frozen=True)
class EvalOptions:
    """Settings of :func:`evaluate`.

    positives: retrieval protocol 'group' | 'caption' | 'row' | 'auto' (group if every row has the
        group field, else caption if captions repeat, else row).
    label_field: meta field whose values are the classes of caption-prototype zero-shot.
    concept_field: meta field whose values (or list elements) are the steering concepts.
    """

    tasks: tuple[str, ...] = field(default=TASKS, metadata={"cli": False})  # --tasks: a comma-separated list
    positives: str = field(default="auto", metadata={"group": "retrieval", "choices": ("auto", "group", "caption", "row"), "help":
        "hits: 'group' = rows sharing meta --group-field are one image (COCO); 'caption' = any row with the query's caption; "
        "'row' = only the paired row; 'auto' = group if every row has the group field, else caption if captions repeat, else row"})
    group_field: str = field(default="group", metadata={"group": "retrieval", "help": "meta field naming each row's image"})
    caption_field: str = field(default="caption", metadata={"group": "retrieval", "help": "meta field holding the caption"})
    label_field: str | None = field(default=None, metadata={"group": "zero-shot", "default": "none", "help":
        "meta field used as class label for caption-prototype zero-shot (e.g. category)"})
    concept_field: str | None = field(default=None, metadata={"group": "steering", "default": "none", "help":
        "meta field holding each row's concept (a value, or a list such as tags)"})
    steering_alpha: float = field(default=1.0, metadata={"group": "steering", "flag": "--alpha", "help":
        "steering strength relative to the mean test image embedding norm"})
    steering_sources: int = field(default=100, metadata={"group": "steering", "flag": "--sources", "help": "source images per concept"})
    steering_negatives: int = field(default=1000, metadata={"group": "steering", "flag": "--negatives", "help":
        "captions without the concept sampled for latent selection"})
    max_concepts: int | None = field(default=80, metadata={"group": "steering", "help": "most frequent concepts evaluated; 0 = all"})
    seed: int = field(default=0, metadata={"group": "run", "help": "seed of every random draw"})
    batch_size: int = field(default=4096, metadata={"group": "run", "help": "rows encoded at once"})
    device: str = field(default="cpu", metadata={"group": "run", "help": "cpu, cuda, cuda:N or auto"})
    progress: bool = field(default=True, metadata={"group": "run", "help": "no progress bars"})

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise ConfigError(f"unknown task(s) {bad}; expected some of {', '.join(TASKS)}")
        if self.positives not in ("auto", "group", "caption", "row"):
            raise ConfigError(f"positives must be auto, group, caption or row, found {self.positives!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, found {self.batch_size}")
        if self.steering_sources < 1 or self.steering_negatives < 1:
            raise ConfigError("steering_sources and steering_negatives must be >= 1")


def parse_tasks(text: str) -> tuple[str, ...]:
    """'recon,retrieval' -> ('recon', 'retrieval'); 'all' -> every task (kept in the canonical order)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or names == ["all"]:
        return TASKS
    bad = [t for t in names if t not in TASKS]
    if bad:
        raise ConfigError(f"--tasks: unknown task(s) {bad}; expected a comma-separated subset of {', '.join(TASKS)} or 'all'")
    return tuple(t for t in TASKS if t in names)


def aligned_view(external: PairedEmbeddings, view: PairedEmbeddings, name: str = "external store") -> PairedEmbeddings:
    """The rows of ``external`` that ``view`` selects from its own store (both stores have the same rows)."""
    if external.n_total != view.n_total:
        raise DataError(f"{external.root}: {name} has {external.n_total:,} rows, the data store {view.n_total:,}; "
                        "it must embed the same inputs in the same order")
    return PairedEmbeddings(external.image, external.text, external.meta, external.root, view.index)


def evaluate(
    pair: SAEPair,
    store: PairedEmbeddings,
    options: EvalOptions = EvalOptions(),
    train_store: PairedEmbeddings | None = None,
    zeroshot: Any = None,
    external: Any = None,
    artefact_prefix: Path | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Run ``options.tasks`` on the rows of ``store`` (the evaluation split).

    train_store: training rows (caption prototypes; steering latent selection, else ``store``).
    zeroshot: a :class:`dualsae.evaluation.metrics.zeroshot.ZeroShotData` or None.
    external: store view or array [N, e] with the rows of ``store`` (monosemanticity).
    artefact_prefix: path prefix for monosemanticity curves/plot (None: not written).
    Returns {"tasks": {task: result}, "skipped": {task: reason}, "seconds": {task: s}}.
    """
    _check_dims(pair, store, "data store")
    if zeroshot is not None:
        _check_dims(pair, zeroshot.images, "zero-shot store")
    ctx = TaskContext(pair, store, options, train_store, zeroshot, external, artefact_prefix)
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for task in options.tasks:
        t0 = time.perf_counter()
        try:
            results[task] = REGISTRY[task].run(ctx)
        except Skip as why:
            skipped[task] = str(why)
            log(f"skipping {task}: {why}")
        else:
            seconds[task] = round(time.perf_counter() - t0, 3)
    return {"tasks": results, "skipped": skipped, "seconds": seconds}


def _check_dims(pair: SAEPair, store: PairedEmbeddings, name: str) -> None:
    """The store's embedding dimension must be the SAEs' input dimension d."""
    for mod in MODALITIES:
        sae = getattr(pair, mod)
        if sae is not None and store.has(mod):
            store.require_width(sae.d, f"the model's {mod} SAE ({name})")


def evaluate_model(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    options: EvalOptions = EvalOptions(),
    zeroshot: str | Path | None = None,
    external: str | Path | None = None,
    test_fraction: float | None = None,
    split_seed: int | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Load ``model`` (:func:`dualsae.models.load.load_model`) and stores, run :func:`evaluate`, write ``out``
    (metrics.json) atomically; artefacts go beside it. Returns the written dict.

    ``test_fraction`` / ``split_seed`` (seeded split of a store without a ``split`` field) default to
    the ones the model was trained with (:func:`dualsae.models.load.training_rows`)."""

    spec = training_rows(model)
    test_fraction = spec["test_fraction"] if test_fraction is None else test_fraction
    split_seed = spec["split_seed"] if split_seed is None else split_seed

    pair = load_model(model, device=options.device)
    full = open_store(data)
    check_meta_fields(full, options, zeroshot)
    store = full.split(split, test_fraction=test_fraction, seed=split_seed)
    for line in store_warnings(model, store, "eval"):
        log(line)
    train_store = None
    if split != "train":
        try:
            train_store = full.split("train", test_fraction=test_fraction, seed=split_seed)
        except DataError:
            train_store = None
    zs = load_zero_shot_store(zeroshot) if zeroshot is not None and "zeroshot" in options.tasks else None
    ext = None
    if external is not None and "monosemanticity" in options.tasks:
        # An external encoder may embed each modality at its own width (e.g. 1280-d image, 384-d text).
        ext = aligned_view(open_store(external, same_width=False), store)
    out = Path(out)
    prefix = out.with_suffix("") if out.suffix else out
    result = evaluate(pair, store, options, train_store=train_store, zeroshot=zs, external=ext,
                      artefact_prefix=prefix, log=log)
    doc = {
        "format": METRICS_FORMAT,
        "model": str(model),
        "method": pair.method,
        "m": pair.m,
        "data": str(data),
        "split": split,
        "n_rows": store.n,
        "zeroshot_store": str(zeroshot) if zeroshot is not None else None,
        "external_store": str(external) if external is not None else None,
        "options": {**asdict(options), "tasks": list(options.tasks)},
        **result,
    }
    write_json(out, _json_safe(doc))
    return doc


def check_meta_fields(store: PairedEmbeddings, options: EvalOptions, zeroshot: Any = None) -> None:
    """A ``label_field`` / ``concept_field`` that no row of the store holds is a misspelling, not a task to
    skip: ConfigError naming the flag, the file and the fields the store has (``--label-field categroy``)."""
    asked = [("label_field", "--label-field", options.label_field if "zeroshot" in options.tasks and zeroshot is None else None),
             ("concept_field", "--concept-field", options.concept_field if "steering" in options.tasks else None)]
    rows = None
    for name, flag, value in asked:
        if not value:
            continue
        rows = store.meta_rows() if rows is None else rows
        present = sorted({k for r in rows for k in r})
        if value not in present:
            where = f"{store.root}/meta.jsonl" if store.root is not None else "the store's meta rows"
            have = ", ".join(present) if present else "none (no meta.jsonl)"
            raise ConfigError(f"{flag} ({name}) {value!r}: no row of {where} has this field; its fields are: {have}")


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN); numpy scalars -> Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def format_table(doc: dict) -> str:
    """A compact text summary of a metrics dict (as written by :func:`evaluate_model`): each task's lines."""
    t = doc.get("tasks", {})
    lines = [line for name, task in REGISTRY.items() if name in t for line in task.lines(t[name])]
    for task, why in doc.get("skipped", {}).items():
        lines.append(f"{task:<16}skipped: {why}")
    return "\n".join(lines)


def table_columns(doc: dict) -> dict[str, float | None]:
    """Every registered task's Table 1 columns from an :func:`evaluate` result (None where not run)."""
    out: dict[str, float | None] = {c: None for task in REGISTRY.values() for c, _, _ in task.columns}
    for name, task in REGISTRY.items():
        if name in doc["tasks"]:
            out.update(task.table_row(doc["tasks"][name]))
    return out


__all__ = ["EvalOptions", "REGISTRY", "TASKS", "aligned_view", "check_meta_fields", "evaluate", "evaluate_model", "format_table", "parse_tasks",
           "table_columns"]
