"""Every command downstream of ``align`` on an aligned pair of 65,536 latents per modality (issue 17,
point 3): wall time and peak RSS of ``info``, ``eval`` (every task), ``report``, ``translate`` and
``steer``, each run as its own ``python -m dualsae`` process under ``/usr/bin/time -v``.

The aligned folder is built from random weights and a random permutation (``aligned-m<m>/``): two
TopK SAEs of ``--m`` latents at the store's width, decoder bias at the store's mean, every latent
matched (the largest alignment.json and latent table there can be), written by
:meth:`dualsae.AlignedPair.save` with alignment.json's fields as ``dualsae.align`` writes them. Random
weights make the numbers meaningless and the costs real: every latent fires somewhere, so no
command gets away with a small live set. (An ``align`` at this width needs the sparse statistics of
issue 17 points 1-2; this script measures what comes after it.)

    PYTHONPATH=src .venv/bin/python benchmarks/downstream_scale.py --data ../shared/data/emoji --out /tmp/downstream
    PYTHONPATH=src .venv/bin/python benchmarks/downstream_scale.py --m 512 ...     # the same at a small width
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dualsae.alignment.assignment import Matching, matching_json
from dualsae.alignment.permutation import build_permutation, permute_sae
from dualsae.models.aligned import AlignedPair
from dualsae.models.sae import SAE, SAEConfig
from dualsae.store.paired import open_store


def build_aligned(store_dir: Path, m: int, k: int, out: Path, seed: int = 0) -> Path:
    """A random aligned pair of m latents per modality over the store's width (module docstring)."""
    folder = out / f"aligned-m{m}"
    if (folder / "alignment.json").exists():
        return folder
    store = open_store(store_dir)
    gen = torch.Generator().manual_seed(seed)
    saes = {}
    for mod in ("image", "text"):
        sae = SAE(SAEConfig(d=store.d, m=m, k=k), generator=gen)
        with torch.no_grad():
            sae.b_dec.copy_(store.sample(mod, 4096, seed=seed).float().mean(0))
        saes[mod] = sae
    rng = np.random.default_rng(seed)
    text = rng.permutation(m)
    every = np.arange(m)
    corr = rng.uniform(0.0, 1.0, m)
    none = np.zeros(0, dtype=np.int64)
    matching = Matching(every, text, corr, every, every, none, none, float(corr.sum()), "random")
    perm = build_permutation(matching, m, m)
    report = {
        "format": "dualsae.alignment/1", "source_run": None, "source_method": "specific", "rows": store.n,
        "m_image": m, "m_text": m, "solver": "random (benchmarks/downstream_scale.py)", "permutation": perm.tolist(),
        "live": {"image": m, "text": m}, "dead": {"image": 0, "text": 0}, "matched_count": m,
        "mean_matched_correlation": float(corr.mean()), "total_matched_correlation": float(corr.sum()),
        "matched": matching_json(matching), "unmatched": {"image_only": [], "text_only": [], "text_only_shared": []},
        "timing": {},
    }
    AlignedPair("aligned", saes["image"], permute_sae(saes["text"], perm), report).save(folder)
    return folder


def run(name: str, args: list[str], log: Path) -> tuple[float, float, int]:
    """(wall s, peak RSS GiB, exit status) of ``python -m dualsae ARGS`` under /usr/bin/time -v."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "dualsae", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - t0
    log.write_text(f"$ {' '.join(cmd)}\n\n{proc.stdout}\n{proc.stderr}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return wall, (int(peak.group(1)) / 2**20 if peak else float("nan")), proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a paired store with captions and a category field (the emoji data)")
    ap.add_argument("--out", required=True, help="working folder")
    ap.add_argument("--m", type=int, default=65_536, help="latents per modality (default 65,536)")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--field", default="category", help="label / concept field of the store's meta")
    ap.add_argument("--only", default=None, help="comma-separated subset of the commands below, and page-draw")
    ap.add_argument("--repeat", type=int, default=5, help="page draws of the report's latent table")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = build_aligned(Path(args.data), args.m, args.k, out)
    print(f"aligned folder of {args.m:,} latents per modality: {model} ({time.perf_counter() - t0:.0f} s)", flush=True)
    data, f = args.data, args.field
    external = Path(data) / "external"
    ext = ["--external", str(external)] if external.is_dir() else []
    commands = {
        "info": ["info", str(model), "--data", data],
        "eval": ["eval", str(model), "--data", data, "--label-field", f, "--concept-field", f, *ext, "--no-progress",
                 "--out", str(out / "eval"), "--overwrite"],
        "report": ["report", str(model), "--data", data, "--out", str(out / "report"), "--overwrite", "--no-progress"],
        "translate": ["translate", str(model), "--data", data, "--rows", "0", "1", "2"],
        "steer": ["steer", str(model), "--data", data, "--latent", "7"],
    }
    only = args.only.split(",") if args.only else [*commands, "page-draw"]
    print(f"{'command':<10} {'wall s':>8} {'peak RSS GiB':>13} {'exit':>5}   log")
    for name in only:
        if name == "page-draw":
            page_draw(out / "report", args.repeat)
            continue
        log = out / f"{name}.log"
        wall, peak, rc = run(name, commands[name], log)
        print(f"{name:<10} {wall:>8.1f} {peak:>13.2f} {rc:>5}   {log}", flush=True)


def page_draw(site: Path, repeat: int) -> None:
    """The report's latent table opened in headless Chromium ``repeat`` times, as benchmarks/report_table.py
    measures it: the page's own record of filter + sort of all m latents + one drawn page (``data-table-ms``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from report_table import open_table

    from tests.browser import find_chromium

    binary = find_chromium()
    if binary is None or not (site / "index.html").is_file():
        print(f"page draw: skipped ({'no Chromium' if binary is None else f'no report in {site}'})")
        return
    runs = sorted(open_table(binary, site) for _ in range(repeat))
    table = sorted(r[0] for r in runs)
    size = (site / "data" / "latents.js").stat().st_size / 1e6
    print(f"page draw: table render {table[len(table) // 2]:.1f} ms median of {repeat} (min {table[0]:.1f}, "
          f"max {table[-1]:.1f}); data/latents.js {size:.1f} MB", flush=True)


if __name__ == "__main__":
    main()
