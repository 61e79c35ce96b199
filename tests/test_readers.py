"""Dataset readers (COCO, webdataset, class folders, CSV/JSONL) and the clip-retrieval layout."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dualsae.store.paired import PairedEmbeddings, write_store
from dualsae.core.errors import ConfigError, DataError
from dualsae.extract.sources import DEFAULT_TEMPLATES, CocoSource, ImageFolderSource, TableSource, WebDatasetSource, make_source, read_templates
from dualsae.extract.records import load_image
from dualsae.extract.records import ImageLoadError
from dualsae.store.clip_retrieval import ShardedRows
from dualsae.store.paired import open_store


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


# ---------------------------------------------------------------------- clip-retrieval


def _clip_retrieval(root: Path, sizes=(5, 3), d=6, dtype=np.float16, text_sizes=None) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    text_sizes = text_sizes or sizes
    imgs, txts = [], []
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    row = 0
    for i, (n, nt) in enumerate(zip(sizes, text_sizes)):
        a = rng.standard_normal((n, d)).astype(dtype)
        b = rng.standard_normal((nt, d)).astype(dtype)
        np.save(root / "img_emb" / f"img_emb_{i}.npy", a)
        np.save(root / "text_emb" / f"text_emb_{i}.npy", b)
        table = pa.table({"caption": [f"c{row + j}" for j in range(n)], "url": [f"u{row + j}" for j in range(n)],
                          "key": [f"{row + j:09d}" for j in range(n)], "width": list(range(n))})
        pq.write_table(table, root / "metadata" / f"metadata_{i}.parquet")
        imgs.append(a)
        txts.append(b)
        row += n
    return np.concatenate(imgs), np.concatenate(txts)


def test_clip_retrieval_reads_without_copy(tmp_path):
    img, txt = _clip_retrieval(tmp_path / "cr", sizes=(5, 3, 4))
    store = open_store(tmp_path / "cr")
    assert isinstance(store, PairedEmbeddings)
    assert isinstance(store.image, ShardedRows) and isinstance(store.text, ShardedRows)
    assert all(isinstance(s, np.memmap) for s in store.image.shards + store.text.shards)
    assert store.image.shape == (12, 6) and store.image.dtype == np.float16 and len(store) == 12
    np.testing.assert_array_equal(store.image[:], img)
    np.testing.assert_array_equal(store.text[3:9], txt[3:9])  # crosses two shard boundaries
    np.testing.assert_array_equal(store.text[7], txt[7])
    np.testing.assert_array_equal(store.text[-1], txt[-1])
    np.testing.assert_array_equal(store.image[1:11:3], img[1:11:3])
    idx = np.array([0, 4, 5, 8, 11])
    np.testing.assert_array_equal(store.image[idx], img[idx])
    unsorted = np.array([11, 0, 6, 6, 2])
    np.testing.assert_array_equal(store.text[unsorted], txt[unsorted])
    np.testing.assert_array_equal(np.asarray(store.image), img)
    # the store's own reader (float32 tensors) over a subset view
    sub = store.subset([2, 5, 9])
    np.testing.assert_allclose(sub.read("text").numpy(), txt[[2, 5, 9]].astype(np.float32))
    assert [m["caption"] for m in sub.meta_rows()] == ["c2", "c5", "c9"]
    assert store.meta[7] == {"caption": "c7", "url": "u7", "key": "000000007", "width": 2}  # every column kept
    with pytest.raises(IndexError):
        store.image[12]


def test_clip_retrieval_numeric_shard_order(tmp_path):
    img, _ = _clip_retrieval(tmp_path / "cr", sizes=tuple([1] * 11))
    store = open_store(tmp_path / "cr")
    assert [p.name for p in store.image.paths][-2:] == ["img_emb_9.npy", "img_emb_10.npy"]
    np.testing.assert_array_equal(store.image[:], img)


def test_clip_retrieval_errors(tmp_path):
    _clip_retrieval(tmp_path / "a", sizes=(5, 3), text_sizes=(5, 2))
    with pytest.raises(DataError, match="text_emb_1.npy: has 2 rows, img_emb_1.npy has 3"):
        open_store(tmp_path / "a")
    _clip_retrieval(tmp_path / "b", sizes=(5, 3))
    (tmp_path / "b" / "text_emb" / "text_emb_1.npy").unlink()
    with pytest.raises(DataError, match="img_emb_1.npy: has no counterpart in text_emb/"):
        open_store(tmp_path / "b")
    _clip_retrieval(tmp_path / "c", sizes=(5, 3))
    (tmp_path / "c" / "metadata" / "metadata_1.parquet").unlink()
    with pytest.raises(DataError, match="1 metadata shards, 2 embedding shards"):
        open_store(tmp_path / "c")
    _clip_retrieval(tmp_path / "d", sizes=(5, 3))
    np.save(tmp_path / "d" / "img_emb" / "img_emb_1.npy", np.zeros((3, 4), np.float16))
    with pytest.raises(DataError, match="img_emb_1.npy: dimension 4"):
        open_store(tmp_path / "d")


def test_open_store_plain_layout(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_store(tmp_path / "s", a, a + 1, [{"caption": str(i)} for i in range(4)])
    store = open_store(tmp_path / "s")
    assert isinstance(store.image, np.ndarray) and store.meta[2] == {"caption": "2"}
    np.testing.assert_array_equal(store.read("text").numpy(), a + 1)


def test_sharded_store_splits_batches_and_trains_like_the_concatenated_store(tmp_path):
    """A clip-retrieval folder of unequal shards, read shard by shard, gives the same seeded split,
    the same batches and the same trained weights as one store holding the concatenated arrays."""
    import torch

    from dualsae.training.config import TrainConfig
    from dualsae.training.trainer import train

    img, txt = _clip_retrieval(tmp_path / "cr", sizes=(37, 101, 5, 62), d=8, dtype=np.float32)
    sharded = open_store(tmp_path / "cr").split("train", test_fraction=0.25, seed=3)
    whole = PairedEmbeddings.open(write_store(tmp_path / "one", img, txt)).split("train", test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(sharded.index, whole.index)
    pos = np.random.default_rng(0).permutation(sharded.n)[:50]  # a batch crossing every shard
    for mod in ("image", "text"):
        assert torch.equal(sharded.read(mod, pos), whole.read(mod, pos))
    cfg = TrainConfig.from_preset(method="specific", latents=32, k=4, batch_size=16, epochs=2, preset="synthetic")
    a, b = train(sharded, cfg, progress=False), train(whole, cfg, progress=False)
    for mod in ("image", "text"):
        for (name, va), vb in zip(a.sae_for(mod).state_dict().items(), b.sae_for(mod).state_dict().values()):
            assert torch.equal(va, vb), f"{mod}.{name} differs between the sharded and the concatenated store"
