"""How fast the report's latent table opens with 16,384 latents, against a small model side by side.

Builds two reports with ``dualsae.report.build_report`` from untrained aligned pairs (random TopK
SAEs; the table's cost depends on m, not on training) over one random store of ``--rows`` rows with
captions, then opens ``index.html#table`` in headless Chromium (no virtual time, so
``performance.now()`` is real) ``--repeat`` times each and reads what the page records on ``<body>``:
``data-table-ms`` (filter + sort all m latents + build one page of 50 rows) and ``data-since-start-ms``
(navigation start to the table drawn: parsing ``data/latents.js`` included). Prints medians, the ratio
and the size of ``data/latents.js``.

    python benchmarks/report_table.py [--m 16384] [--m-ref 256] [--rows 4000] [--repeat 5]

Needs Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.browser import find_chromium, page_url  # noqa: E402

WORDS = "red blue green cat dog star moon tree car boat fish bird face hand flag heart sun cloud".split()


def make_model(folder: Path, m: int, d: int, k: int) -> Path:
    from dualsae.models.aligned import ALIGNMENT_FORMAT, AlignedPair
    from dualsae.models.sae import SAE, SAEConfig

    torch.manual_seed(0)
    image, text = SAE(SAEConfig(d=d, m=m, k=k)), SAE(SAEConfig(d=d, m=m, k=k))
    alignment = {"format": ALIGNMENT_FORMAT, "permutation": list(range(m)),
                 "matched": {"image": list(range(m)), "text": list(range(m)), "correlation": [0.5] * m},
                 "unmatched": {"image_only": [], "text_only": [], "text_only_shared": []}}
    return AlignedPair("aligned", image, text, alignment).save(folder)


def make_store(folder: Path, n: int, d: int) -> Path:
    from dualsae.store.paired import write_store

    rng = np.random.default_rng(0)
    meta = [{"id": f"r{i}", "caption": " ".join(rng.choice(WORDS, size=3, replace=False))} for i in range(n)]
    x = rng.normal(size=(n, d)).astype(np.float32)
    return write_store(folder, x, x + 0.3 * rng.normal(size=(n, d)).astype(np.float32), meta)


def open_table(binary: str, site: Path) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                              "--dump-dom", page_url(site, "table")], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", out).group(0)
    get = lambda name: float(re.search(rf'{name}="([\d.]+)"', body).group(1))  # noqa: E731
    return get("data-table-ms"), get("data-since-start-ms")


def main() -> None:
    from dualsae.report import ReportOptions, build_report
    from dualsae.store.paired import PairedEmbeddings

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", type=int, default=16384)
    ap.add_argument("--m-ref", type=int, default=256)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    binary = find_chromium()
    if binary is None:
        sys.exit("no Chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = PairedEmbeddings.open(make_store(tmp / "data", args.rows, args.d))
        results = {}
        for m in (args.m_ref, args.m):
            model = make_model(tmp / f"model-{m}", m, args.d, args.k)
            # No [m, m] correlation (Fig. 2) here: it is not part of what the table loads.
            opt = ReportOptions(probe_latents=0, max_correlation_bytes=0)
            summary = build_report(model, store, tmp / f"site-{m}", options=opt)
            runs = [open_table(binary, tmp / f"site-{m}") for _ in range(args.repeat)]
            size = (tmp / f"site-{m}" / "data" / "latents.js").stat().st_size
            results[m] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), size,
                          summary["timing"]["total_s"])
            print(f"m={m:>6,}: table render {results[m][0]:7.1f} ms, navigation -> table {results[m][1]:7.1f} ms "
                  f"(medians of {args.repeat}), data/latents.js {size / 1e6:.2f} MB, build {results[m][3]:.1f} s")
        ref, big = results[args.m_ref], results[args.m]
        print(f"ratio m={args.m:,} / m={args.m_ref:,}: render x{big[0] / ref[0]:.2f}, navigation -> table x{big[1] / ref[1]:.2f}")


if __name__ == "__main__":
    main()
