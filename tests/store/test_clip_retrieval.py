"""The clip-retrieval layout (img_emb/, text_emb/, metadata/ shards) and store opening by layout."""

from __future__ import annotations

import numpy as np
import pytest

from dualsae.core.errors import DataError
from dualsae.store.clip_retrieval import ShardedRows
from dualsae.store.paired import PairedEmbeddings, open_store, write_store
from tests.helpers import make_clip_retrieval


def test_clip_retrieval_reads_without_copy(tmp_path):
    img, txt = make_clip_retrieval(tmp_path / "cr", sizes=(5, 3, 4))
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
    img, _ = make_clip_retrieval(tmp_path / "cr", sizes=tuple([1] * 11))
    store = open_store(tmp_path / "cr")
    assert [p.name for p in store.image.paths][-2:] == ["img_emb_9.npy", "img_emb_10.npy"]
    np.testing.assert_array_equal(store.image[:], img)


def test_clip_retrieval_errors(tmp_path):
    make_clip_retrieval(tmp_path / "a", sizes=(5, 3), text_sizes=(5, 2))
    with pytest.raises(DataError, match="text_emb_1.npy: has 2 rows, img_emb_1.npy has 3"):
        open_store(tmp_path / "a")
    make_clip_retrieval(tmp_path / "b", sizes=(5, 3))
    (tmp_path / "b" / "text_emb" / "text_emb_1.npy").unlink()
    with pytest.raises(DataError, match="img_emb_1.npy: has no counterpart in text_emb/"):
        open_store(tmp_path / "b")
    make_clip_retrieval(tmp_path / "c", sizes=(5, 3))
    (tmp_path / "c" / "metadata" / "metadata_1.parquet").unlink()
    with pytest.raises(DataError, match="1 metadata shards, 2 embedding shards"):
        open_store(tmp_path / "c")
    make_clip_retrieval(tmp_path / "d", sizes=(5, 3))
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

    img, txt = make_clip_retrieval(tmp_path / "cr", sizes=(37, 101, 5, 62), d=8, dtype=np.float32)
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


# ---------------------------------------------------------------------- issue 20: damaged clip-retrieval folders


def test_a_gap_in_the_shard_numbers_is_an_error_naming_the_missing_shard(tmp_path):
    make_clip_retrieval(tmp_path / "cr", sizes=(2, 3, 4))
    for sub, suffix in (("img_emb", ".npy"), ("text_emb", ".npy"), ("metadata", ".parquet")):
        (tmp_path / "cr" / sub / f"{sub}_1{suffix}").unlink()  # in every folder, so the counts still agree
    with pytest.raises(DataError, match=r"img_emb/img_emb_1.npy: missing \(img_emb_2.npy follows img_emb_0.npy\)"):
        open_store(tmp_path / "cr")
    make_clip_retrieval(tmp_path / "late", sizes=(2, 3))
    for sub, suffix in (("img_emb", ".npy"), ("text_emb", ".npy"), ("metadata", ".parquet")):
        (tmp_path / "late" / sub / f"{sub}_0{suffix}").unlink()
    with pytest.raises(DataError, match=r"img_emb_0.npy: missing \(img_emb_1.npy is the first shard\)"):
        open_store(tmp_path / "late")


def test_eleven_shards_keep_the_row_order_clip_retrieval_wrote(tmp_path):
    img, txt = make_clip_retrieval(tmp_path / "cr", sizes=tuple(range(1, 12)))
    store = open_store(tmp_path / "cr")
    np.testing.assert_array_equal(store.image[:], img)
    np.testing.assert_array_equal(store.text[:], txt)
    assert [m["caption"] for m in store.meta] == [f"c{i}" for i in range(len(img))]
    # The split follows the rows: the same as a plain store of the concatenated arrays.
    write_store(tmp_path / "flat", img, txt)
    a = store.split("train", test_fraction=0.25, seed=3)
    b = open_store(tmp_path / "flat").split("train", test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(a.image[:], b.image[:])


def test_nan_in_a_shard_names_that_shard_file(tmp_path):
    make_clip_retrieval(tmp_path / "cr", sizes=(5, 3, 4), dtype=np.float32)
    bad = np.load(tmp_path / "cr" / "img_emb" / "img_emb_2.npy")
    bad[1, 3] = np.nan
    np.save(tmp_path / "cr" / "img_emb" / "img_emb_2.npy", bad)
    with pytest.raises(DataError, match=r"img_emb/img_emb_2.npy: row 1 contains NaN"):
        open_store(tmp_path / "cr")


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "empty", "folder"])
def test_damaged_metadata_parquet_is_one_line(tmp_path, damage):
    make_clip_retrieval(tmp_path / "cr", sizes=(5, 3))
    p = tmp_path / "cr" / "metadata" / "metadata_1.parquet"
    raw = p.read_bytes()
    p.unlink()
    if damage == "corrupt":
        p.write_bytes(raw[:8] + bytes(b ^ 0xFF for b in raw[8:-8]) + raw[-8:])
    elif damage == "truncated":
        p.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        p.write_bytes(b"")
    else:
        p.mkdir()
    with pytest.raises(DataError, match=r"metadata/metadata_1.parquet: (not a readable parquet file|damaged parquet file|is a folder)") as e:
        open_store(tmp_path / "cr")
    assert "\n" not in str(e.value)
