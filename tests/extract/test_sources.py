"""Extraction readers: COCO, webdataset, class folders, CSV/JSONL, image decoding."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dualsae.core.errors import ConfigError, DataError
from dualsae.extract.records import ImageLoadError, load_image
from dualsae.extract.sources import DEFAULT_TEMPLATES, CocoSource, ImageFolderSource, TableSource, WebDatasetSource, make_source, read_templates


def _png(path: Path, color: tuple[int, int, int], size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _jpeg_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG")
    return buf.getvalue()


# ---------------------------------------------------------------------- COCO


@pytest.fixture
def coco(tmp_path: Path) -> dict:
    imgs = tmp_path / "val2014"
    images, anns = [], []
    for k, iid in enumerate([42, 7, 300, 5]):
        fn = f"COCO_val2014_{iid:012d}.jpg"
        _png(imgs / fn, (k * 40, 0, 0))
        images.append({"id": iid, "file_name": fn, "height": 10, "width": 12})
    n_caps = {42: 5, 7: 6, 300: 5, 5: 0}  # image 5 has no caption
    aid = 0
    # interleave annotations of different images, as the real file does
    for j in range(6):
        for iid in (42, 7, 300):
            if j < n_caps[iid]:
                anns.append({"image_id": iid, "id": aid, "caption": f" img{iid} cap{j} "})
                aid += 1
    ann_path = tmp_path / "captions_val2014.json"
    ann_path.write_text(json.dumps({"images": images, "annotations": anns}))
    return {"ann": ann_path, "imgs": imgs, "root": tmp_path}


def test_coco_groups_captions_per_image(coco):
    src = CocoSource(coco["ann"], coco["imgs"])
    recs = list(src)
    assert [r.meta["image_id"] for r in recs] == [42, 7, 300]  # file order; image 5 has no caption
    assert src.count() == 3 and src.describe()["images_without_captions"] == 1
    assert recs[0].captions == tuple(f"img42 cap{j}" for j in range(5))
    assert len(recs[1].captions) == 6
    assert all(r.meta["group"] == r.meta["image_id"] for r in recs)
    assert recs[0].image == coco["imgs"] / "COCO_val2014_000000000042.jpg"
    assert load_image(recs[0].image).size == (12, 10)
    capped = CocoSource(coco["ann"], coco["imgs"], max_captions=5)
    assert [len(r.captions) for r in capped] == [5, 5, 5]
    assert capped.describe()["n_captions"] == 15


def test_coco_split_file_by_name_and_id(coco):
    split = coco["root"] / "test.txt"
    split.write_text("val2014/COCO_val2014_000000000300.jpg\n\n42\n")
    recs = list(CocoSource(coco["ann"], coco["imgs"], split))
    assert [r.meta["image_id"] for r in recs] == [42, 300]
    split.write_text("42\nCOCO_val2014_000000099999.jpg\n")
    with pytest.raises(DataError, match="1 entries name no image.*000000099999"):
        CocoSource(coco["ann"], coco["imgs"], split)


def test_coco_errors(coco, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="bad.json: field 'annotations'"):
        CocoSource(bad, coco["imgs"])
    with pytest.raises(DataError, match="not a folder"):
        CocoSource(coco["ann"], tmp_path / "nope")
    with pytest.raises(ConfigError, match="--annotations is required"):
        make_source("coco", images=coco["imgs"])


# ---------------------------------------------------------------------- webdataset


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def wds(tmp_path: Path) -> Path:
    d = tmp_path / "cc3m"
    d.mkdir()
    with tarfile.open(d / "00000.tar", "w") as tar:
        for k in range(3):
            key = f"0000000{k}"
            _add(tar, f"{key}.jpg", _jpeg_bytes((k * 50, 10, 10)))
            _add(tar, f"{key}.txt", f"caption {k}".encode())
            _add(tar, f"{key}.json", json.dumps({"url": f"http://x/{k}.jpg", "key": key}).encode())
        _add(tar, "00000003.jpg", _jpeg_bytes((1, 2, 3)))  # no caption
    with tarfile.open(d / "00001.tar", "w") as tar:
        _add(tar, "00010000.txt", b"no image here")  # no image
        _add(tar, "00010001.jpg", _jpeg_bytes((9, 9, 9)))
        _add(tar, "00010001.txt", "caf\u00e9 caption".encode())
    (d / "00000_stats.json").write_text(json.dumps({"successes": 4}))
    (d / "00001_stats.json").write_text(json.dumps({"successes": 2}))
    return d


def test_webdataset_records(wds):
    src = make_source("cc3m", shards=wds)
    recs = list(src)
    assert len(recs) == 6 and src.count() == 6
    assert [r.meta["key"] for r in recs] == ["00000000", "00000001", "00000002", "00000003", "00010000", "00010001"]
    assert recs[1].captions == ("caption 1",) and recs[1].meta["url"] == "http://x/1.jpg"
    assert recs[1].meta["shard"] == "00000.tar"
    assert np.asarray(load_image(recs[1].image))[0, 0, 0] == pytest.approx(50, abs=6)
    assert recs[3].captions == () and recs[4].image is None
    assert recs[5].captions == ("caf\u00e9 caption",)
    with pytest.raises(ImageLoadError, match="no image file"):
        load_image(recs[4].image)
    # glob and explicit file list read the same; a missing stats file makes the count unknown
    assert len(list(WebDatasetSource(str(wds / "0000*.tar")))) == 6
    assert len(list(WebDatasetSource([wds / "00001.tar"]))) == 2
    (wds / "00001_stats.json").unlink()
    assert WebDatasetSource(wds).count() is None


def test_webdataset_truncated_shard_is_recorded(wds):
    data = (wds / "00000.tar").read_bytes()
    (wds / "00000.tar").write_bytes(data[: 512 * 9])  # ends inside a member
    src = WebDatasetSource(wds)
    recs = list(src)
    assert len(src.shard_errors) == 1 and src.shard_errors[0]["shard"].endswith("00000.tar")
    assert [r.meta["key"] for r in recs][-2:] == ["00010000", "00010001"]  # the next shard is still read
    with pytest.raises(DataError, match="matches no file"):
        WebDatasetSource(str(wds / "*.zip"))


# ---------------------------------------------------------------------- class folders


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet"
    for c, d in enumerate(["n02", "n01", "n03_x"]):
        for j in range(2):
            _png(root / d / f"img{j}.JPEG", (c * 60, j * 60, 0))
    (root / "n01" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_labels_and_names(folders, tmp_path):
    src = ImageFolderSource(folders)
    recs = list(src)
    assert src.classes == ["n01", "n02", "n03 x"] and src.kind == "classes"
    assert [r.meta["label"] for r in recs] == [0, 0, 1, 1, 2, 2] and src.count() == 6
    assert recs[2].meta == {"label": 1, "class_name": "n02", "file": "n02/img0.JPEG"}
    assert all(r.captions == () for r in recs)
    assert src.templates == list(DEFAULT_TEMPLATES)
    names = tmp_path / "names.txt"
    names.write_text("goldfish\ntench\ngreat white shark\n")
    assert ImageFolderSource(folders, names).classes == ["goldfish", "tench", "great white shark"]
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"n03_x": "shark", "n01": "goldfish", "n02": "tench"}))
    src = ImageFolderSource(folders, mapping)
    assert src.classes == ["goldfish", "tench", "shark"]
    assert [r.meta["class_name"] for r in src][4] == "shark"
    names.write_text("a\nb\n")
    with pytest.raises(DataError, match="lists 2 class names.*3 class folders"):
        ImageFolderSource(folders, names)
    mapping.write_text(json.dumps({"n01": "a"}))
    with pytest.raises(DataError, match="no name for class folder 'n02'"):
        ImageFolderSource(folders, mapping)


def test_templates_file(tmp_path):
    t = tmp_path / "t.txt"
    t.write_text("a photo of a {}.\n\na sketch of {}\n")
    assert read_templates(t) == ["a photo of a {}.", "a sketch of {}"]
    t.write_text("no placeholder\n")
    with pytest.raises(DataError, match="line 1"):
        read_templates(t)


# ---------------------------------------------------------------------- CSV / JSONL


def test_csv_and_jsonl(tmp_path):
    _png(tmp_path / "imgs" / "a.png", (255, 0, 0))
    absolute = _png(tmp_path / "elsewhere" / "b.png", (0, 255, 0))
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text(f'img,text,split\nimgs/a.png,"a red, square",train\n{absolute},green,test\nimgs/missing.png,,train\n')
    src = make_source("csv", table=csv_path, image_col="img", caption_col="text")
    recs = list(src)
    assert src.count() == 3
    assert recs[0].image == tmp_path / "imgs" / "a.png" and recs[0].captions == ("a red, square",)
    assert recs[0].meta == {"split": "train", "image": "imgs/a.png"}
    assert recs[1].image == absolute and recs[2].captions == ()
    with pytest.raises(DataError, match="has no column 'caption' \\(--caption-col\\); found columns \\['img', 'text', 'split'\\]"):
        TableSource(csv_path, "csv", image_col="img")

    jl = tmp_path / "pairs.jsonl"
    jl.write_text(json.dumps({"image": "imgs/a.png", "caption": "red", "id": 3}) + "\n\n"
                  + json.dumps({"image": "imgs/a.png", "caption": "again"}) + "\n")
    recs = list(make_source("jsonl", table=jl))
    assert [r.captions for r in recs] == [("red",), ("again",)] and recs[0].meta == {"id": 3, "image": "imgs/a.png"}
    jl.write_text(json.dumps({"image": "imgs/a.png", "caption": "red"}) + "\n" + json.dumps({"image": "x"}) + "\n")
    with pytest.raises(DataError, match="line 2 has no field 'caption'"):
        TableSource(jl, "jsonl")


def test_load_image_errors(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageLoadError, match="bad.jpg: cannot decode"):
        load_image(bad)
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "none.jpg")
    good = _png(tmp_path / "g.png", (1, 2, 3))
    truncated = tmp_path / "t.png"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError):
        load_image(truncated)
    assert load_image(good).mode == "RGB"
