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

import ctypes
import ctypes.util
import json
import os
import shutil
import time
from importlib import resources
from pathlib import Path

from dualsae.core.errors import ConfigError
from dualsae.files.faults import fault_point
from dualsae.files.lock import file_lock_name, output_lock
from dualsae.files.outdir import (
    check_output,
    claim_output,
    commit_output,
    read_manifest,
)
from dualsae.models.load import load_model
from dualsae.report.compute import compute
from dualsae.report.options import ReportOptions
from dualsae.report.overview import (
    REPORT_FORMAT,
    ReportJob,
    training_curve,
    write_summary,
)
from dualsae.report.pages import SiteRows, write_latent_files
from dualsae.store.paired import PairedEmbeddings

ASSETS = ("index.html", "report.css", "dom.js", "views.js", "report.js")


def weights_folder(model: Path) -> Path:
    """The folder to load the SAEs from: ``model`` itself, or for the output folder of ``dualsae align``
    on a shared-SAE run (``collapse.json``, no SAEs) the run it records as ``source_run``, so that the
    report shows align's collapse rate (counted on align's rows) instead of recounting it on its own."""
    if not (model / "collapse.json").is_file() or (model / "config.json").is_file():
        return model
    try:
        src = json.loads((model / "collapse.json").read_text()).get("source_run")
    except (OSError, ValueError, AttributeError):
        src = None
    for cand in ((Path(src), model.parent / Path(src).name) if isinstance(src, str) and src else ()):
        if (cand / "config.json").is_file():
            return cand
    raise ConfigError(f"{model / 'collapse.json'}: field 'source_run' {src!r} is not a run folder from here; "
                      "report the shared run itself (its collapse rate is then counted on the report's rows)")


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
    return output_lock(out.parent, "this report", name=file_lock_name(out), output=out)


def build_report(model: str | Path, store: PairedEmbeddings, out: str | Path, *, rows: PairedEmbeddings | None = None,
                 test: PairedEmbeddings | None = None, train: PairedEmbeddings | None = None, options: ReportOptions | None = None,
                 data_label: str = "", split_label: str = "all", overwrite: bool = False) -> dict:
    """Write the report of ``model`` on ``rows`` (default: every row of ``store``) into ``out``.

    model: an aligned folder, a run or SAE folder, or align's collapse folder of a shared run
    (:func:`weights_folder`). test / train: rows for the reconstruction on the test and the train split,
    side by side (None skips one). Returns a summary dict (counts, timings, warnings) that the CLI prints.
    """
    opt = options or ReportOptions()
    model, out = Path(model), Path(out)
    job = {"model": str(model.resolve()), "data": str(Path(store.root).resolve()) if store.root is not None else data_label,
           "split": split_label}
    check_out(out, job, overwrite)  # before the lock file is created beside someone's folder
    with report_lock(out):  # a second report into the same --out fails at once, naming this pid
        _recover(out)
        check_out(out, job, overwrite)
        return _build(ReportJob(model, store, rows if rows is not None else store, test, data_label, split_label, train), out, opt, job)


def _recover(out: Path) -> None:
    """Clean up after a report killed mid-way (call holding the lock): a kill inside :func:`_swap_in`,
    between moving the old report aside and moving the new one in, leaves no ``out``; the old report
    is put back. Unfinished sibling folders are deleted."""
    old = sorted(out.parent.glob(f".{out.name}.old-*"))
    if old and not out.exists():
        os.replace(old.pop(), out)
    for stale in old + sorted(out.parent.glob(f".{out.name}.tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)


def _build(job: ReportJob, out: Path, opt: ReportOptions, manifest_job: dict) -> dict:
    """:func:`build_report`'s work, under the lock: compute (:mod:`dualsae.report.compute`), write a
    fresh sibling folder (manifest unfinished first, complete with every file's hash last), then swap it in."""
    t0 = time.perf_counter()
    pair = load_model(weights_folder(job.model), device=opt.device)
    m = max(pair.sae_for(mod).m for mod in ("image", "text") if getattr(pair, mod, None) is not None)
    outside = [j for j in opt.probe if not 0 <= j < m]
    if outside:  # dropped silently before: the user asked for pages that would not exist
        raise ConfigError(f"--probe {outside[0]}: not a latent of {job.model} (latents 0 to {m - 1})")
    job.rows.require_pairs("the report (both modalities side by side)")
    job.rows.require_model_width(pair)
    data = compute(job.model, pair, job.rows, opt)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    claim_output(tmp, "report", manifest_job)
    (tmp / "data").mkdir()
    try:
        for name in ASSETS:
            (tmp / name).write_bytes(resources.files("dualsae.report").joinpath("assets", name).read_bytes())
        site = SiteRows.of(tmp, job.store, job.rows, opt)
        probes = write_latent_files(tmp, data, site, opt)
        write_summary(tmp, data, job, probes, site.copier.copied, opt, site.captions)
        commit_output(tmp)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {"kind": data.kind, "m": data.m, "rows": job.rows.n, "thumbnails": site.copier.copied,
               "probes": sorted(probes), "warnings": data.warnings}
    summary["timing"] = {k: round(v, 2) for k, v in {**data.timing, "total_s": time.perf_counter() - t0}.items()}
    summary["out"] = str(out)
    return summary


__all__ = ["REPORT_FORMAT", "ReportOptions", "build_report", "check_out", "report_lock", "training_curve", "weights_folder"]
