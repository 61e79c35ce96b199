"""``build_report``: a model + a store -> a static site (index.html + data/*.js + img/) that opens from
``file://`` with no server.

The data travels as JavaScript files beside ``index.html`` that assign to one global
(``window.DUALSAE``): Chromium blocks ``fetch`` of ``file://`` URLs, but not ``<script src>``. The
page loads ``data/summary.js`` and ``data/latents.js`` (one number per latent and column, so a
16,384-latent table is one small file) at start, and a latent's page data (``data/chunk-NNNN.js``,
256 latents each, with the captions and thumbnail paths of the rows they show) and the search index
(``data/search.js``) only when needed. The page builds its DOM with ``textContent``; no data string
ever reaches ``innerHTML``.

Reads runs and metrics, never trains. The store is encoded once per modality.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualsae.store.paired import PairedEmbeddings
from dualsae.files.faults import fault_point
from dualsae.files.outdir import check_output, claim_output, commit_output, read_manifest
from dualsae.files.lock import file_lock_name, output_lock
from dualsae.models.pair import SAEPair
from dualsae.report import latents as L
from dualsae.report.probe import Prober
from dualsae.report.thumbs import ThumbCopier
from dualsae.models.aligned import AlignedPair
from dualsae.evaluation.tasks import METRICS_FORMAT
from dualsae.files.jsonfiles import read_json_object
from dualsae.alignment.post_hoc import CoactivationStats
from dualsae.core.codes import SparseCodes
from dualsae.models.load import load_model
from dualsae.evaluation.metrics.reconstruction import reconstruction_metrics
from dualsae.evaluation.heterogeneity import heterogeneity as het_fn, heterogeneity_from_folder
from dualsae.evaluation.heterogeneity import plot_heterogeneity
from dualsae.alignment.post_hoc import align
import ctypes
import ctypes.util

REPORT_FORMAT = "dualsae.report/1"
CHUNK = 256
ASSETS = ("index.html", "report.css", "report.js")
CORR_HIST_EDGES = [round(-1.0 + 0.1 * i, 1) for i in range(21)]


@dataclass
class ReportOptions:
    """top: rows per latent and modality shown as thumbnails; captions: rows whose captions are collapsed
    (with counts) per latent and modality; nearest: nearest latents by decoder cosine; probe_latents:
    how many latents get translation/steering (the best-correlated ones) unless ``probe`` names them;
    alpha: steering strength relative to the mean image embedding norm; max_correlation_bytes: the
    largest [m, m] float64 correlation the report computes itself (for Fig. 2 / the collapse rate);
    search_words / search_latents: the most frequent caption words indexed, and latents kept per word."""

    top: int = 12
    captions: int = 40
    nearest: int = 8
    probe_latents: int = 6
    probe: tuple[int, ...] = ()
    alpha: float = 1.0
    caption_field: str = "caption"
    images: Path | None = None
    eval_file: Path | None = None
    batch_size: int = 4096
    device: str = "cpu"
    progress: bool = False
    max_correlation_bytes: int = 2_200_000_000
    search_words: int = 50_000
    search_latents: int = 30
    extra: dict = field(default_factory=dict)


def _kind(pair: SAEPair) -> str:

    if isinstance(pair, AlignedPair):
        return "aligned"
    return "shared" if pair.shared else "specific"


def _js(path: Path, name: str, obj: Any) -> None:
    """Write ``obj`` as ``DUALSAE.<name> = {...};`` (JSON is a JS expression; NaN/inf become null)."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    # U+2028/2029 are legal in JSON but ended JS string literals before ES2019: escape them anyway.
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    path.write_text(f"window.DUALSAE=window.DUALSAE||{{}};DUALSAE.{name}={text};\n", encoding="utf-8")


def _num(x: Any, digits: int = 4) -> float | None:
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def _col(a: np.ndarray, digits: int = 4) -> list:
    return [_num(v, digits) for v in np.asarray(a, dtype=np.float64)]


def _read_jsonl(path: Path, limit: int = 100_000) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines()[:limit]:
            try:
                obj = json.loads(line)
            except ValueError:
                continue  # a line cut by an interrupted run: the curve is still worth showing
            if isinstance(obj, dict):
                rows.append(obj)
    return rows


def _run_folder(model: Path, pair: SAEPair) -> Path | None:
    """The training run behind a model folder: itself, or the ``source_run`` an aligned folder records."""
    if (model / "metrics.jsonl").is_file() or (model / "config.json").is_file():
        return model
    src = getattr(pair, "alignment", {}).get("source_run")
    if isinstance(src, str):
        for cand in (Path(src), model.parent / Path(src).name):
            if cand.is_dir():
                return cand
    return None


def training_curve(run: Path | None, max_points: int = 400) -> dict | None:
    """Numeric series of ``metrics.jsonl`` against ``step``, thinned to at most ``max_points`` rows."""
    rows = _read_jsonl(run / "metrics.jsonl") if run is not None else []
    rows = [r for r in rows if isinstance(r.get("step"), (int, float))]
    if not rows:
        return None
    keep = rows[:: max(1, math.ceil(len(rows) / max_points))]
    if keep[-1] is not rows[-1]:
        keep.append(rows[-1])
    keys = [k for k in rows[0] if k != "step" and isinstance(rows[0][k], (int, float)) and not isinstance(rows[0][k], bool)]
    return {"step": [r["step"] for r in keep],
            "series": {k: [_num(r[k], 6) if isinstance(r.get(k), (int, float)) else None for r in keep] for k in keys}}


def _eval_doc(model: Path, eval_file: Path | None) -> dict | None:

    if eval_file is not None:
        return read_json_object(eval_file, "expected metrics.json written by 'dualsae eval'")
    for cand in (model / "metrics.json", model / "eval" / "metrics.json"):
        try:
            doc = json.loads(cand.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("format") == METRICS_FORMAT:
            return doc
    return None


def _flatten(obj: Any, prefix: str = "", out: list | None = None, depth: int = 0) -> list:
    """[[path, value]] of the scalar leaves of a nested dict (eval table rows); long lists are skipped."""
    out = [] if out is None else out
    if isinstance(obj, dict) and depth < 5:
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, depth + 1)
    elif isinstance(obj, bool) or obj is None:
        pass
    elif isinstance(obj, (int, float)):
        out.append([prefix, _num(obj, 6)])
    elif isinstance(obj, str) and len(obj) < 200:
        out.append([prefix, obj])
    return out


def _stats_from_codes(image: L.ModalityCodes, text: L.ModalityCodes, batch: int = 4096):
    """eq. 5's streaming statistics from the codes already computed (no second encoding pass)."""

    stats = CoactivationStats(image.m, text.m)
    for s in range(0, image.n, batch):
        stats.update(SparseCodes(torch.from_numpy(image.values[s : s + batch]), torch.from_numpy(image.indices[s : s + batch]), image.m),
                     SparseCodes(torch.from_numpy(text.values[s : s + batch]), torch.from_numpy(text.indices[s : s + batch]), text.m))
    return stats


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system cannot."""

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the finished ``tmp`` folder. Where the kernel can exchange the two in one
    step a reader never finds ``out`` missing; elsewhere the old report is moved aside first, and a
    kill between the two renames is repaired by the next run (:func:`_recover`)."""
    if not out.exists():
        os.replace(tmp, out)
    elif _exchange(tmp, out):
        fault_point("report-swap", str(out))  # tmp now holds the old report
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        fault_point("report-swap", str(out))
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)


def check_out(out: Path, job: dict, overwrite: bool = False) -> None:
    """``out`` must be new, empty, or this report's own folder (same model, rows and split: a rerun
    replaces it); anything else is refused unless ``overwrite`` (:func:`dualsae.files.outdir.check_output`).
    A report from before manifests (``data/summary.js``, no manifest) counts as this report's."""
    legacy = out.is_dir() and read_manifest(out) is None and (out / "data" / "summary.js").is_file()
    check_output(out, "report", job, overwrite=overwrite, keep=[p.name for p in out.iterdir()] if legacy else ())


def report_lock(out: Path):
    """The report's lock: ``.NAME.lock`` beside ``out`` (not inside it: the folder is swapped whole)."""
    return output_lock(out.parent, "this report", name=file_lock_name(out))


def build_report(model: str | Path, store: PairedEmbeddings, out: str | Path, *, rows: PairedEmbeddings | None = None,
                 test: PairedEmbeddings | None = None, options: ReportOptions | None = None, data_label: str = "",
                 split_label: str = "all", overwrite: bool = False) -> dict:
    """Write the report of ``model`` on ``rows`` (default: every row of ``store``) into ``out``.

    test: rows for the explained variance (the test split); None skips it. Returns a summary dict
    (counts, timings, warnings) that the CLI prints.
    """
    opt = options or ReportOptions()
    model, out = Path(model), Path(out)
    job = {"model": str(model.resolve()), "data": str(Path(store.root).resolve()) if store.root is not None else data_label,
           "split": split_label}
    check_out(out, job, overwrite)  # before the lock file is created beside someone's folder
    with report_lock(out):  # a second report into the same --out fails at once, naming this pid
        _recover(out)
        check_out(out, job, overwrite)
        return _build(model, store, out, rows, test, opt, data_label, split_label, job)


def _recover(out: Path) -> None:
    """Clean up after a report killed mid-way (call holding the lock): a kill inside :func:`_swap_in`,
    between moving the old report aside and moving the new one in, leaves no ``out``; the old report
    is put back. Unfinished sibling folders are deleted."""
    old = sorted(out.parent.glob(f".{out.name}.old-*"))
    if old and not out.exists():
        os.replace(old.pop(), out)
    for stale in old + sorted(out.parent.glob(f".{out.name}.tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)


def _build(model: Path, store: PairedEmbeddings, out: Path, rows: PairedEmbeddings | None, test: PairedEmbeddings | None,
           opt: ReportOptions, data_label: str, split_label: str, job: dict) -> dict:
    """:func:`build_report`'s work, under the lock: compute, write a fresh sibling folder (manifest
    unfinished first, complete with every file's hash last), then swap it in."""

    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    pair = load_model(model, device=opt.device)
    kind = _kind(pair)
    rows = rows if rows is not None else store
    rows.require_pairs("the report (both modalities side by side)")
    rows.require_model_width(pair)
    m = pair.m
    warnings: list[str] = []
    if kind == "specific":
        warnings.append("This is a specific pair before alignment: image latent j and text latent j are unrelated "
                        "until 'dualsae align' matches them; the side-by-side columns show two different features.")

    codes = {mod: L.encode_store(pair, rows, mod, opt.batch_size, opt.device, opt.progress) for mod in ("image", "text")}
    st = {mod: L.latent_stats(codes[mod], max(opt.top, opt.captions)) for mod in codes}
    support, same_corr = L.same_index_pairs(codes["image"], codes["text"])
    cos = L.decoder_cosines(pair)
    timing["encode_s"] = time.perf_counter() - t0

    # --------------------------------------------------------------- matches and confidence
    alignment = getattr(pair, "alignment", None) or {}
    matched_corr = np.full(m, np.nan)
    null_thr = np.full(m, np.nan)
    status = np.array(["dead"] * m, dtype=object)
    live_i, live_t = st["image"].fired > 0, st["text"].fired > 0
    status[live_i & live_t] = "both"
    status[live_i & ~live_t] = "image only"
    status[~live_i & live_t] = "text only"
    corr_source = "same-index correlation on these rows"
    support_source = "co-firing rows of these rows"
    modality_only = None
    if kind == "aligned" and "matched" in alignment:
        mt = alignment["matched"]
        idx = np.asarray(mt["image"], dtype=np.int64)
        matched_corr[idx] = np.asarray(mt["correlation"], dtype=np.float64)
        status[:] = "unmatched"
        status[idx] = "matched"
        un = alignment.get("unmatched", {})
        image_only, text_only = un.get("image_only", []), un.get("text_only_shared", [])
        status[np.asarray(image_only, dtype=np.int64)] = "image only"
        status[np.asarray(text_only, dtype=np.int64)] = "text only"
        modality_only = {"image": list(image_only), "text": list(text_only)}
        corr_source = f"matched correlation c_ij from alignment.json ({alignment.get('rows', '?')} rows, split {alignment.get('split', '?')})"
        # Match confidence, when the alignment recorded it (per match, parallel to matched.image).
        if isinstance(mt.get("support"), list) and len(mt["support"]) == len(idx):
            support = support.copy()
            support[idx] = np.asarray(mt["support"], dtype=np.int64)
            support_source = "co-firing support from alignment.json"
        if isinstance(mt.get("null_threshold"), list) and len(mt["null_threshold"]) == len(idx):
            null_thr[idx] = np.asarray([np.nan if v is None else v for v in mt["null_threshold"]], dtype=np.float64)
    corr = matched_corr if kind == "aligned" else same_corr

    # --------------------------------------------------------------- Fig. 2 and the collapse rate
    t1 = time.perf_counter()
    heterogeneity, collapse, stats = None, None, None
    het_note = ""
    need_c = kind != "aligned" or not (model / "correlation.safetensors").is_file()
    big = pair.sae_for("image").m * pair.sae_for("text").m * 8
    if need_c and big > opt.max_correlation_bytes:
        het_note = (f"not computed: the {pair.sae_for('image').m:,} x {pair.sae_for('text').m:,} correlation needs "
                    f"{big / 1e9:.1f} GB (limit {opt.max_correlation_bytes / 1e9:.1f} GB)")
    elif need_c:
        stats = _stats_from_codes(codes["image"], codes["text"])
    if kind == "shared":
        path = model / "collapse.json"
        if path.is_file():
            collapse = json.loads(path.read_text())
            collapse["source"] = str(path)
        elif stats is not None:

            collapse = align(pair, stats=stats, progress=False).report
            collapse["source"] = f"computed on the {rows.n:,} report rows"
        if collapse is not None:
            mcorr = np.asarray(collapse.get("matching", {}).get("correlation", []), dtype=np.float64)
            collapse = {k: collapse.get(k) for k in ("collapse_rate", "collapse_rate_of_matched", "collapsed", "matched",
                                                      "live", "mean_matched_correlation", "source", "rows")}
            collapse["matched_correlation"] = mcorr
    het_png = None
    if stats is not None or not need_c:

        if not need_c:
            result, source = heterogeneity_from_folder(model, None, progress=False)
        else:
            c, li, lt = stats.correlation()
            matched = None
            if kind == "aligned":
                shared_idx = np.flatnonzero(~np.isnan(matched_corr))
                matched = (shared_idx, shared_idx)
            result = het_fn(pair.decoder_columns("image").cpu(), pair.decoder_columns("text").cpu(), c, li, lt, matched=matched)
            source = f"C computed on the {rows.n:,} report rows"
        heterogeneity = {**result.to_json(), "source": source}
        het_png = result
    timing["correlation_s"] = time.perf_counter() - t1

    # --------------------------------------------------------------- write into a fresh folder
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    claim_output(tmp, "report", job)
    (tmp / "data").mkdir()
    try:
        summary = _write_site(tmp, model, pair, kind, store, rows, test, opt, codes, st, support, corr, same_corr,
                              null_thr, cos, status, modality_only, collapse, heterogeneity, het_png, het_note,
                              warnings, corr_source, support_source, alignment, data_label, split_label, timing)
        commit_output(tmp)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary["timing"] = {k: round(v, 2) for k, v in {**timing, "total_s": time.perf_counter() - t0}.items()}
    summary["out"] = str(out)
    return summary


def _hist(values: np.ndarray, edges: list[float]) -> list[int]:
    v = values[np.isfinite(values)]
    return np.histogram(np.clip(v, edges[0], edges[-1]), bins=edges)[0].tolist()


def _write_site(tmp, model, pair, kind, store, rows, test, opt, codes, st, support, corr, same_corr, null_thr, cos,
                status, modality_only, collapse, heterogeneity, het_png, het_note, warnings, corr_source,
                support_source, alignment, data_label, split_label, timing) -> dict:

    t = time.perf_counter()
    m = pair.m
    for name in ASSETS:
        (tmp / name).write_bytes(resources.files("dualsae.report").joinpath("assets", name).read_bytes())
    abs_rows = rows.rows_of(np.arange(rows.n))
    meta_all = store.meta
    cap_field = opt.caption_field

    def meta_of(pos: int) -> dict:
        return meta_all[int(abs_rows[pos])] if meta_all is not None else {}

    captions = [meta_of(p).get(cap_field) for p in range(rows.n)]
    copier = ThumbCopier(tmp, rows.root, opt.images)

    # --------------------------------------------------------------- table columns
    label = []
    for j in range(m):
        src = st["text"].top_rows[j] if len(st["text"].top_rows[j]) else st["image"].top_rows[j]
        caps = [captions[p] for p in src[: opt.captions]]
        best = L.collapse_captions(caps, np.zeros(len(caps)), len(caps))
        best.sort(key=lambda r: -r[1])  # most repeated caption among the top rows; first seen on ties
        label.append(best[0][0] if best else "")
    table = {
        "m": m,
        "n_rows": rows.n,
        "corr": _col(corr), "support": support.tolist(),
        "freq_image": _col(st["image"].freq, 6), "freq_text": _col(st["text"].freq, 6),
        "cos": _col(cos), "mean_image": _col(st["image"].mean_active), "mean_text": _col(st["text"].mean_active),
        "status": status.tolist(), "label": label,
    }
    if np.isfinite(null_thr).any():
        table["null_threshold"] = _col(null_thr)
    _js(tmp / "data" / "latents.js", "latents", table)

    # --------------------------------------------------------------- probes (translation / steering)
    probes: dict[int, dict] = {}
    if kind != "specific" and opt.probe_latents + len(opt.probe) > 0:
        chosen = [int(j) for j in opt.probe if 0 <= int(j) < m]
        if not opt.probe:
            ok = np.flatnonzero(np.isfinite(corr) & (st["image"].fired > 0) & (st["text"].fired > 0))
            chosen = ok[np.argsort(-corr[ok], kind="stable")][: opt.probe_latents].tolist()
        prober = Prober(pair, rows, codes["image"].matrix(), alpha=opt.alpha)
        for j in chosen:
            tops = st["text"].top_rows[j]
            probes[j] = prober.probe(j, int(tops[0]) if len(tops) else None)
    timing["probe_s"] = time.perf_counter() - t

    # --------------------------------------------------------------- latent pages, in chunks
    near = {"image": L.nearest_latents(pair.decoder_columns("image"), opt.nearest)}
    near["text"] = near["image"] if pair.shared else L.nearest_latents(pair.decoder_columns("text"), opt.nearest)
    for c0 in range(0, m, CHUNK):
        chunk_rows: dict[str, list] = {}

        def ref(pos: int) -> int:
            r = int(abs_rows[pos])
            if str(r) not in chunk_rows:
                meta = meta_of(pos)
                ident = meta.get("id")
                chunk_rows[str(r)] = [captions[pos] if isinstance(captions[pos], str) else None,
                                      None if ident is None else str(ident), copier.src(r, meta)]
            return r

        lat: dict[str, dict] = {}
        for j in range(c0, min(c0 + CHUNK, m)):
            entry: dict[str, Any] = {}
            for mod in ("image", "text"):
                s = st[mod]
                tr, tv = s.top_rows[j], s.top_values[j]
                entry[mod] = {
                    "top": [[ref(p), _num(v)] for p, v in zip(tr[: opt.top].tolist(), tv[: opt.top].tolist())],
                    "captions": L.collapse_captions([captions[p] for p in tr[: opt.captions]], tv[: opt.captions], opt.captions),
                    "hist": s.hist[j].tolist(), "max": _num(s.max[j]), "fired": int(s.fired[j]),
                }
                idx, cs = near[mod]
                entry[f"near_{mod}"] = [[int(a), _num(b)] for a, b in zip(idx[j].tolist(), cs[j].tolist())]
            entry["same_corr"] = _num(same_corr[j])
            if j in probes:
                p = probes[j]
                for key in ("translate", "steer"):
                    if key not in p:
                        continue
                    blk = p[key]
                    if key == "translate":
                        blk["query"] = ref(blk["query"])
                        blk["raw"] = [ref(x) for x in blk["raw"]]
                        blk["translated"] = [ref(x) for x in blk["translated"]]
                    else:
                        for ex in blk["examples"]:
                            ex["source"] = ref(ex["source"])
                            ex["before"] = [ref(x) for x in ex["before"]]
                            ex["after"] = [ref(x) for x in ex["after"]]
                entry["probe"] = p
            lat[str(j)] = entry
        (tmp / "data" / f"chunk-{c0 // CHUNK:04d}.js").write_text(
            "window.DUALSAE=window.DUALSAE||{};(DUALSAE.chunks=DUALSAE.chunks||{})[" + str(c0 // CHUNK) + "]="
            + json.dumps({"latents": lat, "rows": chunk_rows}, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + ";\n", encoding="utf-8")
    timing["pages_s"] = time.perf_counter() - t - timing["probe_s"]

    # --------------------------------------------------------------- search index
    t2 = time.perf_counter()
    _js(tmp / "data" / "search.js", "search", L.word_index(captions, codes, per_word=opt.search_latents, max_words=opt.search_words))
    timing["search_s"] = time.perf_counter() - t2

    # --------------------------------------------------------------- overview
    run = _run_folder(model, pair)
    config = None
    if run is not None and (run / "config.json").is_file():
        try:
            config = json.loads((run / "config.json").read_text()).get("train")
        except ValueError:
            config = None
    ev = None
    if test is not None:
        rec = reconstruction_metrics(pair, test, batch_size=opt.batch_size, device=opt.device)
        ev = {mod: {k: _num(rec[mod][k], 5) for k in ("explained_variance", "mse", "mean_l0", "live_latents", "n_rows")}
              for mod in ("image", "text") if mod in rec}
    if het_png is not None:

        (tmp / "img").mkdir(exist_ok=True)
        plot_heterogeneity(het_png, tmp / "img" / "heterogeneity.png", title=f"Heterogeneity (Fig. 2): {model.name}")
    matched_vals = corr[np.isfinite(corr)] if kind == "aligned" else (
        collapse["matched_correlation"] if collapse is not None else np.zeros(0))
    eval_doc = _eval_doc(model, opt.eval_file)
    align_summary = None
    if alignment:
        align_summary = {k: alignment.get(k) for k in ("rows", "split", "solver", "matched_count", "mean_matched_correlation",
                                                         "live", "dead", "data", "source_run") if k in alignment}
    summary = {
        "format": REPORT_FORMAT,
        "title": model.name,
        "kind": kind,
        "method": pair.method,
        "model": str(model),
        "data": data_label or str(rows.root),
        "split": split_label,
        "n_rows": rows.n,
        "m": m,
        "chunk": CHUNK,
        "k": {mod: pair.sae_for(mod).config.k for mod in ("image", "text")},
        "warnings": warnings,
        "config": config,
        "alignment": align_summary,
        "corr_source": corr_source,
        "support_source": support_source,
        "explained_variance": ev,
        "live": {mod: int((st[mod].fired > 0).sum()) for mod in ("image", "text")},
        "dead": {mod: int((st[mod].fired == 0).sum()) for mod in ("image", "text")},
        "corr_hist": {"edges": CORR_HIST_EDGES, "counts": _hist(np.asarray(matched_vals, dtype=np.float64), CORR_HIST_EDGES),
                      "what": "matched pairs" if kind != "specific" else ""},
        "modality_only": modality_only,
        "collapse": None if collapse is None else {k: v for k, v in collapse.items() if k != "matched_correlation"},
        "heterogeneity": heterogeneity,
        "heterogeneity_png": "img/heterogeneity.png" if het_png is not None else None,
        "heterogeneity_note": het_note,
        "curve": training_curve(run),
        "eval": _flatten(eval_doc.get("tasks", eval_doc)) if eval_doc else None,
        "probes": sorted(probes),
        "thumbnails": copier.copied,
        "has_captions": any(isinstance(c, str) for c in captions),
    }
    _js(tmp / "data" / "summary.js", "summary", summary)
    return {"kind": kind, "m": m, "rows": rows.n, "thumbnails": copier.copied, "probes": sorted(probes),
            "warnings": warnings}


__all__ = ["ReportOptions", "build_report", "check_out", "training_curve"]
