"""Where a row's image lives, and copying each needed image once into the report.

Order of lookup for a row (first hit wins):

1. ``--images DIR``: the meta fields ``thumb`` / ``image`` / ``image_path`` taken relative to DIR, then
   ``DIR/<id>.<ext>``;
2. the meta fields ``thumb`` / ``image`` / ``image_path`` as absolute paths or relative to the store;
3. ``thumbs/<id>.<ext>`` in the store folder.

Only local files are used (a URL in a meta field is ignored: the report never downloads). A copied
image gets a name made from its row number (``img/r<row>.<ext>``), never from data, so a hostile id
or path cannot leave the report folder or break the page.
"""

from __future__ import annotations

import shutil
from pathlib import Path

FIELDS = ("thumb", "image", "image_path")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif")


def _candidates(meta: dict, store_root: Path | None, images: Path | None):
    names = [meta[f] for f in FIELDS if isinstance(meta.get(f), str) and meta[f] and "://" not in meta[f]]
    ident = meta.get("id")
    ident = str(ident) if ident is not None and "/" not in str(ident) and str(ident) not in ("", ".", "..") else None
    if images is not None:
        for name in names:
            yield images / name
            yield images / Path(name).name
        if ident:
            for ext in EXTENSIONS:
                yield images / f"{ident}{ext}"
    for name in names:
        p = Path(name)
        yield p if p.is_absolute() else (store_root / p if store_root is not None else p)
    if ident and store_root is not None:
        for ext in EXTENSIONS:
            yield store_root / "thumbs" / f"{ident}{ext}"


def find_image(meta: dict, store_root: Path | None, images: Path | None = None) -> Path | None:
    """The local image file of a row (see module docstring), or None."""
    for p in _candidates(meta, store_root, images):
        if p.suffix.lower() in EXTENSIONS and p.is_file():
            return p
    return None


class ThumbCopier:
    """Copies the images of the rows a report shows into ``out/img/``, each row once.

    ``src(row, meta)`` returns the page-relative path (``img/r12.png``) or None when the row has no image.
    """

    def __init__(self, out: Path, store_root: Path | None, images: Path | None = None) -> None:
        self.dir = out / "img"
        self.store_root = store_root
        self.images = images
        self.done: dict[int, str | None] = {}

    def src(self, row: int, meta: dict) -> str | None:
        if row in self.done:
            return self.done[row]
        found = find_image(meta, self.store_root, self.images)
        rel = None
        if found is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            name = f"r{int(row)}{found.suffix.lower()}"
            shutil.copyfile(found, self.dir / name)
            rel = f"img/{name}"
        self.done[row] = rel
        return rel

    @property
    def copied(self) -> int:
        return sum(v is not None for v in self.done.values())


__all__ = ["FIELDS", "ThumbCopier", "find_image"]
