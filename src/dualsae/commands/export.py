"""``dualsae export MODEL --to saelens|sparsify --out DIR``: a model's SAEs in another library's layout
(:mod:`dualsae.models.formats.export`), written as one folder (lock, manifest, atomic files)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dualsae.core.errors import ConfigError
from dualsae.files.atomic import write_json
from dualsae.files.outdir import written_output
from dualsae.models.formats.export import MATCHES_FILE, WRITERS, export_pair
from dualsae.models.load import load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a model's SAEs in SAELens or sparsify layout",
        description="Write each modality's SAE of an aligned folder (image/, text/; latent j is one concept in both) "
        "or a shared-SAE run (shared/) in SAELens's layout (cfg.json + sae_weights.safetensors, for "
        "sae_lens.SAE.load_from_disk) or sparsify's (cfg.json + sae.safetensors, for SparseCoder.load_from_disk), "
        f"with {MATCHES_FILE}: the match statistics (correlation, support, null threshold).",
    )
    p.add_argument("model", help="aligned folder (from 'dualsae align') or shared-SAE run folder")
    p.add_argument("--to", required=True, choices=tuple(WRITERS), help="target library layout")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace the content of an --out folder that holds something else")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, out = Path(args.model), Path(args.out)
    if out.resolve() == model.resolve():
        raise ConfigError(f"--out {out} is the model folder itself; choose a new folder")
    pair = load_model(model)
    job = {"model": str(model.resolve()), "to": args.to}
    with written_output(out, "export", job, "this export", overwrite=args.overwrite):
        stats = export_pair(pair, args.to, out, str(model))
        write_json(out / MATCHES_FILE, stats)
    for name, files in stats["folders"].items():
        print(f"{name}: m={stats['m'][name]:,} -> {out / name} ({', '.join(Path(f).name for f in files)})")
    if "matched" in stats:
        above = sum(1 for r in stats["matched"] if r.get("above_null"))
        null = f", {above:,} above their null threshold" if any("above_null" in r for r in stats["matched"]) else ""
        print(f"matched latents: {len(stats['matched']):,} (same index in image/ and text/){null}; -> {out / MATCHES_FILE}")
    return 0
