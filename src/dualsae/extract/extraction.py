"""Embedding extraction: image and caption embeddings in a dual encoder's joint space.

Any Hugging Face ``transformers`` dual encoder (CLIP, MetaCLIP, OpenCLIP converted to
transformers, SigLIP, SigLIP2, ...) loaded with ``AutoModel`` + ``AutoProcessor`` from a hub id or
a local ``save_pretrained`` folder (``HF_HUB_OFFLINE=1`` works with a folder). Embeddings are the
outputs of ``get_image_features`` / ``get_text_features`` -- the projected vectors the model's
contrastive loss compares (paper Sec. 6.2 trains SAEs on CLIP ViT-B/32 embeddings of CC-3M).

Normalisation: by default every embedding is L2-normalised (in float32, before storage),
because the contrastive models compare them by cosine and CLIP-SAE work trains on unit-norm
embeddings; ``normalize=False`` keeps the raw projections.

Output store (``dualsae.store.paired`` format): ``image.npy`` / ``text.npy`` [N, d], ``meta.jsonl`` (one
row per (image, caption) pair; the image embedding is computed once per image and repeated for
each of its captions), ``extract.json`` (model, source, counts, dims, normalisation, dtypes,
failures). Class-folder sources (zero-shot) instead give ``image.npy`` + ``meta.jsonl`` rows with
``label``/``class_name``, ``classes.json`` {"classes", "templates"} and ``class_text.npy``
float32 [C, T, d] (every class name in every prompt template).

Interruption: records are processed in shards of ``shard_size`` images, each written atomically
to ``OUT/.shards/NNNNN.{image,text}.npy`` + ``NNNNN.meta.jsonl`` and then listed in
``OUT/.shards/progress.json``. A rerun with the same settings starts at the first shard not
listed; when all are done they are assembled into the store and ``.shards`` is removed.
Unreadable images (missing, corrupt) are skipped and listed in ``extract.json``, never fatal.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from dualsae.core.distributed import Distributed
from dualsae.core.errors import ConfigError, DataError
from dualsae.core.progress import tqdm
from dualsae.extract.encoder import DTYPES, DualEncoder
from dualsae.extract.records import Record, Source
from dualsae.extract.shards import (
    SHARDS_DIR,
    ShardDir,
    _assemble_array,
    _assemble_meta,
    embed_shard,
)
from dualsae.files.atomic import write_json, write_npy
from dualsae.files.faults import fault_point

STORE_DTYPES = ("float32", "float16")


# ====================================================================== configuration


@dataclass(frozen=True)
class ExtractConfig:
    """Settings of one extraction.

    batch_size: images (and captions) per forward pass. device: auto|cpu|cuda|cuda:N.
    dtype: compute dtype auto|fp32|fp16|bf16 (auto = fp16 on CUDA, fp32 on CPU).
    store_dtype: float32|float16 of the written arrays. shard_size: images per resumable shard.
    limit: read at most this many images (records) from the source. normalize: L2-normalise.
    workers: threads decoding and preprocessing images (0 = in the main thread).
    """

    batch_size: int = 256
    device: str = "auto"
    dtype: str = "auto"
    store_dtype: str = "float32"
    shard_size: int = 8192
    limit: int | None = None
    normalize: bool = True
    workers: int = 4

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.shard_size < 1:
            raise ConfigError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if self.dtype not in ("auto", *DTYPES):
            raise ConfigError(f"--dtype must be auto, fp32, fp16 or bf16, got '{self.dtype}'")
        if self.store_dtype not in STORE_DTYPES:
            raise ConfigError(f"--store-dtype must be float32 or float16, got '{self.store_dtype}'")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got '{self.device}'")


# ====================================================================== the encoder


# ====================================================================== shards


# ====================================================================== driver


def _settings(model_name: str, source: Source, cfg: ExtractConfig, compute_dtype: str) -> dict:
    """What a resumed run must share with the interrupted one (batch size, device, workers may change)."""
    local = Path(model_name)
    model_key = str(local.resolve()) if local.exists() else model_name  # ./m and /abs/m are one model
    return {"model": model_key, "source": source.describe(), "shard_size": cfg.shard_size, "limit": cfg.limit,
            "normalize": cfg.normalize, "compute_dtype": compute_dtype, "store_dtype": cfg.store_dtype}


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    it = iter(records)
    while chunk := list(islice(it, size)):
        yield chunk


def extract(
    source: Source,
    model: str | DualEncoder,
    out: str | Path,
    config: ExtractConfig = ExtractConfig(),
    on_shard: Callable[[int, dict], None] | None = None,
    progress: bool = True,
    dist: Distributed | None = None,
) -> dict:
    """Embed every record of ``source`` with ``model`` into the store folder ``out``; returns the
    summary also written to ``out/extract.json``.

    ``model`` is a hub id / local folder, or an already loaded :class:`DualEncoder`.
    ``on_shard(index, entry)`` is called after each shard is committed (tests use it to interrupt).
    A rerun after an interruption embeds only the unfinished shards; a rerun of a finished
    extraction with the same settings returns its summary without work.

    Under torchrun (``dist``) rank r embeds shards r, r + world, ... (each rank reads the source
    and skips the others' records without decoding them); rank 0 assembles the store, which is
    byte-identical to a one-process extraction, and returns the summary; the other ranks return
    ``{"rank": r, "shards": [indices they embedded]}`` once every rank's shards are written.
    """

    out = Path(out)
    if isinstance(model, DualEncoder):
        encoder = model
    else:
        encoder = DualEncoder.load(model, config.device, config.dtype, config.normalize)
    if encoder.normalize != config.normalize:
        raise ConfigError(f"extract: the encoder has normalize={encoder.normalize}, the config normalize={config.normalize}")
    settings = _settings(encoder.name, source, config, encoder.dtype)
    summary_path = out / "extract.json"
    if summary_path.is_file() and not (out / SHARDS_DIR).is_dir():
        done = json.loads(summary_path.read_text())
        if done.get("settings") == settings:
            return done
        raise DataError(f"{summary_path}: this folder already holds an extraction with other settings; choose another --out or delete it")
    if not (out / SHARDS_DIR).is_dir() and any((out / f).exists() for f in ("image.npy", "text.npy", "meta.jsonl")):
        raise DataError(f"{out}: already holds a store not written by extract (no extract.json); choose another --out")

    dist = dist if dist is not None else Distributed()
    shards = ShardDir(out, settings)  # every rank checks the settings ...
    dist.barrier()
    shards.start()  # ... before any records them (the same bytes, each write atomic)
    dist.barrier()
    done = shards.done
    total = source.count()
    if total is not None and config.limit is not None:
        total = min(total, config.limit)
    records: Iterable[Record] = iter(source)
    if config.limit is not None:
        records = islice(records, config.limit)
    pool = ThreadPoolExecutor(config.workers, thread_name_prefix="dualsae-img") if config.workers > 0 else None
    bar = tqdm(total=total, initial=shards.records_done, unit="img", desc="extract", file=sys.stderr,
               disable=not (progress and dist.is_main), dynamic_ncols=True)
    n_shards, mine = 0, []
    try:
        for index, chunk in enumerate(_chunks(records, config.shard_size)):
            n_shards = index + 1
            # Finished shards and other ranks' shards: their records are read but never decoded.
            if index in done or index % dist.world != dist.rank:
                continue
            res = embed_shard(encoder, chunk, index * config.shard_size, source.kind, config.batch_size, pool, bar.update)
            entry = shards.add(index, len(chunk), res, config.store_dtype)
            mine.append(index)
            bar.set_postfix(failed=sum(len(s["failures"]) for s in shards.shards))
            if on_shard is not None:
                on_shard(index, entry)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    dist.barrier()  # every rank's shards are written
    if not dist.is_main:  # rank 0 assembles; the others are done (no collective follows)
        return {"rank": dist.rank, "shards": mine}
    shards.reload()
    missing = sorted(set(range(n_shards)) - shards.done)
    if missing:
        raise DataError(f"{shards.dir}: shard(s) {missing[:5]} of {n_shards} were not written; rerun the same command to finish them")
    return _finish(out, shards, source, encoder, config, settings)


def _finish(out: Path, shards: ShardDir, source: Source, encoder: DualEncoder, config: ExtractConfig, settings: dict) -> dict:
    """Assemble the shards into the store, write extract.json, remove ``.shards``."""
    failures = [f for s in shards.shards for f in s["failures"]]
    rows = sum(s["rows"] for s in shards.shards)
    if rows == 0:
        first = failures[0]["error"] if failures else "the source is empty"
        shards.remove()  # nothing to resume: leave no work folder behind
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise DataError(f"{out}: no record could be embedded ({len(failures):,} failures; first: {first})")
    files, dims = [], None
    for part in ("image", "text"):
        if any(s[f"has_{part}"] for s in shards.shards):
            dims = _assemble_array(shards, part, out / f"{part}.npy", config.store_dtype)
            files.append(f"{part}.npy")
    fault_point("extract-assembly", str(out))
    _assemble_meta(shards, out / "meta.jsonl")
    files.append("meta.jsonl")
    if source.kind == "classes":
        classes, templates = source.classes, source.templates
        prompts = [t.format(c) for c in classes for t in templates]
        class_text = encoder.embed_texts_batched(prompts, config.batch_size).reshape(len(classes), len(templates), -1)
        write_npy(out / "class_text.npy", class_text.astype(np.float32))
        write_json(out / "classes.json", {"classes": classes, "templates": templates})
        files += ["class_text.npy", "classes.json"]
    summary = {
        **encoder.info(),
        "source": settings["source"],
        "kind": source.kind,
        "counts": {"records": shards.records_done, "rows": rows, "images_embedded": sum(s["images_embedded"] for s in shards.shards),
                   "texts_embedded": sum(s["texts_embedded"] for s in shards.shards), "failures": len(failures)},
        "dims": dims,
        "normalized": config.normalize,
        "store_dtype": config.store_dtype,
        "config": asdict(config),
        "files": files,
        "source_errors": list(getattr(source, "shard_errors", [])),
        "failures": failures,
        "settings": settings,
    }
    write_json(out / "extract.json", summary)
    shards.remove()
    return summary


def format_summary(summary: dict, out: str | Path, max_failures: int = 5) -> str:
    """A few human-readable lines about a finished extraction."""
    c = summary["counts"]
    lines = [f"extracted {c['rows']:,} rows (dim {summary['dims']}, {summary['store_dtype']}, "
             f"{'L2-normalised' if summary['normalized'] else 'not normalised'}) from {c['records']:,} images "
             f"with {summary['model']} -> {out}",
             f"  images embedded: {c['images_embedded']:,}; captions embedded: {c['texts_embedded']:,}; skipped: {c['failures']:,}"]
    for f in summary["failures"][:max_failures]:
        lines.append(f"  skipped record {f['record']}: {f['error']}")
    if c["failures"] > max_failures:
        lines.append(f"  ... {c['failures'] - max_failures:,} more in {Path(out) / 'extract.json'}")
    for e in summary.get("source_errors", []):
        lines.append(f"  source error: {e}")
    return "\n".join(lines)
