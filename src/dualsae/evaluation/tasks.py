"""Run the real-data evaluations of paper Sec. 6.2 for one model and write ``metrics.json``.

Tasks (any subset, in this order):

* ``recon``           reconstruction MSE (eq. 4), explained variance, L0, dead latents per modality
                      (``dualsae.evaluation.metrics.reconstruction``)
* ``retrieval``       latent cross-modal Recall@1/5/10 both ways, plus the same protocol in the raw
                      embedding space for reference (``dualsae.evaluation.metrics.retrieval``)
* ``zeroshot``        latent zero-shot top-1 accuracy: a zero-shot store (``--zeroshot``; also its
                      image reconstruction MSE, Table 1's ImageNet column) or caption prototypes of
                      a meta label field (``label_field``, from the training split)
                      (``dualsae.evaluation.metrics.zeroshot``)
* ``steering``        concept steering mAP / MRR over the values of ``concept_field``
                      (``dualsae.evaluation.metrics.steering``)
* ``monosemanticity`` MS score of every latent against an external encoder's embeddings of the
                      same rows (``external``), per modality; sorted curves written beside
                      metrics.json as ``.npy`` and a PNG (``dualsae.evaluation.metrics.monosemanticity``)

A task whose inputs are missing is skipped and the reason recorded under ``skipped``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dualsae.core.errors import ConfigError, DataError
from dualsae.core.modalities import MODALITIES
from dualsae.evaluation.metrics.monosemanticity import (
    monosemanticity,
    plot_curves,
    sorted_curve,
    summarize,
)
from dualsae.evaluation.metrics.reconstruction import (
    modality_reconstruction,
    reconstruction_metrics,
)
from dualsae.evaluation.metrics.retrieval import (
    auto_positives,
    cross_modal_retrieval,
    embedding_retrieval,
)
from dualsae.evaluation.metrics.steering import concept_steering
from dualsae.evaluation.metrics.zeroshot import (
    caption_prototypes,
    load_zero_shot_store,
    zero_shot,
)
from dualsae.files.atomic import write_json, write_npy
from dualsae.models.load import load_model, training_rows
from dualsae.models.pair import SAEPair
from dualsae.models.provenance import store_warnings
from dualsae.store.paired import PairedEmbeddings
from dualsae.store.paired import open_store as open_data

TASKS = ("recon", "retrieval", "zeroshot", "steering", "monosemanticity")
METRICS_FORMAT = "dualsae.metrics/1"


@dataclass(frozen=True)
class EvalOptions:
    """Settings of :func:`evaluate`.

    positives: retrieval protocol 'group' | 'caption' | 'row' | 'auto' (group if every row has the
        group field, else caption if captions repeat, else row).
    label_field: meta field whose values are the classes of caption-prototype zero-shot.
    concept_field: meta field whose values (or list elements) are the steering concepts.
    """

    tasks: tuple[str, ...] = TASKS
    positives: str = "auto"
    group_field: str = "group"
    caption_field: str = "caption"
    label_field: str | None = None
    concept_field: str | None = None
    steering_alpha: float = 1.0
    steering_sources: int = 100
    steering_negatives: int = 1000
    max_concepts: int | None = 80
    seed: int = 0
    batch_size: int = 4096
    device: str = "cpu"
    progress: bool = True

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
    o = options
    kw = {"batch_size": o.batch_size, "device": o.device, "progress": o.progress}
    _check_dims(pair, store, "data store")
    if zeroshot is not None:
        _check_dims(pair, zeroshot.images, "zero-shot store")
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    metas = store.meta_rows()

    def has_field(rows: list[dict], field: str) -> bool:
        return any(field in r for r in rows)

    for task in o.tasks:
        t0 = time.perf_counter()
        reason = None
        if task == "recon":

            results[task] = reconstruction_metrics(pair, store, **kw)
        elif task == "retrieval":

            if not store.has_pairs or pair.image is None or pair.text is None:
                reason = "needs paired image and text embeddings and a model with both encoders"
            else:
                positives = auto_positives(metas, o.group_field, o.caption_field) if o.positives == "auto" else o.positives
                rk = {"positives": positives, "group_field": o.group_field, "caption_field": o.caption_field}
                res = cross_modal_retrieval(pair, store, **rk, **kw)
                res["embedding_reference"] = embedding_retrieval(store, **rk)
                results[task] = res
        elif task == "zeroshot":

            data = zeroshot
            if data is None and o.label_field:
                if train_store is None:
                    reason = f"caption prototypes of '{o.label_field}' need a training split (none found)"
                elif not has_field(train_store.meta_rows(), o.label_field):
                    reason = f"no training row has meta field '{o.label_field}'"
                elif not train_store.has("text") or not store.has("image"):
                    reason = "caption prototypes need training captions (text.npy) and test images (image.npy)"
                else:
                    data = caption_prototypes(train_store, store, o.label_field)
            elif data is None:
                reason = "needs --zeroshot STORE (class prompt embeddings) or --label-field FIELD (caption prototypes)"
            if data is not None:
                res = zero_shot(pair, data, o.batch_size, o.device, o.progress)
                if zeroshot is not None:
                    res["image_reconstruction"] = modality_reconstruction(pair, data.images, "image", **kw)
                results[task] = res
        elif task == "steering":

            sel = train_store if train_store is not None and has_field(train_store.meta_rows(), o.concept_field or "") else store
            if not o.concept_field:
                reason = "needs --concept-field FIELD (a meta field holding each row's concept(s))"
            elif not has_field(metas, o.concept_field):
                reason = f"no evaluation row has meta field '{o.concept_field}'"
            elif not store.has("image") or not sel.has("text") or pair.image is None or pair.text is None:
                reason = "needs image and text embeddings and a model with both encoders"
            else:
                results[task] = concept_steering(
                    pair, store, o.concept_field, select_store=sel, n_sources=o.steering_sources,
                    n_negative=o.steering_negatives, alpha=o.steering_alpha, max_concepts=o.max_concepts,
                    group_field=o.group_field, seed=o.seed, **kw)
                results[task]["selection_rows"] = "train split" if sel is train_store else "evaluation rows"
        elif task == "monosemanticity":

            if external is None:
                reason = "needs --external STORE (an external encoder's embeddings of the same rows)"
            else:
                res: dict[str, Any] = {}
                curves = {}
                for mod in MODALITIES:
                    if not store.has(mod) or getattr(pair, mod) is None:
                        continue
                    scores = monosemanticity(pair, store, external, mod, **kw)
                    res[mod] = summarize(scores)
                    curves[mod] = sorted_curve(scores)
                    if artefact_prefix is not None:
                        path = Path(f"{artefact_prefix}_monosemanticity_{mod}.npy")
                        write_npy(path, curves[mod])
                        res[mod]["curve_file"] = path.name
                if artefact_prefix is not None and curves:
                    png = plot_curves(curves, Path(f"{artefact_prefix}_monosemanticity.png"), title=f"Monosemanticity ({pair.method})")
                    res["plot_file"] = png.name
                results[task] = res
        if reason is not None:
            skipped[task] = reason
            log(f"skipping {task}: {reason}")
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
    full = open_data(data)
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
        ext = aligned_view(open_data(external, same_width=False), store)
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
    """A compact text summary of a metrics dict (as written by :func:`evaluate_model`)."""
    lines: list[str] = []
    t = doc.get("tasks", {})

    def f(v: Any, fmt: str = ".4f") -> str:
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

    if "recon" in t:
        r = t["recon"]
        lines.append(f"{'recon':<16}{'':<10}{'mse':>9}{'mse/dim':>11}{'EV':>8}{'L0':>8}{'dead':>7}")
        for mod in (*MODALITIES, "mean"):
            if mod in r:
                v = r[mod]
                lines.append(f"{'':<16}{mod:<10}{f(v['mse']):>9}{f(v['mse_per_dim'], '.2e'):>11}{f(v['explained_variance'], '.3f'):>8}"
                             + (f"{f(v['mean_l0'], '.1f'):>8}{f(v['dead_fraction'], '.3f'):>7}" if "mean_l0" in v else ""))
    if "retrieval" in t:
        r = t["retrieval"]
        lines.append(f"{'retrieval':<16}{r['positives'] + ' protocol':<22}{'R@1':>7}{'R@5':>7}{'R@10':>7}   ({r['n_images']:,} images, {r['n_texts']:,} texts)")
        for key, name in (("image_to_text", "image->text"), ("text_to_image", "text->image")):
            for src, label in ((r, "latent"), (r.get("embedding_reference"), "embedding")):
                if src:
                    v = src[key]
                    lines.append(f"{'':<16}{name + ' ' + label:<22}{f(v['R@1'], '.3f'):>7}{f(v['R@5'], '.3f'):>7}{f(v['R@10'], '.3f'):>7}")
    if "zeroshot" in t:
        r = t["zeroshot"]
        ref = r.get("embedding_reference", {})
        lines.append(f"{'zeroshot':<16}top-1 {f(r['top1'], '.3f')} (embedding {f(ref.get('top1'), '.3f')}, "
                     f"majority class {f(r.get('majority_baseline'), '.3f')}), "
                     f"{r['n_images']:,} images, {r['n_classes']:,} classes" +
                     (f", image mse {f(r['image_reconstruction']['mse'])}" if "image_reconstruction" in r else ""))
    if "steering" in t:
        r = t["steering"]
        lines.append(f"{'steering':<16}mAP {f(r['map'], '.3f')}  MRR {f(r['mrr'], '.3f')}  "
                     f"(unsteered mAP {f(r['map_unsteered'], '.3f')}, MRR {f(r['mrr_unsteered'], '.3f')}; "
                     f"{r['n_concepts']} concepts of '{r['concept_field']}', alpha {r['alpha']})")
    if "monosemanticity" in t:
        r = t["monosemanticity"]
        for mod in MODALITIES:
            if mod in r:
                v = r[mod]
                lines.append(f"{'monosemanticity':<16}{mod:<10}mean {f(v['mean'])}  median {f(v['median'])}  "
                             f"({v['n_scored']:,} of {v['n_latents']:,} latents scored)")
    for task, why in doc.get("skipped", {}).items():
        lines.append(f"{task:<16}skipped: {why}")
    return "\n".join(lines)


__all__ = ["EvalOptions", "TASKS", "aligned_view", "evaluate", "evaluate_model", "format_table", "parse_tasks"]
