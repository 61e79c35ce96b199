"""Sparse coactivation statistics (eq. 5): co-firing pair sums equal the dense accumulator's exactly,
across buffer merges, shards, tiles and two gloo ranks; the sparse C and its /2 file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualsae.alignment.coactivation import stats_from_codes
from dualsae.alignment.cofiring import CofiringSums
from dualsae.alignment.correlation import CoactivationStats, load_correlation, load_sparse_correlation
from dualsae.alignment.sparse_correlation import SparseCorrelation, save_sparse_correlation
from dualsae.core.codes import SparseCodes
from dualsae.core.errors import CheckpointError


def dyadic_codes(gen: torch.Generator, n: int, m: int, k: int, repeats: bool = True, signed: bool = False) -> SparseCodes:
    """Codes whose values are multiples of 1/8 in [0, 2) (or (-2, 2)): every float64 sum of their products
    is exact, so sums in any order agree bit for bit. ``repeats``: indices may repeat within a row."""
    if repeats:
        idx = torch.randint(0, m, (n, k), generator=gen)
    else:
        idx = torch.stack([torch.randperm(m, generator=gen)[:k] for _ in range(n)])
    vals = torch.randint(0, 16, (n, k), generator=gen).double() / 8  # zeros included: inactive picks
    if signed:
        vals = vals * (torch.randint(0, 2, (n, k), generator=gen) * 2 - 1)
    return SparseCodes(vals.float(), idx, m)


def _dense_and_sparse(ci: SparseCodes, ct: SparseCodes, batch: int, buffer_pairs: int | None = None):
    d = stats_from_codes(ci, ct, batch_size=batch)
    s = CoactivationStats(ci.m, ct.m, sparse=True)
    if buffer_pairs is not None:
        s.pairs.buffer_pairs = buffer_pairs
    for a in range(0, ci.batch, batch):
        s.update(SparseCodes(ci.values[a : a + batch], ci.indices[a : a + batch], ci.m),
                 SparseCodes(ct.values[a : a + batch], ct.indices[a : a + batch], ct.m))
    return d, s


def _assert_same_sums(dense: CoactivationStats, sparse: CoactivationStats) -> None:
    keys, sums, counts = sparse.pairs.entries()
    flat = dense.cross.view(-1)
    assert torch.equal(keys, keys.sort().values) and len(keys.unique()) == len(keys)
    assert torch.equal(flat[keys], sums), "S_ij of co-firing pairs must equal the dense sums exactly"
    rest = torch.ones(len(flat), dtype=torch.bool)
    rest[keys] = False
    assert torch.equal(flat[rest], torch.zeros(int(rest.sum()), dtype=torch.float64)), "a pair left out must have S_ij = 0"
    for name in ("sum_i", "sumsq_i", "fired_i", "sum_t", "sumsq_t", "fired_t"):
        assert torch.equal(getattr(dense, name), getattr(sparse, name)), name
    assert dense.n == sparse.n


@pytest.mark.parametrize("signed", [False, True])
def test_sparse_sums_equal_dense_exactly(signed):
    gen = torch.Generator().manual_seed(3 + signed)
    ci, ct = dyadic_codes(gen, 700, 40, 6, signed=signed), dyadic_codes(gen, 700, 33, 5, signed=signed)
    dense, sparse = _dense_and_sparse(ci, ct, batch=64, buffer_pairs=500)  # many buffer merges
    _assert_same_sums(dense, sparse)
    # counts: brute force over rows of the dense codes (repeated indices coalesced)
    zi, zt = ci.to_dense().double().numpy(), ct.to_dense().double().numpy()
    count = (zi != 0).astype(np.int64).T @ (zt != 0).astype(np.int64)
    keys, _, counts = sparse.pairs.entries()
    assert np.array_equal(count.reshape(-1)[keys.numpy()], counts.numpy())
    assert np.array_equal(np.flatnonzero(count.reshape(-1)), keys.numpy()), "every co-firing pair kept, no other"
    # the correlation: dense() of the sparse form equals the dense path and a brute-force Pearson
    c, li, lt = dense.correlation()
    sc = sparse.sparse_correlation()
    assert np.array_equal(sc.live_image, li.numpy()) and np.array_equal(sc.live_text, lt.numpy())
    np.testing.assert_allclose(sc.dense().numpy(), c.numpy(), rtol=0, atol=1e-15)
    ref = np.corrcoef(zi[:, li.numpy()].T, zt[:, lt.numpy()].T)[: len(li), len(li):]
    np.testing.assert_allclose(sc.dense().numpy(), ref, atol=1e-12)
    # a never-co-firing pair has exactly the rank-one value -a_i b_j
    off = np.flatnonzero(count[np.ix_(li.numpy(), lt.numpy())].reshape(-1) == 0)
    if len(off):
        r, k = np.divmod(off, len(lt))
        assert np.array_equal(sc.lookup(r, k), -(sc.a[r] * sc.b[k]))


def test_merge_of_shards_and_tiles_equal_one_pass():
    gen = torch.Generator().manual_seed(11)
    ci, ct = dyadic_codes(gen, 600, 50, 7), dyadic_codes(gen, 600, 44, 7)
    dense, whole = _dense_and_sparse(ci, ct, batch=100)
    shards = []
    for a in (0, 250, 430):
        b = {0: 250, 250: 430, 430: 600}[a]
        shards.append(stats_from_codes(SparseCodes(ci.values[a:b], ci.indices[a:b], 50), SparseCodes(ct.values[a:b], ct.indices[a:b], 44),
                                       batch_size=37, sparse=True))
    merged = shards[0].merge(shards[1]).merge(shards[2])
    _assert_same_sums(dense, merged)
    # tiles over image-latent blocks: disjoint key ranges, concatenated in order
    tiles = []
    for lo, hi in ((0, 17), (17, 30), (30, 50)):
        t = CoactivationStats(50, 44, sparse=True, image_block=(lo, hi))
        t.update(ci, ct)
        tiles.append(t)
    tiled = tiles[0].add_tile(tiles[1]).add_tile(tiles[2])
    _assert_same_sums(dense, tiled)
    with pytest.raises(Exception, match="increasing"):
        tiles[2].add_tile(tiles[0])


def test_cofiring_memory_per_pair():
    acc = CofiringSums(100, 100)
    vi = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    acc.add(vi, torch.tensor([[1, 2]]), vi, torch.tensor([[3, 4]]))
    assert len(acc) == 4 and acc.nbytes == 4 * 20


def _sparse_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(5)
    stats = CoactivationStats(30, 26, sparse=True)
    for b in range(4):  # each rank draws the same 4 batches and keeps its own (different pair sets per rank)
        ci, ct = dyadic_codes(gen, 40, 30, 4), dyadic_codes(gen, 40, 26, 4)
        if b % world == rank:
            stats.update(ci, ct)
    stats.all_reduce()
    keys, sums, counts = stats.pairs.entries()
    np.save(f"{out_dir}/keys{rank}.npy", keys.numpy())
    np.save(f"{out_dir}/sums{rank}.npy", sums.numpy())
    np.save(f"{out_dir}/n{rank}.npy", np.array([stats.n]))
    dist.destroy_process_group()


def test_sparse_all_reduce_over_two_gloo_processes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sparse_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    gen = torch.Generator().manual_seed(5)
    whole = CoactivationStats(30, 26, sparse=True)
    for _ in range(4):
        whole.update(dyadic_codes(gen, 40, 30, 4), dyadic_codes(gen, 40, 26, 4))
    keys, sums, _ = whole.pairs.entries()
    for rank in range(2):
        assert np.array_equal(np.load(tmp_path / f"keys{rank}.npy"), keys.numpy())
        assert np.array_equal(np.load(tmp_path / f"sums{rank}.npy"), sums.numpy())
        assert int(np.load(tmp_path / f"n{rank}.npy")[0]) == 160


def test_sparse_correlation_file_roundtrip_and_limits(tmp_path):
    gen = torch.Generator().manual_seed(2)
    ci, ct = dyadic_codes(gen, 300, 24, 4, repeats=False), dyadic_codes(gen, 300, 20, 4, repeats=False)
    sc = stats_from_codes(ci, ct, sparse=True).sparse_correlation()
    shared = np.arange(len(sc.live_text))[::-1] + 100  # any relabelling of the text latents
    save_sparse_correlation(tmp_path, sc, shared)
    back = load_sparse_correlation(tmp_path)
    assert np.array_equal(back.live_text, shared) and np.array_equal(back.values, sc.values) and np.array_equal(back.counts, sc.counts)
    c, li, lt = load_correlation(tmp_path)  # densified at small size (float32, as /1 files hold it)
    assert c.dtype == torch.float32 and np.array_equal(lt.numpy(), shared)
    np.testing.assert_allclose(c.numpy(), sc.dense().numpy(), atol=1e-7)
    with pytest.raises(CheckpointError, match="sparse form"):
        load_correlation(tmp_path, limit=10)
    # a /1 file read in the sparse form: every entry explicit, identical values
    dense_sc = SparseCorrelation.from_dense(sc.dense(), sc.live_image, sc.live_text)
    assert np.array_equal(dense_sc.dense().numpy(), sc.dense().numpy())
    assert np.array_equal(sc.transposed().dense().numpy(), sc.dense().numpy().T)


def test_sparse_correlation_consumed_in_place_equals_copy(monkeypatch):
    """consume=True builds C in the co-firing run's own buffers, chunk after chunk, and equals the copying
    build entry for entry, also when pairs of dead latents (here: latent 0 of each side fires with one value
    on every row, so sd = 0) are dropped and later chunks are compacted onto earlier slots."""
    import dualsae.alignment.correlation as corr

    monkeypatch.setattr(corr, "_ENTRIES_PER_CHUNK", 7)  # many chunks: reads and in-place writes interleave
    gen = torch.Generator().manual_seed(12)
    ci, ct = dyadic_codes(gen, 300, 30, 5, repeats=False), dyadic_codes(gen, 300, 26, 4, repeats=False)
    for c in (ci, ct):
        c.indices[:, 0], c.values[:, 0] = 0, 1.0
        c.indices[:, 1:][c.indices[:, 1:] == 0] = 1  # latent 0 only in column 0
    one = stats_from_codes(ci, ct, batch_size=64, sparse=True)
    two = stats_from_codes(ci, ct, batch_size=64, sparse=True)
    ref = one.sparse_correlation()
    assert one.pairs is not None
    got = two.sparse_correlation(consume=True)
    assert two.pairs is None  # the run's buffers now belong to C
    assert 0 not in ref.live_image and 0 not in ref.live_text and ref.nnz < len(one.pairs)  # pairs were dropped
    for name in ("live_image", "live_text", "a", "b", "rows", "cols", "values", "counts"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
