"""Cross-modal retrieval in the latent space (paper Sec. 6.2, Table 1).

Image and text embeddings are encoded by the pair's image and text encoders into one latent index
space; queries of one modality rank the gallery of the other by the cosine similarity of their
sparse codes, and Recall@K is the fraction of queries with a correct item in the top K.

Which gallery items are correct (``positives``):

* ``group``   (MS-COCO protocol): rows sharing a meta ``group`` value (e.g. COCO ``image_id``) are
  captions of one image. The image gallery holds each group once (its first row); image->text is a
  hit when *any* caption of the image is in the top K; text->image when the caption's image is.
  Rows without a group field are their own group (which is the ``row`` protocol).
* ``caption`` (emoji README protocol): galleries hold every row; a hit is any gallery row whose
  caption equals the query's caption (captions repeat across rows).
* ``row``     (strict pairs): only the query's own paired row is correct.

All three reduce to "query key == gallery key" with integer keys, which is what the ranking uses.

Ties: the rank of a query is ``1 + #{negatives with score >= best positive score}``: a negative
tied with the best positive counts as ranked above it (pessimistic). Sparse codes make exact ties
common (every gallery item sharing no latent with the query scores exactly 0), and a model whose
codes are all zero must not score perfect recall; the optimistic rule (only ``>`` counts) would
give it Recall@1 = 1. The pessimistic rule also makes the result independent of sort order.

Similarity from sparse codes (never a dense ``[N, m]`` gallery): both sides are L2-normalised in
the sparse form; for a chunk of ``b`` queries the codes are densified to ``Q [b, m]`` (small), and
``S^T = embedding_bag(gallery_indices, Q^T, per_sample_weights=gallery_values)`` gathers, for each
gallery row, the k query columns of its active latents: ``O(G k b)`` work and ``O(m b + G b)``
memory, against ``O(G m b)`` for the dense product. ``benchmarks/retrieval.py`` measures both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import gammaln

from dualsae.core.codes import SparseCodes
from dualsae.core.errors import ConfigError, DataError
from dualsae.core.progress import tqdm
from dualsae.evaluation.task_table import Skip, TableRow, Task, TaskContext, fmt
from dualsae.models.encoding import encode_rows
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings

POSITIVES = ("group", "caption", "row")
DEFAULT_KS = (1, 5, 10)
# Similarity chunks hold at most this many float32 scores (128 MB).
_CHUNK_ELEMENTS = 1 << 25


# ---------------------------------------------------------------------------- codes
def normalize_codes(codes: SparseCodes) -> SparseCodes:
    """Scale each row to unit L2 norm (rows that are all zero stay zero). [N, w] -> [N, w].

    Non-zero entries of a row must have distinct indices (true for TopK / BatchTopK / ReLU codes).
    """
    norm = codes.values.double().pow(2).sum(1, keepdim=True).sqrt()
    vals = torch.where(norm > 0, codes.values.double() / norm.clamp_min(1e-300), torch.zeros_like(codes.values, dtype=torch.float64))
    return SparseCodes(vals.to(codes.values.dtype), codes.indices, codes.m)


def sparse_scores(queries: SparseCodes, gallery: SparseCodes) -> torch.Tensor:
    """Dot products of every query with every gallery row from sparse codes -> [b, G] float32.

    queries: [b, wq] (densified to [b, m] here, so keep b small); gallery: [G, wg], never densified.
    Pass normalised codes (:func:`normalize_codes`) to get cosine similarities.
    """
    b, m = queries.batch, queries.m
    if gallery.m != m:
        raise ConfigError(f"query codes have m={m}, gallery codes m={gallery.m}; both must be in one index space")
    q_dense_t = torch.zeros(b, m).scatter_add_(1, queries.indices, queries.values.float()).T.contiguous()
    if gallery.batch == 0:
        return torch.zeros(b, 0)
    # Gallery row g gathers the query columns of its active latents: [G, b].
    s_t = F.embedding_bag(gallery.indices, q_dense_t, per_sample_weights=gallery.values.float(), mode="sum")
    return s_t.T


# ---------------------------------------------------------------------------- ranking
def first_positive_ranks(
    score_chunk: Callable[[int, int], torch.Tensor],
    n_queries: int,
    query_keys: np.ndarray,
    gallery_keys: np.ndarray,
    chunk: int | None = None,
    progress: bool = False,
    desc: str = "rank",
) -> np.ndarray:
    """Rank of the best-scoring positive of each query (1 = top), pessimistic on ties.

    score_chunk(a, b) -> [b - a, G] scores of queries a..b-1 against the whole gallery.
    query_keys: [Q] ints; gallery_keys: [G] ints; positive <=> equal keys.
    Returns [Q] int64 ranks; 0 for a query with no positive in the gallery.
    """

    gk = torch.as_tensor(np.asarray(gallery_keys, dtype=np.int64))
    qk_all = torch.as_tensor(np.asarray(query_keys, dtype=np.int64))
    g = int(gk.numel())
    if chunk is None:
        chunk = max(1, min(1024, _CHUNK_ELEMENTS // max(g, 1)))
    ranks = np.zeros(n_queries, dtype=np.int64)
    for a in tqdm(range(0, n_queries, chunk), desc=desc, unit="chunk", disable=not progress, leave=False):
        b = min(a + chunk, n_queries)
        s = score_chunk(a, b)
        pos = gk[None, :] == qk_all[a:b, None]
        best = s.masked_fill(~pos, float("-inf")).max(dim=1).values
        ahead = ((s >= best[:, None]) & ~pos).sum(dim=1)
        r = 1 + ahead
        r[~pos.any(dim=1)] = 0
        ranks[a:b] = r.numpy()
    return ranks


def recall_summary(ranks: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict:
    """Recall@K over queries that have a positive (rank > 0), plus median rank and counts."""
    valid = ranks[ranks > 0]
    out: dict[str, Any] = {f"R@{k}": float((valid <= k).mean()) if valid.size else float("nan") for k in ks}
    out["median_rank"] = float(np.median(valid)) if valid.size else float("nan")
    out["n_queries"] = int(valid.size)
    out["n_without_positive"] = int((ranks == 0).sum())
    return out


# ---------------------------------------------------------------------------- protocols
@dataclass
class RetrievalProtocol:
    """Which rows enter each side and their positive keys.

    image_rows: [Gi] positions (in the store view) of the image side; image_keys: [Gi] ints.
    text_rows:  [Gt] positions of the text side; text_keys: [Gt] ints.
    """

    name: str
    image_rows: np.ndarray
    image_keys: np.ndarray
    text_rows: np.ndarray
    text_keys: np.ndarray


def _key_ids(values: list) -> np.ndarray:
    """Map arbitrary hashable values to dense int ids (equal values -> equal ids)."""
    ids: dict = {}
    return np.array([ids.setdefault(v, len(ids)) for v in values], dtype=np.int64)


def build_protocol(meta_rows: list[dict], positives: str = "group", group_field: str = "group",
                   caption_field: str = "caption") -> RetrievalProtocol:
    """Rows and keys of one retrieval protocol (see module docstring) from the meta rows of a view."""
    n = len(meta_rows)
    allpos = np.arange(n, dtype=np.int64)
    if positives == "row":
        return RetrievalProtocol("row", allpos, allpos.copy(), allpos, allpos.copy())
    if positives == "caption":
        missing = [i for i, r in enumerate(meta_rows) if caption_field not in r]
        if missing:
            raise DataError(f"meta.jsonl: row {missing[0]:,} has no '{caption_field}' field, which positives='caption' needs ({len(missing):,} rows lack it)")
        keys = _key_ids([str(r[caption_field]) for r in meta_rows])
        return RetrievalProtocol("caption", allpos, keys, allpos, keys.copy())
    if positives == "group":
        # A row without the field is its own group (a value no real group can take).
        groups = [("g", _hashable(r[group_field])) if group_field in r else ("row", i) for i, r in enumerate(meta_rows)]
        keys = _key_ids(groups)
        _, first = np.unique(keys, return_index=True)
        image_rows = np.sort(first).astype(np.int64)
        return RetrievalProtocol("group", image_rows, keys[image_rows], allpos, keys)
    raise ConfigError(f"positives must be one of {', '.join(POSITIVES)}, found {positives!r}")


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def auto_positives(meta_rows: list[dict], group_field: str = "group", caption_field: str = "caption") -> str:
    """'group' if every row has the group field, else 'caption' if every row has a caption and some
    caption repeats, else 'row'."""
    if meta_rows and all(group_field in r for r in meta_rows):
        return "group"
    if meta_rows and all(caption_field in r for r in meta_rows):
        caps = [str(r[caption_field]) for r in meta_rows]
        if len(set(caps)) < len(caps):
            return "caption"
    return "row"


# ---------------------------------------------------------------------------- metrics
def _rank_both(score_i2t, score_t2i, proto: RetrievalProtocol, ks, progress: bool) -> dict:
    r_i2t = first_positive_ranks(score_i2t, len(proto.image_rows), proto.image_keys, proto.text_keys, progress=progress, desc="image->text")
    r_t2i = first_positive_ranks(score_t2i, len(proto.text_rows), proto.text_keys, proto.image_keys, progress=progress, desc="text->image")
    return {"image_to_text": recall_summary(r_i2t, ks), "text_to_image": recall_summary(r_t2i, ks),
            "positives": proto.name, "n_images": int(len(proto.image_rows)), "n_texts": int(len(proto.text_rows))}


def retrieval_from_codes(image_codes: SparseCodes, text_codes: SparseCodes, proto: RetrievalProtocol,
                         ks: Iterable[int] = DEFAULT_KS, progress: bool = False) -> dict:
    """Recall@K both ways from codes of the protocol's rows.

    image_codes: [Gi, w] codes of ``proto.image_rows`` (in that order); text_codes: [Gt, w] of ``proto.text_rows``.
    """
    qi, qt = normalize_codes(image_codes), normalize_codes(text_codes)

    def sl(c: SparseCodes, a: int, b: int) -> SparseCodes:
        return SparseCodes(c.values[a:b], c.indices[a:b], c.m)

    return _rank_both(lambda a, b: sparse_scores(sl(qi, a, b), qt), lambda a, b: sparse_scores(sl(qt, a, b), qi), proto, ks, progress)


def cross_modal_retrieval(
    pair: SAEPair,
    store: PairedEmbeddings,
    positives: str = "group",
    group_field: str = "group",
    caption_field: str = "caption",
    ks: Iterable[int] = DEFAULT_KS,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict:
    """Latent-space retrieval (Table 1): image codes vs text codes of the rows of ``store`` by cosine.

    Returns {"image_to_text": {"R@1", "R@5", "R@10", "median_rank", "n_queries", ...},
             "text_to_image": {...}, "positives", "n_images", "n_texts"}.
    """
    store.require_pairs("cross-modal retrieval")
    proto = build_protocol(store.meta_rows(), positives, group_field, caption_field)
    img = encode_rows(pair, store.subset(proto.image_rows), "image", batch_size=batch_size, device=device, progress=progress)
    txt = encode_rows(pair, store.subset(proto.text_rows), "text", batch_size=batch_size, device=device, progress=progress)
    return retrieval_from_codes(img, txt, proto, ks, progress)


def embedding_retrieval(
    store: PairedEmbeddings,
    positives: str = "group",
    group_field: str = "group",
    caption_field: str = "caption",
    ks: Iterable[int] = DEFAULT_KS,
    progress: bool = False,
) -> dict:
    """The same protocol in the raw embedding space (cosine of the embeddings): reference numbers.

    Reads both sides into memory ([N, d] float32; d is small).
    """
    store.require_pairs("embedding retrieval")
    proto = build_protocol(store.meta_rows(), positives, group_field, caption_field)
    img = F.normalize(store.read("image", proto.image_rows), dim=1)
    txt = F.normalize(store.read("text", proto.text_rows), dim=1)
    return _rank_both(lambda a, b: img[a:b] @ txt.T, lambda a, b: txt[a:b] @ img.T, proto, ks, progress)


# ---------------------------------------------------------------------------- the eval task
def _task(ctx: TaskContext) -> dict:
    o, store = ctx.options, ctx.store
    if not store.has_pairs or not ctx.both_encoders:
        raise Skip("needs paired image and text embeddings and a model with both encoders")
    positives = auto_positives(store.meta_rows(), o.group_field, o.caption_field) if o.positives == "auto" else o.positives
    rk = {"positives": positives, "group_field": o.group_field, "caption_field": o.caption_field}
    res = cross_modal_retrieval(ctx.pair, store, **rk, **ctx.kw)
    res["embedding_reference"] = embedding_retrieval(store, **rk)
    res["chance"] = chance_recall(build_protocol(store.meta_rows(), positives, o.group_field, o.caption_field))
    return res


def _chance_one_way(query_keys: np.ndarray, gallery_keys: np.ndarray, ks: Iterable[int]) -> dict:
    """Expected Recall@K of a random ranking: a query with p positives among G gallery items misses
    all of them in K random draws with probability C(G - p, K) / C(G, K); averaged over the queries
    that have a positive (as :func:`recall_summary`)."""
    keys, counts = np.unique(np.asarray(gallery_keys), return_counts=True)
    per_key = dict(zip(keys.tolist(), counts.tolist()))
    p = np.array([per_key.get(int(k), 0) for k in query_keys], dtype=np.float64)
    p = p[p > 0]
    g = float(len(gallery_keys))
    out = {}
    for k in ks:
        if not p.size:
            out[f"R@{k}"] = float("nan")
            continue
        kk = min(float(k), g)
        # log C(G - p, K) - log C(G, K); C(n, K) = 0 for n < K (a hit is then certain).
        ok = g - p >= kk
        miss = np.zeros_like(p)
        miss[ok] = np.exp(gammaln(g - p[ok] + 1) - gammaln(g - p[ok] - kk + 1) - gammaln(g + 1) + gammaln(g - kk + 1))
        out[f"R@{k}"] = float((1.0 - miss).mean())
    return out


def chance_recall(proto: RetrievalProtocol, ks: Iterable[int] = DEFAULT_KS) -> dict:
    """Recall@K both ways of a random ranking under ``proto`` (k / G when each query has one positive)."""
    ks = tuple(ks)
    return {"image_to_text": _chance_one_way(proto.image_keys, proto.text_keys, ks),
            "text_to_image": _chance_one_way(proto.text_keys, proto.image_keys, ks)}


def _row(r: dict) -> dict:
    return {f"{short}_{k}": r[key][k] for key, short in (("image_to_text", "i2t"), ("text_to_image", "t2i")) for k in ("R@1", "R@5", "R@10")}


def _lines(r: dict) -> list[str]:
    lines = [f"{'retrieval':<16}{r['positives'] + ' protocol':<22}{'R@1':>7}{'R@5':>7}{'R@10':>7}   ({r['n_images']:,} images, {r['n_texts']:,} texts)"]
    for key, name in (("image_to_text", "image->text"), ("text_to_image", "text->image")):
        for src, label in ((r, "latent"), (r.get("embedding_reference"), "embedding")):
            if src:
                v = src[key]
                lines.append(f"{'':<16}{name + ' ' + label:<22}{fmt(v['R@1'], '.3f'):>7}{fmt(v['R@5'], '.3f'):>7}{fmt(v['R@10'], '.3f'):>7}")
    return lines


def _table(r: dict) -> list[TableRow]:
    ref, chance = r.get("embedding_reference") or {}, r.get("chance") or {}
    return [TableRow("retrieval", f"{name} R@{k}", r[key][f"R@{k}"], (ref.get(key) or {}).get(f"R@{k}"),
                     (chance.get(key) or {}).get(f"R@{k}"), "chance")
            for key, name in (("image_to_text", "image→text"), ("text_to_image", "text→image")) for k in DEFAULT_KS]


#: ``retrieval``: latent cross-modal Recall@1/5/10 both ways, and the same protocol on the raw embeddings.
TASK = Task("retrieval", _task,
            tuple((f"{s}_R@{k}", f"{a} R@{k} ↑", True) for s, a in (("i2t", "I→T"), ("t2i", "T→I")) for k in (1, 5, 10)),
            _row, _lines, _table)


__all__ = ["TASK",
    "POSITIVES", "RetrievalProtocol", "auto_positives", "build_protocol", "chance_recall", "cross_modal_retrieval",
    "embedding_retrieval", "first_positive_ranks", "normalize_codes", "recall_summary",
    "retrieval_from_codes", "sparse_scores",
]
