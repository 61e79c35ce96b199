"""The GPU path's pieces that run anywhere: the bfloat16 selection product, the prefetching batch
reader, and the one-line error for a CUDA device that is not there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dualsae.cli import main
from dualsae.core.distributed import resolve_device
from dualsae.core.errors import ConfigError
from dualsae.core.losses import aux_k_loss, reconstruction_loss
from dualsae.models.sae import SAE, SAEConfig
from dualsae.store.batches import BatchReader
from dualsae.store.paired import PairedEmbeddings
from tests.helpers import make_store


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_bf16_selection_keeps_values_and_gradients_float32(activation):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d=32, m=256, k=8, activation=activation, dead_window=1), generator=torch.Generator().manual_seed(0))
    sae.samples_since_fired.fill_(5)  # every latent dead: AuxK takes the gather path too
    x = torch.randn(64, 32)
    ref_idx = sae(x).codes.indices
    sae.selection_dtype = torch.bfloat16
    out = sae(x)
    loss = reconstruction_loss(x, out.recon) + aux_k_loss(sae, x, x - out.recon, out.pre_acts)
    loss.backward()
    got = {n: p.grad.clone() for n, p in sae.named_parameters()}
    # reference: dense float32 autograd with the latents the bfloat16 product picked
    sae.zero_grad()
    idx, mask = out.codes.indices, out.codes.values > 0
    pre = F.linear(x - sae.b_dec, sae.W_enc, sae.b_enc)
    vals = F.relu(pre.gather(1, idx)) * mask
    assert torch.allclose(vals, out.codes.values, atol=1e-5, rtol=0)  # float32 values (bfloat16 would be off by ~1e-2)
    recon = torch.zeros(64, 256).scatter_add(1, idx, vals) @ sae.W_dec + sae.b_dec
    aux_idx = out.pre_acts.topk(sae.config.effective_aux_k, dim=1).indices.sort(dim=1).values  # AuxK's (bf16) pick
    e_hat = torch.zeros(64, 256).scatter_add(1, aux_idx, F.relu(pre.gather(1, aux_idx))) @ sae.W_dec
    ref_loss = reconstruction_loss(x, recon) + (x - recon.detach() - e_hat).pow(2).sum(1).mean()
    ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) < 1e-4 * ref_loss.item()
    for name, p in sae.named_parameters():
        assert torch.allclose(got[name], p.grad, atol=1e-5, rtol=1e-4), name
    # bfloat16 only moves near-ties: nearly every pick is the float32 pick
    same = np.mean([len(set(a.tolist()) & set(b.tolist())) / max(len(set(b.tolist())), 1) for a, b in zip(idx, ref_idx)])
    assert same > 0.9


def test_prefetching_reader_gives_the_same_batches(tmp_path):
    store = PairedEmbeddings.open(make_store(tmp_path / "s", n=100, d=8))
    order = np.random.default_rng(0).permutation(100)

    def positions(step):
        return order[step * 10:(step + 1) * 10]

    plain = BatchReader(store, positions, 10, torch.device("cpu"), prefetch=False)
    ahead = BatchReader(store, positions, 10, torch.device("cpu"), prefetch=True)
    for step in [0, 1, 2, 5, 6, 9]:  # a skipped step (resume) is read directly
        a, b = plain(step), ahead(step)
        assert a.keys() == b.keys() and all(torch.equal(a[m], b[m]) for m in a)
    ahead.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        resolve_device("cuda")
    make_store(tmp_path / "s", n=50, d=8)
    for argv in (["train", "--data", str(tmp_path / "s"), "--out", str(tmp_path / "r"), "--latents", "16", "--k", "2"],
                 ["align", str(tmp_path / "r"), "--data", str(tmp_path / "s"), "--out", str(tmp_path / "a")],
                 ["eval", str(tmp_path / "r"), "--data", str(tmp_path / "s"), "--out", str(tmp_path / "e")]):
        assert main(argv + ["--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--device cuda: no CUDA device is available" in err[0], (argv[0], err)
    assert not (tmp_path / "r").exists()
