"""Dataset readers for extraction.

Image-caption readers yield :class:`Record` ``(image, captions, meta)`` lazily, one per *image*:

* ``image`` -- where the pixels are: a :class:`~pathlib.Path`, the encoded ``bytes`` (tar shards),
  or ``None`` when the sample has no image file. :func:`load_image` turns any of them into RGB.
* ``captions`` -- the image's captions (COCO: usually 5; CC-3M, CSV, JSONL: 1; class folders: 0).
* ``meta`` -- JSON-serialisable fields copied into every ``meta.jsonl`` row of this image.

The extractor (``dualsae.extract.extraction``) embeds each image once and writes one store row per
(image, caption) pair, so the 5 COCO captions of one image become 5 rows that share the image
embedding and ``meta["group"]``, so MS-COCO retrieval (paper Sec. 6.2) can treat them together.

Readers (``make_source`` builds one from a format name):

* ``coco`` -- ``captions_*.json`` (``images`` + ``annotations``) and an image folder; optional
  split file (one file name or image id per line, e.g. the Karpathy 5k test split).
* ``cc3m`` -- img2dataset webdataset shards: ``.tar`` with ``KEY.jpg`` + ``KEY.txt`` (+ ``KEY.json``),
  streamed with :mod:`tarfile` (the training data of paper Sec. 6.2 / App. E.4).
* ``imagefolder`` -- ImageNet-style ``root/<class_dir>/*.jpg`` + class names, for zero-shot.
* ``csv`` / ``jsonl`` -- a table with an image-path column and a caption column.

Records, the Source interface and image decoding are in :mod:`dualsae.extract.records`; the
clip-retrieval embedding layout is a store (:mod:`dualsae.store.clip_retrieval`).
"""

from __future__ import annotations

import csv
import glob
import json
import tarfile
from pathlib import Path
from typing import Iterator, Sequence

from dualsae.core.errors import ConfigError, DataError
from dualsae.extract.records import (
    IMAGE_EXTENSIONS,
    Record,
    Source,
    _abs,
    _need_dir,
    _need_file,
    _read_json,
)
from dualsae.files.jsonfiles import iter_jsonl_objects, text_lines

# A short list of the CLIP ImageNet prompt templates: "a photo of a {}." plus the 7 templates the
# CLIP authors selected from their 80 for ImageNet (Prompt_Engineering_for_ImageNet.ipynb).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


# ====================================================================== sources


# ---------------------------------------------------------------------- COCO


class CocoSource(Source):
    """MS-COCO captions: ``captions_*.json`` + image folder, one record per image with its captions.

    split_file: optional text file, one image file name (basename is enough) or numeric image id
    per line; only those images are read, in the annotation file's order.
    max_captions: keep at most this many captions per image (the 5k retrieval protocol uses 5).
    Images with no caption are left out (counted in ``describe()['images_without_captions']``).
    """

    format = "coco"

    def __init__(self, annotations: str | Path, images: str | Path, split_file: str | Path | None = None,
                 max_captions: int | None = None):
        self.annotations = _need_file(annotations, "--annotations", "the COCO captions_*.json file")
        self.images = _need_dir(images, "--images", "the folder holding the COCO image files")
        self.split_file = None if split_file is None else _need_file(split_file, "--split-file", "one image file name or id per line")
        if max_captions is not None and max_captions < 1:
            raise ConfigError(f"--captions-per-image must be >= 1, got {max_captions}")
        self.max_captions = max_captions
        data = _read_json(self.annotations)
        for key in ("images", "annotations"):
            if not isinstance(data, dict) or not isinstance(data.get(key), list):
                raise DataError(f"{self.annotations}: field '{key}' missing or not a list; expected a COCO captions file with 'images' and 'annotations'")
        captions: dict[int, list[str]] = {}
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
                raise DataError(f"{self.annotations}: annotations[{i}] lacks 'image_id' or 'caption'")
            captions.setdefault(int(ann["image_id"]), []).append(str(ann["caption"]).strip())
        images = []
        for i, im in enumerate(data["images"]):
            if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
                raise DataError(f"{self.annotations}: images[{i}] lacks 'id' or 'file_name'")
            images.append((int(im["id"]), str(im["file_name"])))
        if self.split_file is not None:
            images = self._restrict(images)
        self.n_without_captions = sum(1 for iid, _ in images if iid not in captions)
        self._items = [(iid, fn, captions[iid][: self.max_captions]) for iid, fn in images if iid in captions]

    def _restrict(self, images: list[tuple[int, str]]) -> list[tuple[int, str]]:
        by_id = {iid: (iid, fn) for iid, fn in images}
        by_name = {Path(fn).name: (iid, fn) for iid, fn in images}
        wanted: set[int] = set()
        unknown: list[str] = []
        for line in self.split_file.read_text().splitlines():
            entry = line.strip()
            if not entry:
                continue
            hit = by_id.get(int(entry)) if entry.isdigit() else by_name.get(Path(entry).name)
            if hit is None:
                unknown.append(entry)
            else:
                wanted.add(hit[0])
        if unknown:
            raise DataError(f"{self.split_file}: {len(unknown):,} entries name no image of {self.annotations} (first: '{unknown[0]}'); expected file names or image ids")
        if not wanted:
            raise DataError(f"{self.split_file}: lists no image; expected one file name or image id per line")
        return [im for im in images if im[0] in wanted]

    def __iter__(self) -> Iterator[Record]:
        for iid, fn, caps in self._items:
            yield Record(self.images / fn, tuple(caps), {"image_id": iid, "file_name": fn, "group": iid})

    def count(self) -> int:
        return len(self._items)

    def describe(self) -> dict:
        return {"format": self.format, "annotations": _abs(self.annotations), "images": _abs(self.images),
                "split_file": None if self.split_file is None else _abs(self.split_file),
                "max_captions": self.max_captions, "n_images": len(self._items),
                "n_captions": sum(len(c) for _, _, c in self._items),
                "images_without_captions": self.n_without_captions}


# ---------------------------------------------------------------------- webdataset (CC-3M)


def _expand_shards(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Shard list from a folder (every ``*.tar`` in it), a glob pattern, a file, or a list of these."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    out: list[Path] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            found = sorted(p.glob("*.tar"))
            if not found:
                raise DataError(f"{p}: folder holds no .tar shard")
            out += found
        elif any(ch in str(s) for ch in "*?["):
            found = sorted(Path(x) for x in glob.glob(str(s)))
            if not found:
                raise DataError(f"{s}: pattern matches no file; expected webdataset .tar shards")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: not found; expected a .tar shard, a folder of shards or a glob pattern")
    return out


def _split_key(name: str) -> tuple[str, str]:
    """webdataset convention: the key is the member path up to the first dot of its basename."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class WebDatasetSource(Source):
    """img2dataset webdataset shards (CC-3M), streamed with :mod:`tarfile`: one record per sample key.

    A sample needs an image member (jpg/jpeg/png/webp) and a ``txt`` caption; ``json`` adds ``url``.
    A sample without an image yields ``image=None`` and one without ``txt`` yields no caption, so
    the extractor counts both as failures. A truncated shard ends that shard (recorded in
    ``shard_errors``) and reading goes on with the next one.
    """

    format = "cc3m"
    _IMAGE_EXT = ("jpg", "jpeg", "png", "webp")

    def __init__(self, shards: str | Path | Sequence[str | Path]):
        if shards is None:
            raise ConfigError("--shards is required: webdataset .tar files (a folder, a glob pattern or file names)")
        self.shards = _expand_shards(shards)
        self.shard_errors: list[dict] = []

    def _samples(self, path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
        key, parts = None, {}
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = _split_key(member.name)
                if k != key:
                    if key is not None:
                        yield key, parts
                    key, parts = k, {}
                f = tar.extractfile(member)
                parts[ext] = f.read() if f is not None else b""
        if key is not None:
            yield key, parts

    def _record(self, shard: Path, key: str, parts: dict[str, bytes]) -> Record:
        image = next((parts[e] for e in self._IMAGE_EXT if e in parts), None)
        meta: dict = {"key": key, "shard": shard.name}
        if "json" in parts:
            try:
                info = json.loads(parts["json"])
                if isinstance(info, dict) and info.get("url") is not None:
                    meta["url"] = info["url"]
            except (json.JSONDecodeError, UnicodeDecodeError):
                pass  # the json member is optional extra info; a bad one does not lose the pair
        caps = (parts["txt"].decode("utf-8", errors="replace").strip(),) if "txt" in parts else ()
        return Record(image, caps, meta)

    def __iter__(self) -> Iterator[Record]:
        self.shard_errors = []
        for shard in self.shards:
            n = 0
            try:
                for key, parts in self._samples(shard):
                    n += 1
                    yield self._record(shard, key, parts)
            except (tarfile.TarError, EOFError, OSError) as e:
                self.shard_errors.append({"shard": str(shard), "after_samples": n, "error": f"{type(e).__name__}: {e}"})

    def count(self) -> int | None:
        """Sum of img2dataset's ``NNNNN_stats.json`` ``successes``, when every shard has one."""
        total = 0
        for shard in self.shards:
            stats = shard.with_name(shard.stem + "_stats.json")
            if not stats.is_file():
                return None
            try:
                total += int(json.loads(stats.read_text())["successes"])
            except (KeyError, ValueError, TypeError, json.JSONDecodeError):
                return None
        return total

    def describe(self) -> dict:
        return {"format": self.format, "shards": [_abs(s) for s in self.shards], "n_shards": len(self.shards)}


# ---------------------------------------------------------------------- class folders


def read_templates(path: str | Path | None) -> list[str]:
    """Prompt templates, one per line, each with one ``{}`` for the class name."""
    if path is None:
        return list(DEFAULT_TEMPLATES)
    p = _need_file(path, "--templates", "one prompt template per line, each with {} for the class name")
    out = []
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        t = line.strip()
        if not t:
            continue
        if t.count("{}") != 1:
            raise DataError(f"{p}: line {lineno} '{t}' must contain '{{}}' exactly once (the class name)")
        out.append(t)
    if not out:
        raise DataError(f"{p}: holds no template")
    return out


class ImageFolderSource(Source):
    """ImageNet-style ``root/<class_dir>/*.jpg`` for zero-shot: label = index of the sorted class dir.

    classnames: a text file (one name per line, in sorted class-dir order), a JSON object
    ``{class_dir: name}`` or a JSON list; default: the dir names with ``_`` read as spaces.
    """

    format = "imagefolder"
    kind = "classes"

    def __init__(self, root: str | Path, classnames: str | Path | None = None, templates: str | Path | None = None):
        self.root = _need_dir(root, "--images", "the folder with one sub-folder of images per class")
        self.class_dirs = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.class_dirs:
            raise DataError(f"{self.root}: holds no class sub-folder; expected root/<class_dir>/*.jpg")
        self.classnames_path = None if classnames is None else _need_file(classnames, "--classnames", "class names")
        self.classes = self._class_names()
        self.templates = read_templates(templates)
        self._items: list[tuple[Path, int]] = []
        for label, d in enumerate(self.class_dirs):
            files = sorted(p for p in (self.root / d).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            self._items += [(p, label) for p in files]
        if not self._items:
            raise DataError(f"{self.root}: class folders hold no image ({', '.join(IMAGE_EXTENSIONS)})")

    def _class_names(self) -> list[str]:
        p = self.classnames_path
        if p is None:
            return [d.replace("_", " ") for d in self.class_dirs]
        if p.suffix.lower() == ".json":
            data = _read_json(p)
            if isinstance(data, dict):
                missing = [d for d in self.class_dirs if d not in data]
                if missing:
                    raise DataError(f"{p}: has no name for class folder '{missing[0]}' ({len(missing):,} missing); expected a JSON object class_dir -> name")
                return [str(data[d]) for d in self.class_dirs]
            if not isinstance(data, list):
                raise DataError(f"{p}: is a JSON {type(data).__name__}; expected an object class_dir -> name or a list of names")
            names = [str(x) for x in data]
        else:
            names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
        if len(names) != len(self.class_dirs):
            raise DataError(f"{p}: lists {len(names):,} class names, {self.root} has {len(self.class_dirs):,} class folders; expected one name per folder in sorted folder order")
        return names

    def __iter__(self) -> Iterator[Record]:
        for path, label in self._items:
            rel = path.relative_to(self.root).as_posix()
            yield Record(path, (), {"label": label, "class_name": self.classes[label], "file": rel})

    def count(self) -> int:
        return len(self._items)

    def describe(self) -> dict:
        return {"format": self.format, "images": _abs(self.root), "n_images": len(self._items),
                "n_classes": len(self.classes),
                "classnames": None if self.classnames_path is None else _abs(self.classnames_path),
                "templates": self.templates}


# ---------------------------------------------------------------------- CSV / JSONL


class TableSource(Source):
    """CSV (with a header row) or JSONL with an image-path column and a caption column.

    Image paths are relative to the table file's folder (absolute paths are kept). The other
    columns are copied into meta (so a ``split`` column becomes the store's split).
    """

    def __init__(self, path: str | Path, fmt: str, image_col: str = "image", caption_col: str = "caption"):
        if fmt not in ("csv", "jsonl"):
            raise ConfigError(f"table format must be csv or jsonl, got '{fmt}'")
        self.format = fmt
        self.path = _need_file(path, "--table", f"the {fmt.upper()} file with image paths and captions")
        self.image_col, self.caption_col = image_col, caption_col
        self._check_columns()

    def _rows(self) -> Iterator[tuple[int, dict]]:
        if self.format == "csv":
            for lineno, row in enumerate(csv.DictReader(text_lines(self.path)), 2):
                yield lineno, row
            return
        yield from iter_jsonl_objects(self.path)

    def _check_columns(self) -> None:
        if self.format == "csv":
            header = next(csv.reader(text_lines(self.path)), None)
            if header is None:
                raise DataError(f"{self.path}: empty; expected a header row with columns '{self.image_col}' and '{self.caption_col}'")
            for col, flag in ((self.image_col, "--image-col"), (self.caption_col, "--caption-col")):
                if col not in header:
                    raise DataError(f"{self.path}: has no column '{col}' ({flag}); found columns {header}")
        else:
            for lineno, row in self._rows():
                for col, flag in ((self.image_col, "--image-col"), (self.caption_col, "--caption-col")):
                    if col not in row:
                        raise DataError(f"{self.path}: line {lineno} has no field '{col}' ({flag}); found fields {sorted(row)}")

    def __iter__(self) -> Iterator[Record]:
        base = self.path.parent
        for lineno, row in self._rows():
            img, cap = row.get(self.image_col), row.get(self.caption_col)
            meta = {k: v for k, v in row.items() if k not in (self.image_col, self.caption_col)}
            meta["image"] = img
            caps = (str(cap).strip(),) if cap not in (None, "") else ()
            path = None if img in (None, "") else base / str(img)
            yield Record(path, caps, meta)

    def count(self) -> int:
        return sum(1 for _ in self._rows())

    def describe(self) -> dict:
        return {"format": self.format, "table": _abs(self.path), "image_col": self.image_col, "caption_col": self.caption_col}


# ---------------------------------------------------------------------- factory

FORMATS = ("coco", "cc3m", "imagefolder", "csv", "jsonl")


def make_source(fmt: str, *, annotations=None, images=None, split_file=None, shards=None, classnames=None,
                templates=None, table=None, image_col: str = "image", caption_col: str = "caption",
                max_captions: int | None = None) -> Source:
    """Build the reader for ``fmt`` (one of :data:`FORMATS`; ``webdataset`` is an alias of ``cc3m``)."""
    if fmt == "coco":
        return CocoSource(annotations, images, split_file, max_captions)
    if fmt in ("cc3m", "webdataset"):
        return WebDatasetSource(shards)
    if fmt == "imagefolder":
        return ImageFolderSource(images, classnames, templates)
    if fmt in ("csv", "jsonl"):
        return TableSource(table, fmt, image_col, caption_col)
    raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got '{fmt}'")


# ====================================================================== clip-retrieval layout


