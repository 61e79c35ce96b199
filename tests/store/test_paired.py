"""Paired-embedding store: validation errors, splits, memory mapping."""

from __future__ import annotations

import numpy as np
import pytest

from dualsae.core.errors import DataError
from dualsae.store.paired import PairedEmbeddings, epoch_order, write_store
from tests.helpers import make_store


def test_open_is_memory_mapped_and_reads_rows(tmp_path):
    make_store(tmp_path / "s", n=100, d=8, dtype=np.float16)
    s = PairedEmbeddings.open(tmp_path / "s")
    assert isinstance(s.image, np.memmap) and isinstance(s.text, np.memmap)
    assert (s.n, s.d) == (100, 8)
    pos = np.array([7, 3, 50])
    got = s.read("image", pos).numpy()
    assert np.array_equal(got, np.load(tmp_path / "s" / "image.npy")[pos].astype(np.float32))


def test_split_from_meta_and_seeded(tmp_path):
    make_store(tmp_path / "s", n=100, d=8)
    s = PairedEmbeddings.open(tmp_path / "s")
    test = s.split("test")
    assert test.n == 20 and all(r["split"] == "test" for r in test.meta_rows())
    make_store(tmp_path / "t", n=100, d=8, split=False)
    t = PairedEmbeddings.open(tmp_path / "t")
    a, b = t.split("train", seed=3), t.split("test", seed=3)
    assert a.n == 80 and b.n == 20
    assert set(a.index).isdisjoint(b.index)
    assert np.array_equal(t.split("test", seed=3).index, b.index)
    with pytest.raises(DataError, match="no row has split 'val'"):
        s.split("val")


def test_image_only_store(tmp_path):
    make_store(tmp_path / "s", n=30, d=8, text=False)
    s = PairedEmbeddings.open(tmp_path / "s")
    assert s.has("image") and not s.has("text")
    with pytest.raises(DataError, match="has no text.npy, which method group-sparse needs"):
        s.require_pairs("method group-sparse")


def _bad(tmp_path, name, image, text):
    folder = tmp_path / name
    folder.mkdir()
    if image is not None:
        np.save(folder / "image.npy", image)
    if text is not None:
        np.save(folder / "text.npy", text)
    return folder


@pytest.mark.parametrize(
    "image,text,pattern",
    [
        (np.ones((5, 4), np.float32), np.ones((4, 4), np.float32), r"text.npy has 4 rows, image.npy has 5"),
        (np.ones((5, 4), np.float32), np.ones((5, 3), np.float32), r"text.npy has dimension 3, image.npy has 4"),
        (np.ones((5, 4), np.int32), None, r"dtype is int32, expected float16 or float32"),
        (np.ones((5, 4), np.float64), None, r"dtype is float64, expected float16 or float32"),
        (np.ones((0, 4), np.float32), None, r"expected at least one row"),
        (np.ones(5, np.float32), None, r"expected 2 dimensions"),
    ],
)
def test_store_validation_errors(tmp_path, image, text, pattern):
    with pytest.raises(DataError, match=pattern):
        PairedEmbeddings.open(_bad(tmp_path, "b", image, text))


@pytest.mark.parametrize("bad,word", [(np.nan, "NaN"), (np.inf, "inf")])
def test_non_finite_rows_named(tmp_path, bad, word):
    x = np.ones((10, 4), np.float32)
    x[7, 2] = bad
    with pytest.raises(DataError, match=rf"image.npy: row 7 contains {word}"):
        PairedEmbeddings.open(_bad(tmp_path, "b", x, np.ones((10, 4), np.float32)))


def test_empty_and_truncated_npy(tmp_path):
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "image.npy").write_bytes(b"")
    with pytest.raises(DataError, match="file is empty"):
        PairedEmbeddings.open(folder)
    folder2 = tmp_path / "t"
    folder2.mkdir()
    np.save(folder2 / "image.npy", np.ones((100, 8), np.float32))
    raw = (folder2 / "image.npy").read_bytes()
    (folder2 / "image.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated or not a valid .npy"):
        PairedEmbeddings.open(folder2)
    folder3 = tmp_path / "o"
    folder3.mkdir()
    np.save(folder3 / "image.npy", np.array([[object()]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="needs pickle"):
        PairedEmbeddings.open(folder3)


def test_meta_row_count_checked(tmp_path):
    write_store(tmp_path / "m", np.ones((3, 2)), np.ones((3, 2)))
    (tmp_path / "m" / "meta.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
    with pytest.raises(DataError, match="meta.jsonl: has 2 rows, the embeddings have 3"):
        PairedEmbeddings.open(tmp_path / "m")
    (tmp_path / "m" / "meta.jsonl").write_text('{"a": 1}\n[1]\n{"a": 3}\n')
    with pytest.raises(DataError, match="line 2 is a JSON list"):
        PairedEmbeddings.open(tmp_path / "m")


def test_epoch_order_is_a_pure_function():
    assert np.array_equal(epoch_order(50, 1, 2), epoch_order(50, 1, 2))
    assert not np.array_equal(epoch_order(50, 1, 2), epoch_order(50, 1, 3))
    assert sorted(epoch_order(50, 1, 2)) == list(range(50))


def test_atomic_files_get_normal_permissions(tmp_path):
    import os
    import stat

    from dualsae.files.atomic import write_json

    write_json(tmp_path / "a.json", {"x": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind
