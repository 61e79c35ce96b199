"""dualsae.core.block_topk: the two-stage block top-k returns torch.topk's values, on random rows, on rows built
to defeat it (all top entries in one block, ties across blocks, NaN) and inside an SAE forward."""

from __future__ import annotations

import pytest
import torch

from dualsae.core.block_topk import block_size, topk, topk_indices
from dualsae.models.sae import SAE, SAEConfig


def assert_same_topk(pre: torch.Tensor, k: int) -> None:
    """The chosen entries' values equal torch.topk's, row by row, as sorted lists; indices distinct."""
    idx = topk_indices(pre, k)
    assert idx.shape == (pre.shape[0], k)
    assert all(len(set(row)) == k for row in idx.tolist()), "an index chosen twice"
    got = pre.gather(1, idx).sort(dim=1, descending=True).values
    want = pre.topk(k, dim=1).values
    assert torch.equal(got, want)


SHAPES = [(256, 8192, 16), (256, 8192, 32), (128, 8192, 32), (300, 4096, 64), (260, 4104, 64)]


@pytest.mark.parametrize("batch,m,k", SHAPES)
def test_random_rows_equal_torch_topk(batch, m, k):
    assert block_size(batch, m, k, torch.device("cpu")) > 0  # the block path is what runs
    pre = torch.randn(batch, m, generator=torch.Generator().manual_seed(batch + m + k))
    assert_same_topk(pre, k)
    # No ties in Gaussian data: the index sets themselves agree.
    assert torch.equal(topk_indices(pre, k).sort(dim=1).values, pre.topk(k, dim=1).indices.sort(dim=1).values)


def test_all_top_entries_in_one_block_and_in_one_stripe():
    batch, m, k = 256, 8192, 16
    s = block_size(batch, m, k, torch.device("cpu"))
    nb = m // s
    pre = torch.randn(batch, m, generator=torch.Generator().manual_seed(0))
    # Row 0: the 16 largest all in block 3 is impossible (a block has s = 16 entries: exactly fits);
    # put them there, so stage 1 must still take k blocks and stage 2 find all 16 in one of them.
    pre[0, 3 + nb * torch.arange(s)] = 100 + torch.arange(s, dtype=torch.float32)
    # Row 1: the largest entries in consecutive columns (k different blocks).
    pre[1, :k] = 50 + torch.arange(k, dtype=torch.float32)
    # Row 2: half the top entries in one block, the rest spread.
    pre[2, 5 + nb * torch.arange(8)] = 80.0
    pre[2, 100:108] = 70.0
    assert_same_topk(pre, k)
    assert set(topk_indices(pre, k)[0].tolist()) == set((3 + nb * torch.arange(s)).tolist())


def test_ties_keep_the_values():
    # Integer rows with many equal values: which of the tied indices is taken may differ from
    # torch.topk, the multiset of values may not.
    gen = torch.Generator().manual_seed(1)
    for batch, m, k in [(256, 8192, 16), (256, 4096, 64)]:
        pre = torch.randint(0, 12, (batch, m), generator=gen).float()
        assert_same_topk(pre, k)
        pre = torch.zeros(batch, m)  # every entry tied
        assert_same_topk(pre, k)


def test_nan_sorts_first_as_in_torch_topk():
    pre = torch.randn(256, 8192, generator=torch.Generator().manual_seed(2))
    pre[7, 1234] = float("nan")
    idx = topk_indices(pre, 16)
    assert 1234 in idx[7].tolist()
    assert torch.equal(idx.sort(dim=1).values[:7], pre[:7].topk(16, dim=1).indices.sort(dim=1).values)


def test_values_and_order_as_torch_topk():
    pre = torch.randn(512, 4096, generator=torch.Generator().manual_seed(3))
    vals, idx = topk(pre, 32)
    ref = pre.topk(32, dim=1)
    assert torch.equal(vals, ref.values) and torch.equal(idx, ref.indices)
    small = torch.randn(4, 100)  # the plain path
    assert torch.equal(topk(small, 5)[1], small.topk(5, dim=1).indices)


def test_plain_path_where_blocks_do_not_pay():
    cpu = torch.device("cpu")
    assert block_size(64, 8192, 16, cpu) == 0  # few rows
    assert block_size(128, 2048, 32, cpu) == 0  # few entries
    assert block_size(256, 1024, 16, cpu) == 0  # short rows
    assert block_size(256, 8195, 16, cpu) == 0  # m not a multiple of the block
    assert block_size(256, 8192, 16, torch.device("meta")) == 0  # not a CPU
    assert block_size(256, 8192, 16, cpu) == 16 and block_size(256, 4096, 32, cpu) == 8


def test_sae_training_forward_selects_the_dense_top_k():
    # The trainer's forward at a size where the block path runs: the selected latents are the dense
    # reference's, and the reconstruction equals decoding them.
    cfg = SAEConfig(d=32, m=4096, k=16)
    sae = SAE(cfg, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(5))
    assert block_size(256, 4096, 16, x.device) > 0
    out = sae(x)
    pre = torch.nn.functional.linear(x - sae.b_dec, sae.W_enc, sae.b_enc)
    ref = pre.topk(16, dim=1).indices.sort(dim=1).values
    assert torch.equal(out.codes.indices, ref)
    dense = torch.zeros_like(pre).scatter(1, ref, pre.gather(1, ref).clamp_min(0))
    torch.testing.assert_close(out.recon, dense @ sae.W_dec + sae.b_dec, rtol=1e-5, atol=1e-5)
    codes = sae.encode(x)
    assert torch.equal(codes.indices.sort(dim=1).values, ref)


def test_auxk_style_rows_masked_to_minus_infinity():
    # AuxK picks among dead latents only, the rest set to -inf: with exactly k finite entries per row,
    # packed into fewer than k blocks, every finite entry must still be chosen.
    batch, m, k = 256, 8192, 128
    s = block_size(batch, m, k, torch.device("cpu"))
    assert s > 0
    nb = m // s
    pre = torch.full((batch, m), float("-inf"))
    finite = torch.randn(batch, m, generator=torch.Generator().manual_seed(6))
    dead = (torch.arange(k) % s) * nb + torch.arange(k) // s  # k columns in ceil(k / s) blocks
    pre[:, dead] = finite[:, dead]
    assert set(range(k // s)) == {int(c) % nb for c in dead}
    idx = topk_indices(pre, k)
    assert all(set(row) == set(dead.tolist()) for row in idx.tolist())
    assert_same_topk(pre, k)
