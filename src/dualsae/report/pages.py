"""The per-latent files of the report: ``data/latents.js`` (one number per latent and column),
the probes (translation / steering of a few latents, :mod:`dualsae.report.probe`), the latent pages
``data/chunk-NNNN.js`` (top rows, collapsed captions, histograms, nearest latents, probes; with the
captions and thumbnail paths of the rows they show) and the search index ``data/search.js``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dualsae.evaluation.top_rows import collapse_captions
from dualsae.report import latents as L
from dualsae.report.compute import ReportData
from dualsae.report.concepts import Concepts, latent_concepts
from dualsae.report.options import CHUNK, ReportOptions, column, js_text, num, write_js
from dualsae.report.probe import Prober
from dualsae.report.ranking import constant_columns
from dualsae.report.thumbs import ThumbCopier
from dualsae.store.paired import PairedEmbeddings
from dualsae.use.steering_sweep import sweep_panel


@dataclass
class SiteRows:
    """The report's rows as the pages show them: captions [N] (None where missing), the absolute
    store row of each position, its meta row, and the thumbnail copier."""

    rows: PairedEmbeddings
    captions: list[Any]
    abs_rows: np.ndarray
    meta_of: Callable[[int], dict]
    copier: ThumbCopier

    @classmethod
    def of(cls, tmp: Path, store: PairedEmbeddings, rows: PairedEmbeddings, opt: ReportOptions) -> "SiteRows":
        abs_rows = rows.rows_of(np.arange(rows.n))
        meta_all = store.meta

        def meta_of(pos: int) -> dict:
            return meta_all[int(abs_rows[pos])] if meta_all is not None else {}

        captions = [meta_of(p).get(opt.caption_field) for p in range(rows.n)]
        return cls(rows, captions, abs_rows, meta_of, ThumbCopier(tmp, rows.root, opt.images))


def caption_groups(captions: list[Any], values: np.ndarray, limit: int) -> list[list]:
    """``[caption, count, best value]`` of identical captions (a missing one counts as ""), first seen first."""
    caps = [c if isinstance(c, str) else "" for c in captions]
    return [[g.caption, g.count, round(float(values[g.first]), 4)] for g in collapse_captions(caps, limit)]


def write_table(tmp: Path, d: ReportData, site: SiteRows, opt: ReportOptions, concepts: Concepts) -> None:
    """``data/latents.js``: one entry per latent and column. ``label`` is the caption repeated most
    among the latent's top rows (text rows, else image rows; first seen on ties); ``label_image`` /
    ``label_text`` / ``agreement`` the caption-word labels and concept agreement (:mod:`dualsae.report.concepts`);
    ``score`` / ``flags`` the support-aware score and flags (:mod:`dualsae.report.ranking`). Numeric
    columns constant over the run are left out and listed under ``constant``."""
    st = d.stats
    label = []
    for j in range(d.m):
        src = st["text"].top_rows[j] if len(st["text"].top_rows[j]) else st["image"].top_rows[j]
        best = caption_groups([site.captions[p] for p in src[: opt.captions]], np.zeros(len(src[: opt.captions])), opt.captions)
        best.sort(key=lambda r: -r[1])  # most repeated caption among the top rows; first seen on ties
        label.append(best[0][0] if best else "")
    constant = constant_columns({"cos": d.cos})
    table = {
        "m": d.m,
        "n_rows": site.rows.n,
        "score": column(d.score), "corr": column(d.corr), "support": d.support.tolist(), "flags": d.flags,
        "freq_image": column(st["image"].freq, 6), "freq_text": column(st["text"].freq, 6),
        "cos": column(d.cos), "mean_image": column(st["image"].mean_active), "mean_text": column(st["text"].mean_active),
        "status": d.status.tolist(), "label": label,
        "label_image": concepts.label_text("image"), "label_text": concepts.label_text("text"),
        "agreement": column(concepts.agreement, 3),
        "low_support": opt.low_support,
        "constant": {k: num(v) for k, v in constant.items()},
    }
    for k in constant:
        del table[k]
    if np.isfinite(d.null_thr).any():
        table["null_threshold"] = column(d.null_thr)
    if opt.counterparts is not None:
        table.update(opt.counterparts.columns(d.m))
    write_js(tmp / "data" / "latents.js", "latents", table)


def run_probes(d: ReportData, rows: PairedEmbeddings, opt: ReportOptions) -> dict[int, dict]:
    """Translation / steering of ``opt.probe`` or of the ``opt.probe_latents`` live latents of highest
    support-aware score (:func:`dualsae.report.ranking.support_score`: a pair matched on a few rows is never chosen first)."""
    if d.kind == "specific" or opt.probe_latents + len(opt.probe) == 0:
        return {}
    st, score = d.stats, d.score
    chosen = [int(j) for j in opt.probe if 0 <= int(j) < d.m]
    if not opt.probe:
        ok = np.flatnonzero(np.isfinite(score) & (st["image"].fired > 0) & (st["text"].fired > 0))
        chosen = ok[np.argsort(-score[ok], kind="stable")][: opt.probe_latents].tolist()
    prober = Prober(d.pair, rows, d.codes["image"], alpha=opt.alpha)
    probes = {}
    for j in chosen:
        tops = st["text"].top_rows[j]
        probes[j] = prober.probe(j, int(tops[0]) if len(tops) else None)
        # The alpha sweep and the auto alpha of dualsae steer (dualsae.use.steering_sweep), on the report's rows.
        probes[j]["sweep"] = sweep_panel(d.pair, rows, j, d.codes["image"], scale=prober.scale, fired_other=int(st["text"].fired[j]))
    return probes


def write_pages(tmp: Path, d: ReportData, site: SiteRows, probes: dict[int, dict], opt: ReportOptions) -> None:
    """``data/chunk-NNNN.js``: the pages of ``CHUNK`` latents each, with the rows they show."""
    pair = d.pair
    near = {"image": L.nearest_latents(pair.decoder_columns("image"), opt.nearest)}
    near["text"] = near["image"] if pair.shared else L.nearest_latents(pair.decoder_columns("text"), opt.nearest)
    captions = site.captions
    for c0 in range(0, d.m, CHUNK):
        chunk_rows: dict[str, list] = {}

        def ref(pos: int) -> int:
            r = int(site.abs_rows[pos])
            if str(r) not in chunk_rows:
                meta = site.meta_of(pos)
                ident = meta.get("id")
                chunk_rows[str(r)] = [captions[pos] if isinstance(captions[pos], str) else None,
                                      None if ident is None else str(ident), site.copier.src(r, meta)]
            return r

        lat: dict[str, dict] = {}
        for j in range(c0, min(c0 + CHUNK, d.m)):
            entry: dict[str, Any] = {}
            for mod in ("image", "text"):
                s = d.stats[mod]
                tr, tv = s.top_rows[j], s.top_values[j]
                entry[mod] = {
                    "top": [[ref(p), num(v)] for p, v in zip(tr[: opt.top].tolist(), tv[: opt.top].tolist())],
                    "captions": caption_groups([captions[p] for p in tr[: opt.captions]], tv[: opt.captions], opt.captions),
                    "hist": s.hist[j].tolist(), "max": num(s.max[j]), "fired": int(s.fired[j]),
                    "intervals": [[num(lo), num(hi), [[ref(int(p)), num(v)] for p, v in zip(rows_.tolist(), vals.tolist())]]
                                  for lo, hi, rows_, vals in d.intervals[mod].of(j)] if d.intervals else [],
                }
                idx, cs = near[mod]
                entry[f"near_{mod}"] = [[int(a), num(b)] for a, b in zip(idx[j].tolist(), cs[j].tolist())]
            entry["same_corr"] = num(d.same_corr[j])
            if j in probes:
                entry["probe"] = _probe_rows(probes[j], ref)
            lat[str(j)] = entry
        (tmp / "data" / f"chunk-{c0 // CHUNK:04d}.js").write_text(
            "window.DUALSAE=window.DUALSAE||{};(DUALSAE.chunks=DUALSAE.chunks||{})[" + str(c0 // CHUNK) + "]="
            + js_text({"latents": lat, "rows": chunk_rows}) + ";\n", encoding="utf-8")


def _probe_rows(p: dict, ref: Callable[[int], int]) -> dict:
    """A probe with its report positions replaced by absolute rows (registered with the chunk)."""
    if "translate" in p:
        blk = p["translate"]
        blk["query"] = ref(blk["query"])
        blk["raw"] = [ref(x) for x in blk["raw"]]
        blk["translated"] = [ref(x) for x in blk["translated"]]
    if "steer" in p:
        for ex in p["steer"]["examples"]:
            ex["source"] = ref(ex["source"])
            ex["before"] = [ref(x) for x in ex["before"]]
            ex["after"] = [ref(x) for x in ex["after"]]
    return p


def write_search(tmp: Path, d: ReportData, site: SiteRows, opt: ReportOptions) -> None:
    """``data/search.js``: caption word -> latents (:func:`dualsae.report.latents.word_index`)."""
    write_js(tmp / "data" / "search.js", "search",
             L.word_index(site.captions, d.codes, per_word=opt.search_latents, max_words=opt.search_words))


def write_latent_files(tmp: Path, d: ReportData, site: SiteRows, opt: ReportOptions) -> dict[int, dict]:
    """Table, probes, pages and search index; returns the probes (latent -> probe)."""
    t = time.perf_counter()
    concepts = latent_concepts(d, site.captions, opt)
    d.timing["labels_s"] = time.perf_counter() - t
    t = time.perf_counter()
    write_table(tmp, d, site, opt, concepts)
    probes = run_probes(d, site.rows, opt)
    d.timing["probe_s"] = time.perf_counter() - t
    write_pages(tmp, d, site, probes, opt)
    d.timing["pages_s"] = time.perf_counter() - t - d.timing["probe_s"]
    t2 = time.perf_counter()
    write_search(tmp, d, site, opt)
    d.timing["search_s"] = time.perf_counter() - t2
    return probes


__all__ = ["SiteRows", "caption_groups", "run_probes", "write_latent_files", "write_pages", "write_search", "write_table"]
