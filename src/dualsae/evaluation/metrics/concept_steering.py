"""Cross-modal concept steering (paper Sec. 6.2, Fig. 7).

For each concept (a value of a meta field, e.g. emoji ``category``; or an element when the field
holds a list, e.g. ``tags``; COCO object categories in the paper):

1. *Pick the text latent.* Mean activation of every text latent on the captions of rows with the
   concept, and on ``n_negative`` (default 1,000; all if fewer) captions of rows without it, drawn
   at random with a seed derived from (seed, concept). The latent j with the largest difference
   ``mean_with - mean_without`` is the concept's coordinate (lowest index on exact ties).
2. *Steering vector.* The image decoder column with the same index, ``pair.decoder_columns('image')[j]``
   (for a shared SAE the same decoder; for an aligned pair the matched image latent, eq. 7),
   normalised to unit length.
3. *Steer.* ``n_sources`` (default 100) test images without the concept, drawn with the same kind
   of seed, get ``x' = normalize(x + alpha * s * w_j)`` (:func:`dualsae.use.steering.steer`), where ``s`` is the mean L2 norm of the test image
   embeddings, so ``alpha`` (default 1.0) is relative to the typical embedding norm: on unit-norm
   CLIP embeddings alpha = 1 adds a vector as long as the embedding itself.
4. *Retrieve.* All test images are ranked by cosine similarity to ``x'``; the source image is left
   out of its own ranking (it is the nearest neighbour of a lightly steered embedding, and never
   relevant, so keeping it would only shift every rank by one). Relevant = images with the concept.
   Average precision and reciprocal rank of the first relevant image, averaged over sources: mAP,
   MRR per concept, then averaged over concepts. The same numbers for the unsteered source
   (alpha = 0) are reported as ``map_unsteered`` / ``mrr_unsteered``.

Ties in the ranking are broken pessimistically: an irrelevant image tied with a relevant one is
ranked first. (The order among tied relevant images does not change AP.)

Test images: when every row has a ``group`` field (COCO: several captions per image), each group
is one image, holding the concept if any of its rows does. The selection captions (step 1) may
come from another view of the store (the training split) to keep test rows out of the choice.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import gammaln

from dualsae.core.codes import SparseCodes
from dualsae.core.errors import DataError
from dualsae.core.progress import tqdm
from dualsae.evaluation.task_table import Skip, TableRow, Task, TaskContext, fmt, has_field
from dualsae.models.encoding import encode_rows
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings
from dualsae.use.steering import steer


def concept_values(row: dict, field: str) -> list[str]:
    """The concepts a meta row holds in ``field``: one for a scalar, each element for a list."""
    v = row.get(field)
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return sorted({str(x) for x in v})
    return [str(v)]


def concept_masks(meta_rows: list[dict], field: str) -> dict[str, np.ndarray]:
    """{concept: [N] bool}: the rows holding each concept of ``field``."""
    rows_of: dict[str, list[int]] = {}
    for i, r in enumerate(meta_rows):
        for c in concept_values(r, field):
            rows_of.setdefault(c, []).append(i)
    out = {}
    for c, rows in rows_of.items():
        mask = np.zeros(len(meta_rows), dtype=bool)
        mask[rows] = True
        out[c] = mask
    return out


def _rng(seed: int, concept: str, salt: int) -> np.random.Generator:
    # Per-concept streams: a concept's draws do not depend on which other concepts are evaluated.
    return np.random.default_rng([seed, zlib.crc32(concept.encode()), salt])


def mean_code(codes: SparseCodes, rows: np.ndarray) -> torch.Tensor:
    """Mean dense code of some rows, from the sparse codes. -> [m] float64."""
    out = torch.zeros(codes.m, dtype=torch.float64)
    if len(rows) == 0:
        return out
    r = torch.as_tensor(rows, dtype=torch.long)
    out.index_add_(0, codes.indices[r].reshape(-1), codes.values[r].reshape(-1).double())
    return out / len(rows)


def select_latent(text_codes: SparseCodes, with_mask: np.ndarray, n_negative: int = 1000,
                  rng: np.random.Generator | None = None) -> tuple[int, float, int]:
    """Step 1: the text latent with the largest mean-activation difference (with - without).

    text_codes: [N, w] codes of the selection captions; with_mask: [N] bool.
    Returns (latent, difference, negatives used).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    pos = np.flatnonzero(with_mask)
    neg_all = np.flatnonzero(~with_mask)
    neg = np.sort(rng.choice(neg_all, size=min(n_negative, len(neg_all)), replace=False)) if len(neg_all) else neg_all
    diff = (mean_code(text_codes, pos) - mean_code(text_codes, neg)).numpy()
    j = int(np.argmax(diff))
    return j, float(diff[j]), int(len(neg))


def ranked_ap_rr(scores: torch.Tensor, relevant: torch.Tensor, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Average precision and reciprocal rank of each query's ranking of the gallery.

    scores: [S, N]; relevant: [N] bool (same for every query); exclude: [S] gallery index left out
    of each query's ranking (or None). Ties: irrelevant before relevant (pessimistic).
    Returns (ap [S], rr [S]) float64; NaN where no relevant image exists.
    """
    s = scores.double().clone()
    if exclude is not None:
        # An irrelevant item at -inf sorts after every relevant item, so it changes no relevant rank.
        if relevant[exclude].any():
            raise ValueError("an excluded (source) item must not be relevant")
        s[torch.arange(s.shape[0]), exclude] = float("-inf")
    rel = relevant.to(torch.bool)
    n_rel = int(rel.sum())
    if n_rel == 0:
        nan = torch.full((s.shape[0],), float("nan"), dtype=torch.float64)
        return nan, nan.clone()
    # Secondary key first (irrelevant first), then a stable sort on descending score.
    order0 = torch.argsort(rel.to(torch.int8), stable=True)
    order1 = torch.argsort(-s[:, order0], dim=1, stable=True)
    rel_sorted = rel[order0][order1]  # [S, N]
    ranks = torch.arange(1, s.shape[1] + 1, dtype=torch.float64)
    hits = rel_sorted.cumsum(dim=1).double()
    ap = (hits / ranks * rel_sorted).sum(dim=1) / n_rel
    first = rel_sorted.to(torch.int8).argmax(dim=1)
    rr = 1.0 / (first.double() + 1.0)
    return ap, rr


def _image_gallery(store: PairedEmbeddings, field: str, group_field: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Image rows (one per group when every row has ``group_field``) and their concept masks."""
    rows = store.meta_rows()
    if rows and all(group_field in r for r in rows):
        first: dict[Any, int] = {}
        members: dict[Any, set] = {}
        for i, r in enumerate(rows):
            g = r[group_field]
            g = tuple(g) if isinstance(g, list) else g
            first.setdefault(g, i)
            members.setdefault(g, set()).update(concept_values(r, field))
        groups = list(first)
        positions = np.array([first[g] for g in groups], dtype=np.int64)
        masks: dict[str, np.ndarray] = {}
        for gi, g in enumerate(groups):
            for c in members[g]:
                masks.setdefault(c, np.zeros(len(groups), dtype=bool))[gi] = True
        return positions, masks
    return np.arange(len(rows), dtype=np.int64), concept_masks(rows, field)


def concept_steering(
    pair: SAEPair,
    store: PairedEmbeddings,
    concept_field: str,
    select_store: PairedEmbeddings | None = None,
    concepts: Iterable[str] | None = None,
    n_sources: int = 100,
    n_negative: int = 1000,
    alpha: float = 1.0,
    min_images: int = 5,
    max_concepts: int | None = 80,
    group_field: str = "group",
    seed: int = 0,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict:
    """Concept steering mAP / MRR (see module docstring).

    store: the test rows (sources and gallery); select_store: the rows whose captions pick each
    concept's text latent (default: ``store``). Concepts: ``concepts`` if given, else every value of
    ``concept_field`` held by at least ``min_images`` test images (and not by all of them), the
    ``max_concepts`` most frequent (ties by name; None = all).
    Returns {"map", "mrr", "map_unsteered", "mrr_unsteered", "n_concepts", "alpha", "scale",
    "per_concept": {concept: {...}}, "skipped": {concept: reason}}.
    """

    store.require("image", "concept steering")
    select_store = store if select_store is None else select_store
    select_store.require("text", "concept steering (latent selection)")
    if not any(concept_field in r for r in select_store.meta_rows()):
        raise DataError(f"{select_store.root}/meta.jsonl: no row has field '{concept_field}', which concept steering needs")

    positions, img_masks = _image_gallery(store, concept_field, group_field)
    sel_masks = concept_masks(select_store.meta_rows(), concept_field)
    n_img = len(positions)
    if concepts is None:
        ok = [c for c, msk in img_masks.items() if min_images <= msk.sum() < n_img]
        ok.sort(key=lambda c: (-int(img_masks[c].sum()), c))
        chosen = ok if max_concepts is None else ok[:max_concepts]
    else:
        chosen = [str(c) for c in concepts]

    images = store.read("image", positions)  # [N_img, d] dense: d is small
    scale = float(images.norm(dim=1).mean())
    images_n = F.normalize(images, dim=1)
    text_codes = encode_rows(pair, select_store, "text", batch_size=batch_size, device=device, progress=progress)
    m_image = pair.decoder_columns("image").shape[0]

    per: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for c in tqdm(chosen, desc="steering", unit="concept", disable=not progress, leave=False):
        rel_np = img_masks.get(c, np.zeros(n_img, dtype=bool))
        sel = sel_masks.get(c)
        if sel is None or not sel.any():
            skipped[c] = "no selection caption holds it"
            continue
        if rel_np.sum() == 0 or rel_np.all():
            skipped[c] = "held by no test image or by all of them"
            continue
        j, diff, n_neg = select_latent(text_codes, sel, n_negative, _rng(seed, c, 0))
        if j >= m_image:
            skipped[c] = f"text latent {j} has no image decoder column (image SAE has {m_image})"
            continue
        cand = np.flatnonzero(~rel_np)
        src = np.sort(_rng(seed, c, 1).choice(cand, size=min(n_sources, len(cand)), replace=False))
        src_t = torch.as_tensor(src, dtype=torch.long)
        rel = torch.as_tensor(rel_np)
        x = images[src_t]
        steered = steer(pair, x, j, alpha, "image", scale=scale, normalize=True)  # step 3
        ap, rr = ranked_ap_rr(steered @ images_n.T, rel, src_t)
        ap0, rr0 = ranked_ap_rr(F.normalize(x, dim=1) @ images_n.T, rel, src_t)
        per[c] = {"latent": j, "activation_difference": diff, "captions_with": int(sel.sum()), "captions_without": n_neg,
                  "images_with": int(rel_np.sum()), "n_sources": int(len(src)),
                  "map": float(ap.mean()), "mrr": float(rr.mean()),
                  "map_unsteered": float(ap0.mean()), "mrr_unsteered": float(rr0.mean())}

    def avg(key: str) -> float:
        return float(np.mean([v[key] for v in per.values()])) if per else float("nan")

    return {"map": avg("map"), "mrr": avg("mrr"), "map_unsteered": avg("map_unsteered"), "mrr_unsteered": avg("mrr_unsteered"),
            "n_concepts": len(per), "concept_field": concept_field, "alpha": alpha, "scale": scale,
            "n_test_images": int(n_img), "per_concept": per, "skipped": skipped}


# ---------------------------------------------------------------------------- the eval task
def _task(ctx: TaskContext) -> dict:
    o, store, train = ctx.options, ctx.store, ctx.train_store
    sel = train if train is not None and has_field(train.meta_rows(), o.concept_field or "") else store
    if not o.concept_field:
        raise Skip("needs --concept-field FIELD (a meta field holding each row's concept(s))")
    if not has_field(store.meta_rows(), o.concept_field):
        raise Skip(f"no evaluation row has meta field '{o.concept_field}'")
    if not store.has("image") or not sel.has("text") or not ctx.both_encoders:
        raise Skip("needs image and text embeddings and a model with both encoders")
    res = concept_steering(ctx.pair, store, o.concept_field, select_store=sel, n_sources=o.steering_sources,
                           n_negative=o.steering_negatives, alpha=o.steering_alpha, max_concepts=o.max_concepts,
                           group_field=o.group_field, seed=o.seed, **ctx.kw)
    res["selection_rows"] = "train split" if sel is train else "evaluation rows"
    return res


def _lines(r: dict) -> list[str]:
    return [f"{'steering':<16}mAP {fmt(r['map'], '.3f')}  MRR {fmt(r['mrr'], '.3f')}  "
            f"(unsteered mAP {fmt(r['map_unsteered'], '.3f')}, MRR {fmt(r['mrr_unsteered'], '.3f')}; "
            f"{r['n_concepts']} concepts of '{r['concept_field']}', alpha {r['alpha']})"]


def random_ranking(n_items: int, n_relevant: int) -> tuple[float, float]:
    """Expected AP and RR of a uniformly random ranking of ``n_items`` holding ``n_relevant`` relevant ones.

    RR: the first relevant item sits at rank r with probability C(N - r, R - 1) / C(N, R).
    AP: the mean over relevant items of the precision at their rank; a relevant item sits at rank t
    uniformly on 1..N with on average (R - 1)(t - 1) / (N - 1) relevant items ahead of it, so
    E[AP] = 1/N sum_t (1 + (R - 1)(t - 1) / (N - 1)) / t (precision is linear in that count)."""
    n, rel = int(n_items), int(n_relevant)
    if rel <= 0 or n <= 0:
        return float("nan"), float("nan")
    r = np.arange(1, n - rel + 2, dtype=np.float64)
    log_p = gammaln(n - r + 1) - gammaln(rel) - gammaln(n - r - rel + 2) - (gammaln(n + 1) - gammaln(rel + 1) - gammaln(n - rel + 1))
    rr = float((np.exp(log_p) / r).sum())
    t = np.arange(1, n + 1, dtype=np.float64)
    ap = float(((1.0 + (rel - 1) * (t - 1) / max(n - 1, 1)) / t).mean())
    return ap, rr


def _table(r: dict) -> list[TableRow]:
    """mAP / MRR of the steered sources, of the unsteered sources in the raw embedding space, and of a
    random ranking of the same gallery (each concept's own relevant count, averaged over concepts)."""
    per = r.get("per_concept", {}).values()
    # Each source is left out of its own ranking: N - 1 candidates.
    chance = [random_ranking(r["n_test_images"] - 1, v["images_with"]) for v in per]
    c_map = float(np.mean([c[0] for c in chance])) if chance else None
    c_mrr = float(np.mean([c[1] for c in chance])) if chance else None
    return [TableRow("steering", "mAP", r["map"], r["map_unsteered"], c_map, "random ranking"),
            TableRow("steering", "MRR", r["mrr"], r["mrr_unsteered"], c_mrr, "random ranking")]


#: ``steering``: concept steering mAP / MRR over the values of ``concept_field`` (Sec. 6.2).
TASK = Task("steering", _task, (("steer_map", "Steering mAP ↑", True), ("steer_mrr", "Steering MRR ↑", True)),
            lambda r: {"steer_map": r["map"], "steer_mrr": r["mrr"]}, _lines, _table)


__all__ = ["TASK", "concept_masks", "concept_steering", "concept_values", "mean_code", "random_ranking", "ranked_ap_rr", "select_latent"]
