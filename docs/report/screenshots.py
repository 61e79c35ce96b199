"""Screenshots of a built report (overview, latent table, one latent page) as small PNGs.

    python docs/report/screenshots.py SITE OUTDIR --latent J [--table 'table?sort=corr'] [--page NAME=FRAGMENT:HEIGHT ...]

Renders each page in headless Chromium (see tests/browser.py) and stores it with a 256-colour
palette, which keeps a 1280-px-wide page at a few hundred kB.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.browser import find_chromium, page_url, screenshot  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("site")
    ap.add_argument("out")
    ap.add_argument("--latent", type=int, required=True)
    ap.add_argument("--table", default="table")
    ap.add_argument("--search", default="")
    ap.add_argument("--heights", default="1750,1000,1900", help="overview,table,latent page heights in px")
    ap.add_argument("--page", action="append", default=[], help="another page: NAME=FRAGMENT:HEIGHT")
    args = ap.parse_args()
    binary = find_chromium()
    if binary is None:
        sys.exit("no Chromium found (apt-get install chromium)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    h_over, h_table, h_latent = (int(x) for x in args.heights.split(","))
    pages = [("overview", "overview", 1280, h_over), ("table", args.table, 1280, h_table), ("latent", f"latent/{args.latent}", 1280, h_latent)]
    if args.search:
        pages.append(("search", f"search/{args.search}", 1280, 700))
    for spec in args.page:
        name, rest = spec.split("=", 1)
        fragment, _, height = rest.rpartition(":")
        pages.append((name, fragment, 1280, int(height)))
    for name, fragment, w, h in pages:
        raw = screenshot(binary, page_url(args.site, fragment), out / f".{name}.raw.png", width=w, height=h)
        Image.open(raw).convert("RGB").quantize(256).save(out / f"{name}.png", optimize=True)
        raw.unlink()
        print(f"{out / (name + '.png')}: {(out / (name + '.png')).stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
