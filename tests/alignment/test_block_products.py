"""Block products of held codes (dualsae.alignment.block_products): a block's co-firing sums and counts equal
the brute-force product of the dense codes, with signed codes whose sums cancel to exactly 0 and padded codes
that repeat an index in a row; and a pair's sum has the same bits from an image block and a text block."""

from __future__ import annotations

import numpy as np
import torch

from dualsae.alignment.block_products import BlockProducts, codes_csr, latent_rows, pair_sums
from dualsae.core.codes import SparseCodes


def _dense(c: SparseCodes) -> np.ndarray:
    return torch.zeros(c.batch, c.m, dtype=torch.float64).index_put_(
        (torch.arange(c.batch).unsqueeze(1).expand_as(c.indices), c.indices), c.values.double(), accumulate=True).numpy()


def _codes(gen: torch.Generator, n: int, m: int, k: int) -> SparseCodes:
    idx = torch.randint(0, m, (n, k), generator=gen)  # repeats within a row, as padded / concatenated codes have
    vals = torch.randint(-2, 3, (n, k), generator=gen).float()  # signed small integers: many sums cancel to 0
    return SparseCodes(vals, idx, m)


def _block(bp, lo: int, hi: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sums, counts, listed = (np.zeros((hi - lo, width)) for _ in range(3))
    rows = bp.block_rows()
    assert len(np.unique(rows * width + bp.cols)) == len(rows)  # distinct pairs
    sums[rows, bp.cols], counts[rows, bp.cols], listed[rows, bp.cols] = bp.sums, bp.counts, 1
    return sums, counts, listed


def test_block_product_equals_the_dense_product():
    gen = torch.Generator().manual_seed(4)
    ci, ct = _codes(gen, 300, 40, 5), _codes(gen, 300, 30, 4)
    zi, zt = _dense(ci), _dense(ct)
    assert np.array_equal(codes_csr(ci).toarray(), zi)
    want_s, want_c = zi.T @ zt, (zi != 0).T.astype(float) @ (zt != 0).astype(float)
    assert ((want_s == 0) & (want_c > 0)).any()  # cancelled sums exist: they stay listed with S = 0
    products = BlockProducts(latent_rows(codes_csr(ci)), codes_csr(ct))
    for lo, hi in ((0, 40), (0, 1), (7, 23), (39, 40)):
        sums, counts, listed = _block(products.product(lo, hi), lo, hi, 30)
        assert np.array_equal(sums, want_s[lo:hi]) and np.array_equal(counts, want_c[lo:hi])
        assert np.array_equal(listed > 0, want_c[lo:hi] > 0)


def test_a_pair_has_the_same_sum_from_either_side():
    gen = torch.Generator().manual_seed(5)
    ci = SparseCodes(torch.rand(2000, 6, generator=gen), torch.stack([torch.randperm(50, generator=gen)[:6] for _ in range(2000)]), 50)
    ct = SparseCodes(torch.rand(2000, 5, generator=gen), torch.stack([torch.randperm(45, generator=gen)[:5] for _ in range(2000)]), 45)
    s_i, c_i, _ = _block(BlockProducts(latent_rows(codes_csr(ci)), codes_csr(ct)).product(0, 50), 0, 50, 45)
    s_t, c_t, _ = _block(BlockProducts(latent_rows(codes_csr(ct)), codes_csr(ci)).product(0, 45), 0, 45, 50)
    assert np.array_equal(s_i, s_t.T) and np.array_equal(c_i, c_t.T)  # bit for bit, not only close


def test_pair_sums_equal_the_dense_product():
    gen = torch.Generator().manual_seed(6)
    ci, ct = _codes(gen, 400, 35, 5), _codes(gen, 400, 28, 4)
    ci.values[:, :][ci.indices == 3] = 0  # latent 3 never fires: its pairs have no rows to intersect
    zi, zt = _dense(ci), _dense(ct)
    want_s, want_c = zi.T @ zt, (zi != 0).T.astype(float) @ (zt != 0).astype(float)
    rng = np.random.default_rng(0)
    qa, qb = rng.integers(0, 35, 3000), rng.integers(0, 28, 3000)
    qa[:50], qb[:50] = 3, 7  # repeated queries of a latent that never fires
    for chunk in (1, 97, 1 << 23):  # one pair per chunk, a few, all at once
        s, c = pair_sums(latent_rows(codes_csr(ci)), latent_rows(codes_csr(ct)), qa, qb, chunk=chunk)
        assert np.allclose(s, want_s[qa, qb], rtol=0, atol=1e-12) and np.array_equal(c, want_c[qa, qb])
    assert np.all(s[:50] == 0) and np.all(c[:50] == 0)
