"""``dualsae extract``: embed an image-caption dataset with a transformers dual encoder."""

from __future__ import annotations

import argparse
import contextlib
import os

from dualsae.core.distributed import Distributed, resolve_device
from dualsae.core.errors import DualSAEError
from dualsae.extract.extraction import ExtractConfig, extract, format_summary
from dualsae.extract.sources import FORMATS, make_source
from dualsae.files.lock import output_lock
from dualsae.files.outdir import check_output, claim_output, commit_output, remove_if_unused

DESCRIPTION = """\
Embed images and captions with a Hugging Face dual encoder (CLIP, MetaCLIP, OpenCLIP in
transformers format, SigLIP, SigLIP2; a hub id or a local save_pretrained folder, which also works
with HF_HUB_OFFLINE=1) into a store folder: image.npy, text.npy [N, d], meta.jsonl, extract.json.

Sources (--format):
  coco         --annotations captions_val2014.json --images val2014/ [--split-file karpathy_test.txt]
               one row per (image, caption); each image embedded once; meta image_id, group
  cc3m         --shards DIR|'GLOB'|FILE... img2dataset webdataset .tar (KEY.jpg + KEY.txt [+ KEY.json])
  imagefolder  --images ROOT (ROOT/<class_dir>/*.jpg) [--classnames names.txt|map.json] [--templates FILE]
               zero-shot store: image.npy, meta label/class_name, classes.json, class_text.npy [C, T, d]
  csv, jsonl   --table FILE [--image-col image] [--caption-col caption]; image paths relative to FILE

Embeddings are L2-normalised unless --no-normalize. Work is written in shards (--shard-size
images each) under OUT/.shards; an interrupted run resumes when rerun with the same flags.
Unreadable images are skipped and listed in extract.json. Under torchrun rank r embeds shards
r, r+N, ... and rank 0 assembles the same store a single process writes.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("extract", help="embed an image-caption dataset with a dual encoder (CLIP, SigLIP, ...)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="hub id or local folder of a transformers dual encoder")
    p.add_argument("--format", required=True, choices=list(FORMATS) + ["webdataset"], help="dataset format (webdataset = cc3m)")
    p.add_argument("--out", required=True, help="store folder to write")
    src = p.add_argument_group("source")
    src.add_argument("--annotations", help="coco: captions_*.json")
    src.add_argument("--images", help="coco: image folder; imagefolder: root with one sub-folder per class")
    src.add_argument("--split-file", help="coco: only these images (one file name or image id per line)")
    src.add_argument("--captions-per-image", type=int, default=None, help="coco: keep at most this many captions per image (default: all)")
    src.add_argument("--shards", nargs="+", help="cc3m: .tar shards, a folder of them, or a quoted glob")
    src.add_argument("--classnames", help="imagefolder: class names, one per line in sorted folder order, or JSON {dir: name}")
    src.add_argument("--templates", help="imagefolder: prompt templates, one per line with {} (default: 8 CLIP ImageNet templates)")
    src.add_argument("--table", help="csv/jsonl: the table file")
    src.add_argument("--image-col", default="image", help="csv/jsonl: image path column (default: image)")
    src.add_argument("--caption-col", default="caption", help="csv/jsonl: caption column (default: caption)")
    run = p.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=256, help="images/captions per forward pass (default: 256)")
    run.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N (default: auto = cuda if available)")
    run.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="compute dtype (default: fp16 on CUDA, fp32 on CPU)")
    run.add_argument("--store-dtype", default="float32", choices=["float32", "float16"], help="dtype of the written arrays (default: float32)")
    run.add_argument("--shard-size", type=int, default=8192, help="images per resumable shard (default: 8192)")
    run.add_argument("--limit", type=int, default=None, help="read at most N images from the source")
    run.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="threads decoding images (default: min(8, CPUs))")
    run.add_argument("--no-normalize", action="store_true", help="keep raw projections instead of L2-normalising")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--overwrite", action="store_true", help="replace the content of an --out folder that holds something else")
    p.set_defaults(func=run_extract)


def run_extract(args: argparse.Namespace) -> int:


    resolved = resolve_device(args.device)
    dist = Distributed.from_env(resolved)  # a torchrun rank, or one process
    device = str(dist.device(resolved)) if dist.enabled and resolved.type == "cuda" else args.device  # each rank its own GPU
    config = ExtractConfig(batch_size=args.batch_size, device=device, dtype=args.dtype, store_dtype=args.store_dtype,
                           shard_size=args.shard_size, limit=args.limit, normalize=not args.no_normalize, workers=args.workers)
    source = make_source(args.format, annotations=args.annotations, images=args.images, split_file=args.split_file,
                         shards=args.shards, classnames=args.classnames, templates=args.templates, table=args.table,
                         image_col=args.image_col, caption_col=args.caption_col, max_captions=args.captions_per_image)
    # The folder is this extraction's (same flags: a resume) or refused; locked while it runs; its
    # manifest says complete only after extract.json (the store's last file) is written.
    # Under torchrun rank 0 claims and locks the folder; the ranks then share it through extract's own
    # shard protocol (rank r writes shards r, r+N, ...; rank 0 assembles and commits).
    job = {k: v for k, v in vars(args).items() if k not in ("func", "quiet", "overwrite", "workers", "batch_size", "device")}
    claimed: list[bool] = []  # set once this process has made the folder this extraction's
    with contextlib.ExitStack() as held:
        def claim() -> None:
            check_output(args.out, "extract", job, overwrite=args.overwrite)  # before the lock file is created
            held.enter_context(output_lock(args.out, "this store"))
            claim_output(args.out, "extract", job, overwrite=args.overwrite)
            claimed.append(True)

        try:
            dist.on_main(claim, str(args.out))
            summary = extract(source, args.model, args.out, config, progress=not args.quiet, dist=dist)
        except DualSAEError:
            if claimed:
                remove_if_unused(args.out)  # e.g. every image unreadable: leave no empty store folder behind
            raise
        finally:
            dist.close()
        if dist.is_main:
            commit_output(args.out)
    if dist.is_main:
        print(format_summary(summary, args.out))
    return 0
