"""What an extraction reader yields: a :class:`Record` ``(image, captions, meta)`` per image, the
:class:`Source` interface every reader implements, and image decoding (:func:`load_image`) with the
one-line error of an unreadable image (:class:`ImageLoadError`, skipped and counted by the extractor).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from dualsae.core.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


ImageRef = Path | bytes | None


class Record(NamedTuple):
    """One image with its captions. image: Path, encoded bytes, or None (missing from the sample)."""

    image: ImageRef
    captions: tuple[str, ...]
    meta: dict


class ImageLoadError(DataError):
    """An image file is missing, truncated or not an image (extraction skips and counts it)."""


def load_image(ref: ImageRef):
    """Decode an image reference to an RGB ``PIL.Image`` (fully decoded, so truncation shows here)."""
    from PIL import Image

    if ref is None:
        raise ImageLoadError("the sample has no image file")
    try:
        if isinstance(ref, (bytes, bytearray)):
            img = Image.open(io.BytesIO(ref))
        else:
            img = Image.open(ref)
        with img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise ImageLoadError(f"{ref}: file not found") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        where = ref if isinstance(ref, Path) else "image bytes"
        raise ImageLoadError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from None


def describe_ref(ref: ImageRef, meta: dict) -> str:
    """A short name for an image in failure lists: its path, else ``shard:key`` of a tar sample."""
    if isinstance(ref, Path):
        return str(ref)
    if "key" in meta:
        return f"{meta.get('shard', '')}:{meta['key']}"
    return str(meta.get("image", meta.get("file_name", "<unnamed>")))


class Source:
    """Base of the readers: iterate :class:`Record`; ``kind`` is ``paired`` or ``classes``."""

    format: str = ""
    kind: str = "paired"

    def __iter__(self) -> Iterator[Record]:  # pragma: no cover - abstract
        raise NotImplementedError

    def count(self) -> int | None:
        """Number of records, when known without decoding images (for progress bars)."""
        return None

    def describe(self) -> dict:
        """JSON description (recorded in ``extract.json``; a resumed extraction must match it)."""
        raise NotImplementedError


def _need_path(path: str | Path | None, flag: str, what: str, folder: bool) -> Path:
    if path is None:
        raise ConfigError(f"{flag} is required: {what}")
    p = Path(path)
    if not (p.is_dir() if folder else p.is_file()):
        raise DataError(f"{p}: {'not a folder' if folder else 'file not found'} ({flag}: {what})")
    return p


def _need_file(path: str | Path | None, flag: str, what: str) -> Path:
    return _need_path(path, flag, what, folder=False)


def _need_dir(path: str | Path | None, flag: str, what: str) -> Path:
    return _need_path(path, flag, what, folder=True)


def _abs(path: Path) -> str:
    """Absolute path for ``describe()``: a resumed run may spell the same file differently."""
    return str(Path(path).resolve())


def _read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
