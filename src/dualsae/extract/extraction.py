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

import inspect
import json
import shutil
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from dualsae.files.atomic import atomic_path, write_json, write_npy, write_text
from dualsae.core.distributed import Distributed, resolve_device
from dualsae.core.errors import ConfigError, DataError
from dualsae.files.faults import fault_point
from dualsae.extract.sources import ImageLoadError, Record, Source, describe_ref, load_image
from dualsae.core.progress import tqdm

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STORE_DTYPES = ("float32", "float16")
SHARDS_DIR = ".shards"


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


def _looks_local(model_id: str) -> bool:
    """A path, not a hub id ('org/name'): starts with / . ~, ends with /, or has more than one /."""
    return model_id.startswith(("/", ".", "~")) or model_id.endswith("/") or model_id.count("/") > 1


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """auto -> fp16 on CUDA (the encoders are trained in mixed precision), fp32 on CPU."""
    if dtype == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return dtype


# ====================================================================== the encoder


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _accepted_kwargs(fn: Callable, inputs: dict) -> dict:
    """Keep the inputs ``fn`` names as parameters (tokenizers may add e.g. ``token_type_ids``)."""
    params = inspect.signature(fn).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return {k: v for k, v in inputs.items() if k in names}


def _as_embeddings(out: Any, modality: str, model_name: str) -> torch.Tensor:
    """[b, d] from ``get_*_features``: a tensor (transformers 4.x) or an output object whose
    ``pooler_output`` holds the projected embedding (transformers 5.x, e.g. CLIP, SigLIP)."""
    if isinstance(out, torch.Tensor):
        return out
    for name in (f"{modality}_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise ConfigError(f"{model_name}: get_{modality}_features returned {type(out).__name__} without "
                      f"'{modality}_embeds' or 'pooler_output'; expected a tensor [batch, d]")


class DualEncoder:
    """A transformers dual encoder with its processor; embeds PIL images and captions.

    All ``embed_*`` methods return float32 numpy arrays [b, d], L2-normalised when ``normalize``.
    """

    def __init__(self, model: Any, image_processor: Any, tokenizer: Any, name: str,
                 device: torch.device, dtype: str = "fp32", normalize: bool = True, text_padding: str | None = None):
        self.model, self.image_processor, self.tokenizer = model, image_processor, tokenizer
        self.name, self.device, self.dtype, self.normalize = name, device, dtype, normalize
        self.torch_dtype = DTYPES[dtype]
        self.text_padding, self.text_max_length = self._text_settings(text_padding)

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, model_id: str, device: str = "auto", dtype: str = "auto", normalize: bool = True) -> "DualEncoder":
        """Load ``AutoModel`` + ``AutoProcessor`` from a hub id or a local folder."""
        from transformers import AutoModel

        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        path = Path(model_id)
        if not path.exists() and _looks_local(model_id):
            raise DataError(f"{path}: no such model folder; expected a local transformers model folder (save_pretrained) or a hub id 'org/name'")
        if path.exists() and not (path / "config.json").is_file():
            raise DataError(f"{path}: has no config.json; expected a transformers model folder (the output of save_pretrained)")
        try:
            model = AutoModel.from_pretrained(model_id, dtype=DTYPES[dt])
        except Exception as e:  # noqa: BLE001 - truncated weights raise safetensors/torch errors of many types
            raise ConfigError(f"cannot load model '{model_id}' with AutoModel: {_first_line(e)}") from None
        for fn in ("get_image_features", "get_text_features"):
            if not callable(getattr(model, fn, None)):
                raise ConfigError(f"{model_id}: {type(model).__name__} has no {fn}; expected a dual encoder "
                                  f"(CLIP, MetaCLIP, SigLIP, SigLIP2, ...) with get_image_features and get_text_features")
        image_processor, tokenizer, padding = _load_processors(model_id)
        model.to(dev).eval()
        return cls(model, image_processor, tokenizer, model_id, dev, dt, normalize, padding)

    def _text_settings(self, padding: str | None) -> tuple[str, int | None]:
        """Padding and truncation length for captions.

        SigLIP-family text towers pool the *last* position and were trained on captions padded to
        the full length, so their processors require ``padding="max_length"``; CLIP-style towers
        pool the EOS token and take the attention mask, so padding to the longest caption in the
        batch gives the same embeddings faster. Captions are truncated to the position-embedding
        count of the text tower (77 for CLIP, 64 for SigLIP). ``padding`` (e.g. from the
        processor's own defaults) overrides the rule."""
        cfg = self.model.config
        text_cfg = getattr(cfg, "text_config", None) or cfg
        limits = [getattr(text_cfg, "max_position_embeddings", None), getattr(self.tokenizer, "model_max_length", None)]
        limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
        max_length = min(limits) if limits else None
        if padding is None:
            padding = "max_length" if "siglip" in str(getattr(cfg, "model_type", "")) else "longest"
        if padding == "max_length" and max_length is None:
            raise ConfigError(f"{self.name}: the text tower needs padding to a fixed length but neither the config nor the tokenizer gives a maximum length")
        return padding, max_length

    def info(self) -> dict:
        import transformers

        cfg = self.model.config
        return {"model": self.name, "model_class": type(self.model).__name__,
                "model_type": getattr(cfg, "model_type", None), "transformers_version": transformers.__version__,
                "device": str(self.device), "compute_dtype": self.dtype,
                "text_padding": self.text_padding, "text_max_length": self.text_max_length}

    # ---------------------------------------------------------------- images
    def prepare_image(self, image: Any) -> dict[str, torch.Tensor]:
        """Processor outputs for one PIL image, each with a leading batch dim of 1 (thread-safe)."""
        feats = self.image_processor(images=[image], return_tensors="pt")
        return {k: v for k, v in feats.items() if isinstance(v, torch.Tensor)}

    def _finish(self, x: torch.Tensor) -> np.ndarray:
        x = x.float()
        if self.normalize:
            x = torch.nn.functional.normalize(x, dim=-1)
        return x.cpu().numpy()

    @torch.inference_mode()
    def embed_prepared(self, prepared: Sequence[dict[str, torch.Tensor]]) -> np.ndarray:
        """prepared: outputs of :meth:`prepare_image`; returns [len(prepared), d] float32."""
        batch = {k: torch.cat([p[k] for p in prepared], dim=0) for k in prepared[0]}
        batch = {k: (v.to(self.device, self.torch_dtype) if v.is_floating_point() else v.to(self.device)) for k, v in batch.items()}
        fn = self.model.get_image_features
        return self._finish(_as_embeddings(fn(**_accepted_kwargs(fn, batch)), "image", self.name))

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """PIL images -> [b, d] float32."""
        return self.embed_prepared([self.prepare_image(im) for im in images])

    # ---------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        kw: dict[str, Any] = {"padding": self.text_padding, "return_tensors": "pt"}
        if self.text_max_length is not None:
            kw.update(truncation=True, max_length=self.text_max_length)
        return dict(self.tokenizer(list(texts), **kw))

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> [b, d] float32 (truncated to the text tower's maximum length)."""
        tokens = {k: v.to(self.device) for k, v in self.tokenize(texts).items() if isinstance(v, torch.Tensor)}
        fn = self.model.get_text_features
        return self._finish(_as_embeddings(fn(**_accepted_kwargs(fn, tokens)), "text", self.name))

    def embed_texts_batched(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        parts = [self.embed_texts(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return np.concatenate(parts, axis=0)


def _load_processors(model_id: str) -> tuple[Any, Any, str | None]:
    """(image processor, tokenizer, text padding the processor asks for or None) from
    ``AutoProcessor``, falling back to ``AutoImageProcessor`` + ``AutoTokenizer``."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    image_processor = tokenizer = padding = None
    try:
        processor = AutoProcessor.from_pretrained(model_id)
        image_processor = getattr(processor, "image_processor", None)
        tokenizer = getattr(processor, "tokenizer", None)
        # e.g. Siglip2Processor.text_kwargs = {"padding": "max_length", ...}
        defaults = getattr(type(processor), "text_kwargs", None)
        if isinstance(defaults, dict) and isinstance(defaults.get("padding"), str):
            padding = defaults["padding"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # some checkpoints ship a tokenizer and an image processor without a processor
    try:
        if image_processor is None:
            image_processor = AutoImageProcessor.from_pretrained(model_id)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(model_id)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{model_id}: cannot load the image processor and tokenizer: {_first_line(e)}") from None
    return image_processor, tokenizer, padding


# ====================================================================== shards


@dataclass
class ShardResult:
    """One shard's output. image/text: [rows, d] (None when the source has no such modality)."""

    image: np.ndarray | None
    text: np.ndarray | None
    meta: list[dict]
    failures: list[dict]
    images_embedded: int
    texts_embedded: int


def _prepare_record(encoder: DualEncoder, record: Record) -> dict[str, torch.Tensor] | str:
    """Decode + preprocess one image; an error message instead when it cannot be read."""
    try:
        return encoder.prepare_image(load_image(record.image))
    except ImageLoadError as e:
        return str(e)
    except (OSError, ValueError) as e:  # the processor rejected the decoded image (e.g. 1x1 pixel)
        return f"{describe_ref(record.image, record.meta)}: preprocessing failed ({_first_line(e)})"


def _prepared_batches(encoder: DualEncoder, records: list[Record], batch_size: int,
                      pool: ThreadPoolExecutor | None) -> Iterator[tuple[list[Record], list]]:
    """Batches of (records, prepared-or-error); the pool prepares two batches ahead of the model."""
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    if pool is None:
        for b in batches:
            yield b, [_prepare_record(encoder, r) for r in b]
        return
    pending: deque[tuple[list[Record], list[Future]]] = deque()
    for b in batches:
        pending.append((b, [pool.submit(_prepare_record, encoder, r) for r in b]))
        if len(pending) > 2:
            head, futs = pending.popleft()
            yield head, [f.result() for f in futs]
    while pending:
        head, futs = pending.popleft()
        yield head, [f.result() for f in futs]


def embed_shard(encoder: DualEncoder, records: list[Record], first_index: int, kind: str, batch_size: int,
                pool: ThreadPoolExecutor | None = None, on_images: Callable[[int], None] | None = None) -> ShardResult:
    """Embed one shard of records.

    kind ``paired``: one row per (image, caption); the image is embedded once and repeated for
    each caption. kind ``classes``: one image row per record, no text. Records that cannot be
    read (or, paired, have no caption) are skipped and listed in ``failures``.
    """
    failures: list[dict] = []
    todo: list[Record] = []
    for i, r in enumerate(records):
        if kind == "paired" and not r.captions:
            failures.append({"record": first_index + i, "image": describe_ref(r.image, r.meta), "error": "no caption"})
        else:
            todo.append(r)
    index_of = {id(r): first_index + i for i, r in enumerate(records)}
    kept: list[Record] = []
    image_parts: list[np.ndarray] = []
    for batch, prepared in _prepared_batches(encoder, todo, batch_size, pool):
        ok = []
        for r, p in zip(batch, prepared):
            if isinstance(p, str):
                failures.append({"record": index_of[id(r)], "image": describe_ref(r.image, r.meta), "error": p})
            else:
                ok.append(p)
                kept.append(r)
        if ok:
            image_parts.append(encoder.embed_prepared(ok))
        if on_images is not None:
            on_images(len(batch))
    if on_images is not None and len(todo) < len(records):
        on_images(len(records) - len(todo))
    failures.sort(key=lambda f: f["record"])
    images = np.concatenate(image_parts, axis=0) if image_parts else None
    if kind == "classes":
        return ShardResult(images, None, [dict(r.meta) for r in kept], failures, len(kept), 0)
    captions = [c for r in kept for c in r.captions]
    meta = [{**r.meta, "caption": c} for r in kept for c in r.captions]
    texts = encoder.embed_texts_batched(captions, batch_size) if captions else None
    if images is not None:
        images = np.repeat(images, [len(r.captions) for r in kept], axis=0)
    return ShardResult(images, texts, meta, failures, len(kept), len(captions))


class ShardDir:
    """``OUT/.shards``: ``progress.json`` (the settings) and the finished shards.

    A shard's files are written (each atomically) before its ``NNNNN.done.json`` (its entry), so
    a shard with an entry is complete; files of a shard without one are overwritten on resume.
    One entry file per shard (rather than one list) lets torchrun ranks finish shards in any
    order without sharing a file; a resume may use another number of ranks.
    """

    def __init__(self, out: Path, settings: dict):
        self.dir = out / SHARDS_DIR
        self.settings = settings
        self.progress_path = self.dir / "progress.json"
        self.shards: list[dict] = []
        if self.progress_path.is_file():
            state = json.loads(self.progress_path.read_text())
            if state.get("settings") != settings:
                diff = sorted(k for k in set(settings) | set(state.get("settings", {}))
                              if settings.get(k) != state.get("settings", {}).get(k))
                raise DataError(f"{self.progress_path}: an unfinished extraction with other settings ({', '.join(diff)}) "
                                f"is in this folder; rerun with the same settings to resume, or delete {self.dir}")
        if self.dir.is_dir():
            self.reload()

    def start(self) -> None:
        """Record the settings (before any shard is written)."""
        if not self.progress_path.is_file():
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(self.progress_path, {"settings": self.settings})

    def reload(self) -> None:
        """Read the entries of every finished shard (those of other ranks too), in shard order."""
        entries = [json.loads(p.read_text()) for p in self.dir.glob("[0-9]*.done.json")]
        self.shards = sorted(entries, key=lambda e: e["index"])

    @property
    def done(self) -> set[int]:
        return {s["index"] for s in self.shards}

    def path(self, index: int, part: str) -> Path:
        return self.dir / f"{index:05d}.{part}"

    def add(self, index: int, n_records: int, res: ShardResult, store_dtype: str) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, arr in (("image", res.image), ("text", res.text)):
            if arr is not None:
                write_npy(self.path(index, f"{name}.npy"), arr.astype(store_dtype))
        write_text(self.path(index, "meta.jsonl"), "".join(json.dumps(m) + "\n" for m in res.meta))
        entry = {"index": index, "records": n_records, "rows": len(res.meta),
                 "images_embedded": res.images_embedded, "texts_embedded": res.texts_embedded,
                 "has_image": res.image is not None, "has_text": res.text is not None, "failures": res.failures}
        write_json(self.path(index, "done.json"), entry)
        self.shards.append(entry)
        return entry

    @property
    def records_done(self) -> int:
        return sum(s["records"] for s in self.shards)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _assemble_array(shards: ShardDir, part: str, out_path: Path, dtype: str) -> int:
    """Concatenate the shards' ``part`` arrays into one .npy, streamed (never all in memory)."""
    arrays = [np.load(shards.path(s["index"], f"{part}.npy"), mmap_mode="r", allow_pickle=False)
              for s in shards.shards if s["rows"] > 0]
    n, d = sum(len(a) for a in arrays), arrays[0].shape[1]
    with atomic_path(out_path) as tmp:
        dest = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(n, d))
        pos = 0
        for a in arrays:
            dest[pos : pos + len(a)] = a
            pos += len(a)
        dest.flush()
        del dest
    return d


def _assemble_meta(shards: ShardDir, out_path: Path) -> None:
    with atomic_path(out_path) as tmp:
        with open(tmp, "w") as f:
            for s in shards.shards:
                with open(shards.path(s["index"], "meta.jsonl")) as g:
                    shutil.copyfileobj(g, f)


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
