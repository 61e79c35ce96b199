"""Extraction with tiny randomly initialised CLIP and SigLIP checkpoints, loaded from local folders
through AutoModel/AutoProcessor exactly as a hub checkpoint would be (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: no hub, ever

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dualsae.core.distributed import Distributed
from dualsae.core.errors import ConfigError, DataError
from dualsae.extract.encoder import DualEncoder
from dualsae.extract.extraction import ExtractConfig, extract
from dualsae.extract.sources import CocoSource, ImageFolderSource, TableSource, WebDatasetSource
from dualsae.files.lock import output_lock
from dualsae.files.outdir import check_finished, verify_files
from dualsae.store.paired import PairedEmbeddings
from tests.helpers import launch_ranks, start_ranks, wait_ranks

CLIP_MAX_LEN = 16
SIGLIP_MAX_LEN = 12
WORDS = "a photo of the cat dog red blue green car small large picture".split()


def _build_clip(folder: Path) -> None:
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    # A character-level byte-BPE vocabulary (no merges): the real CLIP tokenizer class, tiny vocab.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LEN)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=CLIP_MAX_LEN, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=24)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(folder)
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)


def _build_siglip(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    words = ["<pad>", "<unk>", "</s>"] + WORDS
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                  model_max_length=SIGLIP_MAX_LEN)
    cfg = SiglipConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=SIGLIP_MAX_LEN, projection_size=32,
                         pad_token_id=0, bos_token_id=None, eos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8))
    torch.manual_seed(1)
    SiglipModel(cfg).save_pretrained(folder)
    SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    _build_clip(root / "clip")
    _build_siglip(root / "siglip")
    return {"clip": root / "clip", "siglip": root / "siglip"}


@pytest.fixture(scope="module")
def clip_encoder(models) -> DualEncoder:
    return DualEncoder.load(str(models["clip"]), device="cpu")


def _image(path: Path, seed: int, size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _captions(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 7)))) for _ in range(n)]


def _direct(folder: Path, images: list[Path], captions: list[str], padding, max_length) -> tuple[np.ndarray, np.ndarray]:
    """Reference: one direct call of get_image_features / get_text_features on all inputs, L2-normalised."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(folder).eval()
    proc = AutoProcessor.from_pretrained(folder)
    pil = [Image.open(p).convert("RGB") for p in images]
    with torch.no_grad():
        img = model.get_image_features(**proc.image_processor(images=pil, return_tensors="pt"))
        tokens = proc.tokenizer(captions, padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
        if "siglip" in model.config.model_type:
            tokens = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
        txt = model.get_text_features(**tokens)
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    return (torch.nn.functional.normalize(img, dim=-1).numpy(), torch.nn.functional.normalize(txt, dim=-1).numpy())


def _table(tmp_path: Path, n: int, seed: int = 0) -> tuple[Path, list[Path], list[str]]:
    paths = [_image(tmp_path / "imgs" / f"{i}.png", seed * 1000 + i, size=(30 + 3 * i, 40 - i)) for i in range(n)]
    caps = _captions(n, seed)
    caps[0] = "a very long caption that is far longer than the text tower can read at once"
    table = tmp_path / "pairs.jsonl"
    table.write_text("".join(json.dumps({"image": f"imgs/{i}.png", "caption": c, "i": i}) + "\n" for i, c in enumerate(caps)))
    return table, paths, caps


def _cli(argv: list[str]) -> int:
    from dualsae.commands import extract as cmd

    parser = argparse.ArgumentParser(prog="dualsae")
    cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


# ---------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_cli_matches_direct_model_call(kind, models, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    table, paths, caps = _table(tmp_path, 11)
    out = tmp_path / "store"
    rc = _cli(["extract", "--model", str(models[kind]), "--format", "jsonl", "--table", str(table), "--out", str(out),
               "--batch-size", "4", "--shard-size", "5", "--workers", "2", "--device", "cpu", "--quiet"])
    assert rc == 0 and "extracted 11 rows" in capsys.readouterr().out
    store = PairedEmbeddings.open(out)
    padding, max_len = ("max_length", SIGLIP_MAX_LEN) if kind == "siglip" else (True, CLIP_MAX_LEN)
    ref_img, ref_txt = _direct(models[kind], paths, caps, padding, max_len)
    d = 24 if kind == "clip" else 32
    assert store.image.shape == (11, d) and store.text.shape == (11, d) and store.image.dtype == np.float32
    np.testing.assert_allclose(store.image, ref_img, atol=1e-5)
    np.testing.assert_allclose(store.text, ref_txt, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(store.image, axis=1), 1.0, atol=1e-5)
    assert [m["caption"] for m in store.meta] == caps and store.meta[3]["i"] == 3
    summary = json.loads((out / "extract.json").read_text())
    assert summary["dims"] == d and summary["normalized"] is True and summary["counts"]["rows"] == 11
    assert summary["text_padding"] == ("max_length" if kind == "siglip" else "longest")
    assert summary["text_max_length"] == max_len and summary["model_class"].lower().startswith(kind)
    assert not (out / ".shards").exists()


def test_no_normalize_and_fp16_store(clip_encoder, models, tmp_path):
    table, paths, caps = _table(tmp_path, 5)
    raw = DualEncoder.load(str(models["clip"]), device="cpu", normalize=False)
    s = extract(TableSource(table, "jsonl"), raw, tmp_path / "raw", ExtractConfig(normalize=False, store_dtype="float16", workers=0))
    store = PairedEmbeddings.open(tmp_path / "raw")
    assert store.image.dtype == np.float16 and s["normalized"] is False
    ref_img, _ = _direct(models["clip"], paths, caps, True, CLIP_MAX_LEN)
    norms = np.linalg.norm(np.asarray(store.image, np.float32), axis=1)
    assert np.all(np.abs(norms - 1) > 1e-3)  # really not normalised
    np.testing.assert_allclose(np.asarray(store.image, np.float32) / norms[:, None], ref_img, atol=2e-3)


# ---------------------------------------------------------------------- resume


def _wds(tmp_path: Path, n: int) -> Path:
    d = tmp_path / "wds"
    d.mkdir()
    caps = _captions(n, seed=5)
    for s in range(2):
        with tarfile.open(d / f"{s:05d}.tar", "w") as tar:
            for i in range(s * n // 2, (s + 1) * n // 2):
                buf = io.BytesIO()
                Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buf, format="JPEG")
                for ext, data in (("jpg", buf.getvalue()), ("txt", caps[i].encode())):
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return d


class _Stop(Exception):
    pass


def test_interrupted_extraction_resumes_identically(clip_encoder, tmp_path, monkeypatch):
    shards = _wds(tmp_path, 22)
    cfg = ExtractConfig(batch_size=3, shard_size=4, workers=2)
    full = extract(WebDatasetSource(shards), clip_encoder, tmp_path / "full", cfg, progress=False)

    def stop_after_1(index, entry):
        if index == 1:
            raise _Stop

    with pytest.raises(_Stop):
        extract(WebDatasetSource(shards), clip_encoder, tmp_path / "resumed", cfg, on_shard=stop_after_1, progress=False)
    finished = sorted(p.name for p in (tmp_path / "resumed" / ".shards").glob("*.done.json"))
    assert finished == ["00000.done.json", "00001.done.json"] and not (tmp_path / "resumed" / "image.npy").exists()
    # a shard file left behind by a crash before its done.json was written is simply overwritten
    (tmp_path / "resumed" / ".shards" / "00002.image.npy").write_bytes(b"garbage")

    embedded = []
    orig = DualEncoder.embed_prepared
    monkeypatch.setattr(DualEncoder, "embed_prepared", lambda self, p: embedded.append(len(p)) or orig(self, p))
    seen = []
    resumed = extract(WebDatasetSource(shards), clip_encoder, tmp_path / "resumed", cfg,
                      on_shard=lambda i, e: seen.append(i), progress=False)
    assert seen == [2, 3, 4, 5] and sum(embedded) == 22 - 8  # finished shards were not embedded again
    for name in ("image.npy", "text.npy", "meta.jsonl"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()
    assert full["counts"] == resumed["counts"] and full["counts"]["rows"] == 22
    assert not (tmp_path / "resumed" / ".shards").exists()
    # rerunning a finished extraction is a no-op; other settings are refused
    assert extract(WebDatasetSource(shards), clip_encoder, tmp_path / "full", cfg, progress=False) == full
    with pytest.raises(DataError, match="extract.json: this folder already holds an extraction with other settings"):
        extract(WebDatasetSource(shards), clip_encoder, tmp_path / "full", ExtractConfig(shard_size=5), progress=False)


def test_resume_with_other_settings_is_refused(clip_encoder, tmp_path):
    table, _, _ = _table(tmp_path, 6)
    with pytest.raises(_Stop):
        extract(TableSource(table, "jsonl"), clip_encoder, tmp_path / "s", ExtractConfig(shard_size=2, workers=0),
                on_shard=lambda i, e: (_ for _ in ()).throw(_Stop()), progress=False)
    with pytest.raises(DataError, match="progress.json: an unfinished extraction with other settings \\(limit\\)"):
        extract(TableSource(table, "jsonl"), clip_encoder, tmp_path / "s", ExtractConfig(shard_size=2, limit=3), progress=False)


def test_limit_reads_the_first_records(clip_encoder, tmp_path):
    table, _, caps = _table(tmp_path, 6)
    s = extract(TableSource(table, "jsonl"), clip_encoder, tmp_path / "s", ExtractConfig(shard_size=2, limit=3), progress=False)
    store = PairedEmbeddings.open(tmp_path / "s")
    assert s["counts"]["records"] == 3 and [m["caption"] for m in store.meta] == caps[:3]


# ---------------------------------------------------------------------- failures


def test_unreadable_images_are_skipped_and_counted(clip_encoder, models, tmp_path):
    table, paths, caps = _table(tmp_path, 7)
    paths[2].write_bytes(b"\x89PNG\r\n\x1a\n corrupt")
    paths[5].unlink()
    lines = table.read_text().splitlines()
    lines.append(json.dumps({"image": "imgs/3.png", "caption": ""}))  # no caption
    table.write_text("\n".join(lines) + "\n")
    out = tmp_path / "store"
    s = extract(TableSource(table, "jsonl"), clip_encoder, out, ExtractConfig(batch_size=2, shard_size=3), progress=False)
    keep = [0, 1, 3, 4, 6]
    assert s["counts"] == {"records": 8, "rows": 5, "images_embedded": 5, "texts_embedded": 5, "failures": 3}
    failures = json.loads((out / "extract.json").read_text())["failures"]
    assert [f["record"] for f in failures] == [2, 5, 7]
    assert "cannot decode" in failures[0]["error"] and "file not found" in failures[1]["error"]
    assert failures[2]["error"] == "no caption"
    store = PairedEmbeddings.open(out)
    assert [m["i"] for m in store.meta] == keep
    ref_img, ref_txt = _direct(models["clip"], [paths[i] for i in keep], [caps[i] for i in keep], True, CLIP_MAX_LEN)
    np.testing.assert_allclose(store.image, ref_img, atol=1e-5)
    np.testing.assert_allclose(store.text, ref_txt, atol=1e-5)


def test_model_errors(models, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(tmp_path / "vision")
    with pytest.raises(ConfigError, match="CLIPVisionModel has no get_image_features|has no get_text_features"):
        DualEncoder.load(str(tmp_path / "vision"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: has no config.json"):
        DualEncoder.load(str(tmp_path / "empty"), device="cpu")
    with pytest.raises(ConfigError, match="cannot load model 'no-such-org/no-such-model'"):
        DualEncoder.load("no-such-org/no-such-model", device="cpu")
    with pytest.raises(ConfigError, match="--shard-size must be >= 1"):
        ExtractConfig(shard_size=0)


# ---------------------------------------------------------------------- COCO and zero-shot


def test_coco_embeds_each_image_once(clip_encoder, models, tmp_path, monkeypatch):
    paths, images, anns = [], [], []
    for k, iid in enumerate([11, 22, 33]):
        paths.append(_image(tmp_path / "val" / f"{iid}.jpg", k))
        images.append({"id": iid, "file_name": f"{iid}.jpg"})
        anns += [{"image_id": iid, "id": 10 * iid + j, "caption": c} for j, c in enumerate(_captions(5, seed=iid))]
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": anns[::-1]}))
    embedded = []
    orig = DualEncoder.embed_prepared
    monkeypatch.setattr(DualEncoder, "embed_prepared", lambda self, p: embedded.append(len(p)) or orig(self, p))
    s = extract(CocoSource(tmp_path / "ann.json", tmp_path / "val"), clip_encoder, tmp_path / "coco", ExtractConfig(batch_size=2), progress=False)
    assert sum(embedded) == 3 and s["counts"]["images_embedded"] == 3 and s["counts"]["rows"] == 15
    store = PairedEmbeddings.open(tmp_path / "coco")
    groups = [m["group"] for m in store.meta]
    assert groups == [11] * 5 + [22] * 5 + [33] * 5 and [m["image_id"] for m in store.meta] == groups
    captions = [m["caption"] for m in store.meta]
    ref_img, ref_txt = _direct(models["clip"], paths, captions, True, CLIP_MAX_LEN)
    np.testing.assert_allclose(store.image, np.repeat(ref_img, 5, axis=0), atol=1e-5)
    np.testing.assert_allclose(store.text, ref_txt, atol=1e-5)
    # captions grouped per image, in the annotation file's order (the file lists them reversed)
    assert captions[:5] == [a["caption"] for a in anns[:5]][::-1]


def test_imagefolder_zero_shot_store(clip_encoder, tmp_path):
    for c, d in enumerate(["n1", "n0"]):
        for j in range(3):
            _image(tmp_path / "inet" / d / f"{j}.png", 10 * c + j)
    (tmp_path / "names.txt").write_text("red car\nblue dog\n")
    (tmp_path / "t.txt").write_text("a photo of a {}.\na picture of the {}\n")
    src = ImageFolderSource(tmp_path / "inet", tmp_path / "names.txt", tmp_path / "t.txt")
    out = tmp_path / "zs"
    extract(src, clip_encoder, out, ExtractConfig(batch_size=4, shard_size=4), progress=False)
    store = PairedEmbeddings.open(out)
    assert store.text is None and store.image.shape == (6, 24)
    assert [m["label"] for m in store.meta] == [0, 0, 0, 1, 1, 1] and store.meta[3]["class_name"] == "blue dog"
    assert json.loads((out / "classes.json").read_text()) == {"classes": ["red car", "blue dog"],
                                                              "templates": ["a photo of a {}.", "a picture of the {}"]}
    class_text = np.load(out / "class_text.npy")
    assert class_text.shape == (2, 2, 24) and class_text.dtype == np.float32
    np.testing.assert_allclose(class_text[1, 1], clip_encoder.embed_texts(["a picture of the blue dog"])[0], atol=1e-6)
    np.testing.assert_allclose(store.image[4], clip_encoder.embed_images([Image.open(tmp_path / "inet" / "n1" / "1.png").convert("RGB")])[0], atol=1e-6)


# ---------------------------------------------------------------------- torchrun


class _SecondOfTwoRanks(Distributed):
    """Rank 1 of 2 without a process group (its barriers have nobody to wait for)."""

    def __init__(self):
        super().__init__(rank=1, world=2)

    def barrier(self) -> None:
        pass


def test_rank_shards_leave_holes_that_a_single_process_resume_fills(clip_encoder, tmp_path):
    table, _, _ = _table(tmp_path, 11)
    cfg = ExtractConfig(batch_size=2, shard_size=2, workers=0)
    full = extract(TableSource(table, "jsonl"), clip_encoder, tmp_path / "full", cfg, progress=False)
    part = extract(TableSource(table, "jsonl"), clip_encoder, tmp_path / "out", cfg, progress=False, dist=_SecondOfTwoRanks())
    assert part == {"rank": 1, "shards": [1, 3, 5]} and not (tmp_path / "out" / "image.npy").exists()
    seen = []
    resumed = extract(TableSource(table, "jsonl"), clip_encoder, tmp_path / "out", cfg,
                      on_shard=lambda i, e: seen.append(i), progress=False)
    assert seen == [0, 2, 4] and resumed["counts"] == full["counts"]
    for name in ("image.npy", "text.npy", "meta.jsonl", "extract.json"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name


def test_two_rank_extraction_is_byte_identical(models, tmp_path):
    table, _, _ = _table(tmp_path, 9)
    args = ["extract", "--model", str(models["clip"]), "--format", "jsonl", "--table", str(table),
            "--batch-size", "2", "--shard-size", "2", "--workers", "0", "--device", "cpu", "--quiet"]
    # The ranks run with one torch thread each (OMP_NUM_THREADS=1, as torchrun sets it); so does the
    # single process here, since a matmul's float reductions differ with the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _cli(args + ["--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    outs = launch_ranks(["-m", "dualsae", *args, "--out", str(tmp_path / "two")])
    assert "extracted 9 rows" in outs[0] and outs[1] == ""  # rank 0 alone reports
    for name in ("image.npy", "text.npy", "meta.jsonl", "extract.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert not (tmp_path / "two" / ".shards").exists()
    manifest = check_finished(tmp_path / "two")  # rank 0 claimed the folder and committed it last
    assert manifest["complete"] and {"image.npy", "text.npy", "extract.json"} <= set(manifest["files"])
    verify_files(tmp_path / "two", manifest)
    # rank 0 takes the folder's lock: with another process holding it, both ranks stop at once (exit 2)
    with output_lock(tmp_path / "three"):
        procs = start_ranks(["-m", "dualsae", *args, "--out", str(tmp_path / "three")])
        errs = wait_ranks(procs)
    assert [p.returncode for p in procs] == [2, 2], errs
    assert f"in use by another dualsae process (pid {os.getpid()})" in errs[0] and "rank 0 stopped" in errs[1]
    assert not (tmp_path / "three" / "image.npy").exists()


# ---------------------------------------------------------------------- faults (issue 9)


def test_extraction_killed_while_assembling_is_not_a_store(models, tmp_path, capsys):
    """SIGKILL after the arrays are assembled, before meta.jsonl/extract.json: the folder must not
    pass for a store (train refuses it in one line) until the same extract is rerun."""
    from dualsae.cli import main
    from tests.fault_helpers import KILLED, one_line_error, run_cli

    table, _, _ = _table(tmp_path, 5)
    out = tmp_path / "store"
    args = ["extract", "--model", models["clip"], "--format", "jsonl", "--table", table, "--out", out, "--device", "cpu",
            "--workers", "0", "--quiet"]
    killed = run_cli(args, fault="extract-assembly")
    assert killed.returncode == KILLED, killed.stderr
    assert (out / "image.npy").is_file() and not (out / "extract.json").exists()
    code = main(["train", "--data", str(out), "--out", str(tmp_path / "run"), "--latents", "8", "--k", "2", "--no-progress"])
    assert one_line_error(code, capsys.readouterr().err, "unfinished extraction", "rerun the same 'dualsae extract'")
    assert main([str(a) for a in args]) == 0
    assert PairedEmbeddings.open(out).n == 5 and not (out / ".shards").exists()


def test_extraction_errors_leave_nothing_and_say_one_line(models, tmp_path):
    table, paths, _ = _table(tmp_path, 3)
    for p in paths:
        p.unlink()  # every image unreadable
    out = tmp_path / "store"
    with pytest.raises(DataError, match="no record could be embedded"):
        _cli(["extract", "--model", str(models["clip"]), "--format", "jsonl", "--table", str(table), "--out", str(out), "--device", "cpu", "--quiet"])
    assert not (out / ".shards").exists() and not out.exists()
    bad_csv = tmp_path / "t.csv"
    bad_csv.write_bytes(b"image,caption\nimgs/0.png,caf\xe9 au lait\n")
    with pytest.raises(DataError, match=r"t.csv: not UTF-8 text"):
        _cli(["extract", "--model", str(models["clip"]), "--format", "csv", "--table", str(bad_csv), "--out", str(out), "--quiet"])
    with pytest.raises(DataError, match="no such model folder"):
        DualEncoder.load(str(tmp_path / "models" / "clip-b32"), device="cpu")
    torn = tmp_path / "torn"
    import shutil

    shutil.copytree(models["clip"], torn)
    weights = next(torn.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConfigError, match="cannot load model"):
        DualEncoder.load(str(torn), device="cpu")
