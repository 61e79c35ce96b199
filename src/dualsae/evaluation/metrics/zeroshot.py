"""Zero-shot image classification in the latent space (paper Sec. 6.2, Table 1: ImageNet1K top-1).

Each class c has T_c text embeddings (the class name in T prompt templates, or, when no prompt
embeddings exist, the captions of the training rows of class c: *caption prototypes*). They are
encoded with the pair's *text* encoder and the class code is the mean of their codes,

    u_c = 1/T_c sum_t z_T(y_ct)                           u: [C, m], dense (C is small)

the latent analogue of CLIP's mean over prompt templates. Every image is encoded with the *image*
encoder and assigned the class whose code is most cosine-similar to its code. The image side stays
sparse: ``scores = embedding_bag(image_indices, U^T, image_values)`` gathers k rows of ``U^T``.

Ties: an image counts as correct only if its true class scores *strictly* higher than every other
class (pessimistic, as in retrieval): an image whose code is all zero, or shares no latent with
any class code, is wrong rather than assigned class 0 by ``argmax``.

Zero-shot store (written by ``dualsae extract`` for class-folder sources): ``image.npy`` [N, d],
``meta.jsonl`` rows with ``label`` (int) and ``class_name``, ``classes.json``
{"classes": [...], "templates": [...]} and ``class_text.npy`` float32 [C, T, d].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dualsae.core.errors import DataError
from dualsae.core.progress import tqdm
from dualsae.evaluation.metrics.reconstruction import modality_reconstruction
from dualsae.evaluation.metrics.retrieval import normalize_codes
from dualsae.evaluation.task_table import Skip, TableRow, Task, TaskContext, fmt, has_field
from dualsae.models.encoding import encode_rows
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings


@dataclass
class ZeroShotData:
    """images: [N, d] rows (a store view with image.npy); labels: [N] int64 in [0, C);
    classes: C names; class_text: list of C tensors [T_c, d]; templates: the prompt templates (or
    None for caption prototypes)."""

    images: PairedEmbeddings
    labels: np.ndarray
    classes: list[str]
    class_text: list[torch.Tensor]
    templates: list[str] | None = None
    source: str = ""
    dropped: int = 0


def load_zero_shot_store(folder: str | Path) -> ZeroShotData:
    """Open and check a zero-shot store folder (see module docstring)."""
    root = Path(folder)
    store = PairedEmbeddings.open(root)
    store.require("image", "zero-shot classification")
    cpath = root / "classes.json"
    if not cpath.is_file():
        raise DataError(f"{cpath}: missing; a zero-shot store holds classes.json with fields 'classes' and 'templates'")
    try:
        spec = json.loads(cpath.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{cpath}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("classes"), list) or not spec["classes"]:
        raise DataError(f"{cpath}: expected an object with a non-empty list 'classes'")
    classes = [str(c) for c in spec["classes"]]
    templates = [str(t) for t in spec.get("templates") or []]
    arr = np.load(root / "class_text.npy", mmap_mode="r", allow_pickle=False) if (root / "class_text.npy").is_file() else None
    if arr is None:
        raise DataError(f"{root / 'class_text.npy'}: missing; expected float32 [C, T, d] text embeddings of every class in every template")
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.ndim != 3 or arr.shape[0] != len(classes) or arr.shape[2] != store.d:
        raise DataError(f"{root / 'class_text.npy'}: shape {list(arr.shape)}, expected [C={len(classes)}, T, d={store.d}]")
    if templates and arr.shape[1] != len(templates):
        raise DataError(f"{root / 'class_text.npy'}: has {arr.shape[1]} templates per class, classes.json lists {len(templates)}")
    labels = meta_labels(store, "label", len(classes))
    class_text = [torch.from_numpy(np.array(arr[c], dtype=np.float32)) for c in range(len(classes))]
    return ZeroShotData(store, labels, classes, class_text, templates or None, str(root))


def meta_labels(store: PairedEmbeddings, field: str, n_classes: int) -> np.ndarray:
    """Integer labels from meta field ``field`` of every row of the view, checked to lie in [0, C)."""
    rows = store.meta_rows()
    where = f"{store.root}/meta.jsonl" if store.root is not None else "meta"
    out = np.empty(len(rows), dtype=np.int64)
    for i, r in enumerate(rows):
        v = r.get(field)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= v < n_classes:
            raise DataError(f"{where}: row {i:,} field '{field}' is {v!r}, expected an integer class id in [0, {n_classes})")
        out[i] = v
    return out


def caption_prototypes(train: PairedEmbeddings, eval_store: PairedEmbeddings, label_field: str) -> ZeroShotData:
    """Zero-shot data from a paired store with a meta label field (e.g. emoji ``category``).

    Class c's text side = the text embeddings of the ``train`` rows whose ``label_field`` is c
    (variable count per class). Images = the rows of ``eval_store`` whose class occurs in train
    (an eval class without training captions cannot be predicted; such rows are left out and
    counted in ``ZeroShotData.dropped``).
    """
    train.require("text", "caption prototypes")
    eval_store.require("image", "zero-shot classification")
    tr_rows, ev_rows = train.meta_rows(), eval_store.meta_rows()
    if not tr_rows:
        raise DataError("caption prototypes need training rows; the training split is empty")
    missing = next((i for i, r in enumerate(tr_rows) if label_field not in r), None)
    if missing is not None:
        where = f"{train.root}/meta.jsonl" if train.root is not None else "meta"
        raise DataError(f"{where}: training row {missing:,} has no field '{label_field}', which caption prototypes need")
    tr_vals = [str(r[label_field]) for r in tr_rows]
    classes = sorted(set(tr_vals))
    cid = {c: i for i, c in enumerate(classes)}
    tr_lab = np.array([cid[v] for v in tr_vals], dtype=np.int64)
    class_text = [train.read("text", np.flatnonzero(tr_lab == c)) for c in range(len(classes))]
    keep = np.array([i for i, r in enumerate(ev_rows) if str(r.get(label_field)) in cid], dtype=np.int64)
    labels = np.array([cid[str(ev_rows[i][label_field])] for i in keep], dtype=np.int64)
    return ZeroShotData(eval_store.subset(keep), labels, classes, class_text, None,
                        f"caption prototypes of '{label_field}'", dropped=len(ev_rows) - len(keep))


@torch.no_grad()
def class_codes(pair: SAEPair, class_text: Sequence[torch.Tensor] | torch.Tensor, batch_size: int = 4096,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """u_c = mean of the text codes of class c's T_c embeddings. class_text: C x [T_c, d] -> [C, m]."""
    out = torch.zeros(len(class_text), pair.m, dtype=torch.float32)
    for c, t in enumerate(class_text):
        codes = encode_rows(pair, torch.as_tensor(t, dtype=torch.float32), "text", batch_size=batch_size, device=device)
        out[c].scatter_add_(0, codes.indices.reshape(-1), codes.values.reshape(-1).float())
        out[c] /= max(len(t), 1)
    return out


def _accuracy(scores_fn, n: int, labels: np.ndarray, n_classes: int, batch_size: int, progress: bool, desc: str) -> dict:
    """Top-1 accuracy (strict: the true class must beat every other class) and per-class accuracy."""

    lab = torch.as_tensor(labels, dtype=torch.long)
    correct = torch.zeros(n, dtype=torch.bool)
    for a in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        b = min(a + batch_size, n)
        s = scores_fn(a, b)
        true = s.gather(1, lab[a:b, None])
        others = s.scatter(1, lab[a:b, None], float("-inf")).max(dim=1, keepdim=True).values
        correct[a:b] = (true > others).squeeze(1)
    per_class = np.full(n_classes, np.nan)
    counts = np.bincount(labels, minlength=n_classes)
    hits = np.bincount(labels, weights=correct.numpy().astype(np.float64), minlength=n_classes)
    per_class[counts > 0] = hits[counts > 0] / counts[counts > 0]
    return {
        "top1": float(correct.float().mean()) if n else float("nan"),
        # Always answering the most frequent class: the floor top-1 must beat to mean anything.
        "majority_baseline": float(counts.max() / n) if n else float("nan"),
        "mean_per_class": float(np.nanmean(per_class)) if (counts > 0).any() else float("nan"),
        "per_class": [None if np.isnan(v) else float(v) for v in per_class],
        "n_images": int(n),
        "n_classes": int(n_classes),
    }


def zero_shot_accuracy(
    pair: SAEPair,
    image_x: Any,
    labels: np.ndarray,
    class_text: Sequence[torch.Tensor] | torch.Tensor,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict:
    """Latent zero-shot top-1 accuracy.

    image_x: PairedEmbeddings view (image side) or array [N, d]; labels: [N] ints in [0, C);
    class_text: C tensors [T_c, d] (or one [C, T, d] tensor).
    Returns {"top1", "mean_per_class", "per_class": [C], "n_images", "n_classes"}.
    """
    n_classes = len(class_text)
    u = F.normalize(class_codes(pair, class_text, batch_size, device), dim=1)
    u_t = u.T.contiguous()  # [m, C]: row j = every class's weight on latent j
    codes = normalize_codes(encode_rows(pair, image_x, "image", batch_size=batch_size, device=device, progress=progress))

    def scores(a: int, b: int) -> torch.Tensor:
        return F.embedding_bag(codes.indices[a:b], u_t, per_sample_weights=codes.values[a:b].float(), mode="sum")

    return _accuracy(scores, codes.batch, np.asarray(labels), n_classes, batch_size, progress, "zero-shot")


def zero_shot_accuracy_embeddings(
    image_x: Any, labels: np.ndarray, class_text: Sequence[torch.Tensor] | torch.Tensor, batch_size: int = 4096,
    progress: bool = False,
) -> dict:
    """Reference: the same classification in the raw embedding space. Class embedding = the
    normalised mean of the normalised template embeddings (CLIP's recipe)."""
    protos = torch.stack([F.normalize(F.normalize(torch.as_tensor(t, dtype=torch.float32), dim=1).mean(0), dim=0)
                          for t in class_text])
    if isinstance(image_x, PairedEmbeddings):
        n = image_x.n
        read = lambda a, b: image_x.read("image", np.arange(a, b))  # noqa: E731
    else:
        arr = image_x
        n = len(arr)
        read = lambda a, b: torch.as_tensor(np.asarray(arr[a:b], dtype=np.float32))  # noqa: E731
    return _accuracy(lambda a, b: F.normalize(read(a, b), dim=1) @ protos.T, n, np.asarray(labels), len(class_text),
                     batch_size, progress, "zero-shot (embeddings)")


def zero_shot(pair: SAEPair, data: ZeroShotData, batch_size: int = 4096, device: str | torch.device = "cpu",
              progress: bool = False, reference: bool = True) -> dict:
    """Latent accuracy on a :class:`ZeroShotData` (plus the raw-embedding reference)."""
    out = zero_shot_accuracy(pair, data.images, data.labels, data.class_text, batch_size, device, progress)
    out["classes"] = list(data.classes)
    out["source"] = data.source
    out["texts_per_class"] = [int(len(t)) for t in data.class_text]
    out["images_dropped"] = int(data.dropped)
    if reference:
        ref = zero_shot_accuracy_embeddings(data.images, data.labels, data.class_text, batch_size)
        out["embedding_reference"] = {"top1": ref["top1"], "mean_per_class": ref["mean_per_class"]}
    return out


# ---------------------------------------------------------------------------- the eval task
def _task(ctx: TaskContext) -> dict:
    o, store, train = ctx.options, ctx.store, ctx.train_store
    data = ctx.zeroshot
    if data is None and o.label_field:
        if train is None:
            raise Skip(f"caption prototypes of '{o.label_field}' need a training split (none found)")
        if not has_field(train.meta_rows(), o.label_field):
            raise Skip(f"no training row has meta field '{o.label_field}'")
        if not train.has("text") or not store.has("image"):
            raise Skip("caption prototypes need training captions (text.npy) and test images (image.npy)")
        data = caption_prototypes(train, store, o.label_field)
    elif data is None:
        raise Skip("needs --zeroshot STORE (class prompt embeddings) or --label-field FIELD (caption prototypes)")
    res = zero_shot(ctx.pair, data, o.batch_size, o.device, o.progress)
    if ctx.zeroshot is not None:
        res["image_reconstruction"] = modality_reconstruction(ctx.pair, data.images, "image", **ctx.kw)
    return res


def _row(r: dict) -> dict:
    out = {"zs_top1": r["top1"], "zs_mean_per_class": r.get("mean_per_class")}
    if "image_reconstruction" in r:
        out["zs_recon_mse"] = r["image_reconstruction"]["mse"]
    return out


def _lines(r: dict) -> list[str]:
    ref = r.get("embedding_reference", {})
    return [f"{'zeroshot':<16}top-1 {fmt(r['top1'], '.3f')} (embedding {fmt(ref.get('top1'), '.3f')}, "
            f"majority class {fmt(r.get('majority_baseline'), '.3f')}), mean per class {fmt(r.get('mean_per_class'), '.3f')} "
            f"(embedding {fmt(ref.get('mean_per_class'), '.3f')}), "
            f"{r['n_images']:,} images, {r['n_classes']:,} classes" +
            (f", image mse {fmt(r['image_reconstruction']['mse'])}" if "image_reconstruction" in r else "")]


def _table(r: dict) -> list[TableRow]:
    """Top-1 and mean-per-class accuracy side by side (on imbalanced classes they can rank two models
    in opposite orders). The majority-class baseline scores 1 on its class and 0 on the others, so its
    mean per class is 1 / (classes with an image)."""
    ref = r.get("embedding_reference", {})
    present = sum(v is not None for v in r.get("per_class", [])) or r.get("n_classes") or 0
    rows = [TableRow("zeroshot", "top-1", r["top1"], ref.get("top1"), r.get("majority_baseline"), "majority class"),
            TableRow("zeroshot", "mean per class", r.get("mean_per_class"), ref.get("mean_per_class"),
                     1.0 / present if present else None, "majority class")]
    if "image_reconstruction" in r:
        rows.append(TableRow("zeroshot", "image MSE (zero-shot set)", r["image_reconstruction"]["mse"], None, None, "", False))
    return rows


#: ``zeroshot``: latent zero-shot top-1 on a zero-shot store (and its image reconstruction MSE,
#: Table 1's ImageNet column) or on caption prototypes of a meta label field.
TASK = Task("zeroshot", _task, (("zs_recon_mse", "Zero-shot set recon. MSE ↓", False), ("zs_top1", "Zero-shot top-1 ↑", True),
                                ("zs_mean_per_class", "Zero-shot mean/class ↑", True)),
            _row, _lines, _table)


__all__ = ["TASK",
    "ZeroShotData", "caption_prototypes", "class_codes", "load_zero_shot_store", "meta_labels", "zero_shot",
    "zero_shot_accuracy", "zero_shot_accuracy_embeddings",
]
