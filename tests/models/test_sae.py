"""SAE: sparse training path equals the dense computation; codes; save/load; regularisers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dualsae.core.codes import SparseCodes
from dualsae.core.errors import CheckpointError, ConfigError
from dualsae.models.sae import SAE, SAEConfig, geometric_median


def dense_reference(sae: SAE, x: torch.Tensor, activation: str, k: int):
    """Plain dense computation: z [B, m] with autograd through the full encoder product."""
    pre = F.linear(x - sae.b_dec, sae.W_enc, sae.b_enc)
    if activation == "topk":
        idx = pre.topk(k, dim=1).indices
        mask = torch.zeros_like(pre, dtype=torch.bool).scatter(1, idx, True)
    else:
        flat = F.relu(pre).flatten().topk(k * x.shape[0]).indices
        mask = torch.zeros(pre.numel(), dtype=torch.bool)
        mask[flat] = True
        mask = mask.view_as(pre)
    z = F.relu(pre) * mask
    return z, z @ sae.W_dec + sae.b_dec


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_sparse_forward_and_gradients_equal_dense(activation):
    torch.manual_seed(0)
    cfg = SAEConfig(d=24, m=96, k=5, activation=activation)
    sae = SAE(cfg, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    x = torch.randn(32, 24)
    out = sae(x)
    loss_sparse = (x - out.recon).pow(2).sum(1).mean()
    grads_sparse = torch.autograd.grad(loss_sparse, list(sae.parameters()))
    z, recon = dense_reference(sae, x, activation, 5)
    loss_dense = (x - recon).pow(2).sum(1).mean()
    grads_dense = torch.autograd.grad(loss_dense, list(sae.parameters()))
    assert torch.allclose(out.recon, recon, atol=1e-5)
    assert torch.allclose(out.codes.to_dense(), z, atol=1e-6)
    assert abs(loss_sparse.item() - loss_dense.item()) < 1e-5 * max(1.0, loss_dense.item())
    for gs, gd in zip(grads_sparse, grads_dense):
        assert torch.allclose(gs, gd, atol=1e-5, rtol=1e-4)


def test_batchtopk_selects_k_times_batch_and_sets_threshold():
    sae = SAE(SAEConfig(d=16, m=64, k=4, activation="batchtopk"), generator=torch.Generator().manual_seed(0))
    x = torch.randn(50, 16)
    out = sae(x)
    assert int((out.codes.values > 0).sum()) == 4 * 50
    rows = (out.codes.values > 0).sum(1)
    assert rows.max() != rows.min()  # variable per-row counts, as BatchTopK allows
    thr = sae.threshold.item()
    assert thr > 0
    # Inference: every pre-activation above the threshold is active, none below.
    sae.eval()
    codes = sae.encode(x, dense=True)
    pre = sae.pre_activations(x)
    assert torch.equal(codes > 0, pre > thr)


def test_encode_sparse_dense_and_decode_agree():
    sae = SAE(SAEConfig(d=16, m=64, k=6), generator=torch.Generator().manual_seed(0))
    x = torch.randn(10, 16)
    codes = sae.encode(x)
    dense = sae.encode(x, dense=True)
    assert codes.values.shape == (10, 6)
    assert torch.allclose(codes.to_dense(), dense)
    assert torch.allclose(sae.decode(codes), sae.decode(dense), atol=1e-6)
    assert torch.allclose(sae.decode(codes), dense @ sae.W_dec + sae.b_dec, atol=1e-6)


def test_relu_activation_with_l1_codes_are_exact():
    sae = SAE(SAEConfig(d=8, m=32, k=1, activation="relu"), generator=torch.Generator().manual_seed(0))
    x = torch.randn(7, 8)
    dense = sae.encode(x, dense=True)
    assert torch.allclose(dense, F.relu(sae.pre_activations(x)))
    out = sae(x)
    assert torch.allclose(out.codes.to_dense(), dense, atol=1e-6)


def test_init_encoder_is_decoder_transpose_and_unit_norm():
    sae = SAE(SAEConfig(d=16, m=40, k=3), generator=torch.Generator().manual_seed(0))
    assert torch.equal(sae.W_enc, sae.W_dec)  # stored row-wise: encoder rows = decoder columns
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(40), atol=1e-6)


def test_unit_norm_kept_by_gradient_projection_and_renorm():
    sae = SAE(SAEConfig(d=16, m=40, k=3), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(sae.parameters(), lr=0.05)
    x = torch.randn(64, 16) * 3
    for _ in range(5):
        opt.zero_grad()
        out = sae(x)
        (x - out.recon).pow(2).sum(1).mean().backward()
        sae.remove_parallel_grad()
        # After projection the gradient is orthogonal to each decoder column.
        assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-5
        opt.step()
        sae.normalize_decoder()
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(40), atol=1e-6)


def test_geometric_median_first_order_condition():
    rng = np.random.default_rng(0)
    pts = torch.tensor(np.concatenate([rng.normal(size=(200, 3)), rng.normal(size=(20, 3)) + 30]), dtype=torch.float32)
    gm = geometric_median(pts).double()
    unit = (pts.double() - gm) / (pts.double() - gm).norm(dim=1, keepdim=True)
    # At the geometric median the unit vectors to all points sum to ~0 (unlike the mean, pulled by outliers).
    assert unit.sum(0).norm() < 1e-3 * len(pts)
    assert (gm - pts.double().mean(0)).norm() > 1.0


def test_dead_latents_tracked_and_auxk_revives():
    from dualsae.core.losses import aux_k_loss

    cfg = SAEConfig(d=16, m=64, k=2, dead_window=100, aux_k=8)
    sae = SAE(cfg, generator=torch.Generator().manual_seed(0))
    x = torch.randn(60, 16)
    out = sae(x)
    assert aux_k_loss(sae, x, x - out.recon, out.pre_acts).item() == 0.0  # nobody dead yet
    sae.update_fired(out.codes)
    sae.update_fired(out.codes)  # 120 samples > window: latents that never fired are dead
    fired = torch.zeros(64, dtype=torch.bool)
    fired[out.codes.indices[out.codes.values > 0]] = True
    assert torch.equal(sae.dead_mask(), ~fired)
    aux = aux_k_loss(sae, x, (x - out.recon).detach(), out.pre_acts)
    assert aux.item() > 0
    aux.backward()
    dead_rows = sae.dead_mask()
    # AuxK's gradient reaches the encoder rows of dead latents only (plus shared biases).
    assert sae.W_enc.grad[dead_rows].abs().sum() > 0
    assert sae.W_enc.grad[~dead_rows].abs().sum() == 0


def test_update_fired_resets_only_latents_with_a_positive_value():
    sae = SAE(SAEConfig(d=4, m=6, k=2, dead_window=10))
    sae.samples_since_fired.fill_(7)
    # Latent 3 and 5 appear with value 0 (selected, not fired); 2 fires twice.
    codes = SparseCodes(torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.2, 0.3]]),
                        torch.tensor([[0, 3], [2, 5], [2, 4]]), 6)
    sae.update_fired(codes)
    assert sae.samples_since_fired.tolist() == [0, 10, 0, 10, 0, 10]
    assert sae.dead_mask().tolist() == [False, True, False, True, False, True]


def test_save_load_roundtrip_and_errors(tmp_path):
    sae = SAE(SAEConfig(d=8, m=20, k=3), generator=torch.Generator().manual_seed(0))
    sae.save(tmp_path / "s")
    back = SAE.load(tmp_path / "s")
    for (k1, v1), (k2, v2) in zip(sae.state_dict().items(), back.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    # Missing tensor
    from safetensors.torch import load_file, save_file

    t = load_file(str(tmp_path / "s" / "model.safetensors"))
    del t["b_enc"]
    save_file(t, str(tmp_path / "s" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['b_enc'\]"):
        SAE.load(tmp_path / "s")
    # Mismatched shape against config.json
    sae.save(tmp_path / "s2")
    cfg = json.loads((tmp_path / "s2" / "config.json").read_text())
    cfg["sae"]["m"] = 21
    (tmp_path / "s2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"'W_dec' has shape \[20, 8\], expected \[21, 8\]"):
        SAE.load(tmp_path / "s2")
    with pytest.raises(CheckpointError, match="config.json: missing"):
        SAE.load(tmp_path / "nothing")


def test_config_validation():
    with pytest.raises(ConfigError, match="1 <= k < m"):
        SAEConfig(d=8, m=16, k=16)
    with pytest.raises(ConfigError, match="activation"):
        SAEConfig(d=8, m=16, k=2, activation="gated")


def test_sparse_codes_cat_and_permute():
    a = SparseCodes(torch.tensor([[1.0, 2.0]]), torch.tensor([[0, 3]]), 4)
    b = SparseCodes(torch.tensor([[5.0]]), torch.tensor([[1]]), 4)
    c = SparseCodes.cat([a, b])
    assert c.values.shape == (2, 2)
    assert torch.equal(c.to_dense(), torch.tensor([[1.0, 0, 0, 2.0], [0, 5.0, 0, 0]]))
    p = a.permute(torch.tensor([3, 2, 1, 0]))
    assert torch.equal(p.to_dense(), torch.tensor([[2.0, 0, 0, 1.0]]))


def test_pattern_transposed_products_equal_dense_with_repeated_entries():
    """The latent-grouped kernels (weight gradients) equal a dense scatter, padding repeats included."""
    from dualsae.core.sparse_ops import Pattern

    g = torch.Generator().manual_seed(0)
    B, m, w, d = 13, 40, 6, 7
    idx = torch.randint(0, m, (B, w), generator=g).sort(dim=1).values
    idx[:3, -2:] = 0  # BatchTopK-style padding: repeated latent 0 inside a row
    vals = torch.randn(B, w, generator=g)
    dense_rows = torch.randn(B, d, generator=g)
    pattern = Pattern(idx, m)
    Z = torch.zeros(B, m).index_put_((torch.arange(B).repeat_interleave(w), idx.reshape(-1)), vals.reshape(-1), accumulate=True)
    assert torch.allclose(pattern.by_latent(vals, dense_rows), Z.t() @ dense_rows, atol=1e-6)
    assert torch.allclose(pattern.per_latent_sum(vals), Z.sum(0), atol=1e-6)


@pytest.mark.parametrize("input_grad", [False, True])
def test_gather_pre_and_sparse_decode_gradients_equal_dense(input_grad):
    """Each sparse kernel alone (as AuxK uses them), with and without a gradient for the input."""
    from dualsae.core.sparse_ops import gather_pre, sparse_decode

    g = torch.Generator().manual_seed(1)
    B, m, d, k = 9, 30, 8, 4
    x = torch.randn(B, d, generator=g).requires_grad_(input_grad)
    W_enc, W_dec = (torch.randn(m, d, generator=g).requires_grad_() for _ in range(2))
    b_enc, b_dec = torch.randn(m, generator=g).requires_grad_(), torch.randn(d, generator=g).requires_grad_()
    params = [W_enc, b_enc, b_dec, W_dec] + ([x] if input_grad else [])
    with torch.no_grad():
        pre_all = F.linear(x - b_dec, W_enc, b_enc)
    idx = pre_all.topk(k, dim=1).indices.sort(dim=1).values
    target = torch.randn(B, d, generator=g)
    vals = F.relu(gather_pre(x, W_enc, b_enc, b_dec, idx, pre_all))
    loss = (target - sparse_decode(vals, idx, W_dec)).pow(2).sum() + vals.pow(3).sum()
    grads = torch.autograd.grad(loss, params)
    pre = F.linear(x - b_dec, W_enc, b_enc)
    z = torch.zeros(B, m).scatter(1, idx, F.relu(pre.gather(1, idx)))
    loss_ref = (target - z @ W_dec).pow(2).sum() + z.pow(3).sum()
    grads_ref = torch.autograd.grad(loss_ref, params)
    assert abs(loss.item() - loss_ref.item()) <= 1e-5 * loss_ref.item()
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_jumprelu_codes_and_input_offset_against_brute_force(tmp_path):
    """JumpReLU: z = relu(pre) * [pre > theta_j] with per-latent theta; b_dec_on_input false: pre = W_enc x + b_enc.
    Saved and loaded with the per-latent threshold; permuting the SAE moves each theta with its latent."""
    from dualsae.alignment.permutation import permute_sae

    g = torch.Generator().manual_seed(3)
    sae = SAE(SAEConfig(d=6, m=10, activation="jumprelu", b_dec_on_input=False, dec_bias_init="zero"))
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(6, generator=g))
        sae.b_enc.copy_(torch.randn(10, generator=g) * 0.1)
        sae.threshold.copy_(torch.rand(10, generator=g) * 0.5)
    x = torch.randn(20, 6, generator=g)
    pre = x @ sae.W_enc.detach().T + sae.b_enc.detach()
    want = pre.clamp_min(0) * (pre > sae.threshold)
    assert torch.allclose(sae.encode(x, dense=True), want, atol=1e-6) and 0 < int((want > 0).sum()) < want.numel()
    sae.save(tmp_path / "j")
    back = SAE.load(tmp_path / "j")
    assert back.threshold.shape == (10,) and torch.equal(back.encode(x, dense=True), sae.encode(x, dense=True))
    perm = torch.randperm(10, generator=g)
    moved = permute_sae(sae, perm)
    assert torch.allclose(moved.encode(x, dense=True)[:, perm], want, atol=1e-6)
    centred = SAE(SAEConfig(d=6, m=10, activation="jumprelu"))
    centred.load_state_dict(sae.state_dict())
    pre_c = (x - sae.b_dec.detach()) @ sae.W_enc.detach().T + sae.b_enc.detach()
    assert torch.allclose(centred.pre_activations(x), pre_c, atol=1e-6)


def _inference_reference(W_enc, b_enc, b_dec, W_dec, threshold, x, activation, k):
    """Inference codes and reconstruction in float64 from the formulas (eq. 3; BatchTopK: pre above the threshold)."""
    pre = (x - b_dec) @ W_enc.T + b_enc
    if activation == "topk":
        z = torch.zeros_like(pre).scatter(1, pre.topk(k, dim=1).indices, 1.0) * pre.clamp_min(0)
    elif activation in ("batchtopk", "jumprelu"):
        z = pre * (pre > threshold)
    else:
        z = pre.clamp_min(0)
    return z, z @ W_dec + b_dec


@pytest.mark.parametrize("activation", ["topk", "batchtopk", "relu", "jumprelu"])
@pytest.mark.parametrize("factor", [1e-8, 1e-4, 0.37, 1e4])
def test_fold_input_scale_makes_the_sae_of_scaled_rows_work_on_raw_rows(activation, factor):
    """An SAE trained on factor * x, folded, gives on x the trained SAE's codes and reconstruction of factor * x
    divided by factor (brute force in float64), with W_enc and the unit-norm W_dec unchanged."""
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d=16, m=64, k=4, activation=activation), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # "trained" weights in the units of the scaled rows (norm ~1)
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.2)
        sae.threshold.fill_(0.05)
    raw = torch.randn(40, 16, dtype=torch.float64) / 4 / factor  # rows at norm ~1 / factor
    trained = {k: v.double().clone() for k, v in sae.state_dict().items()}
    z_ref, x_ref = _inference_reference(trained["W_enc"], trained["b_enc"], trained["b_dec"], trained["W_dec"],
                                        trained["threshold"], raw * factor, activation, 4)
    assert (z_ref > 0).any(dim=1).all()  # every row has active latents: the check has something to compare
    sae.fold_input_scale(factor)
    z = sae.encode(raw.float(), dense=True).double()
    x_hat = sae.reconstruct(raw.float()).double()
    torch.testing.assert_close(z * factor, z_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(x_hat * factor, x_ref, atol=2e-5, rtol=1e-4)
    assert torch.equal(sae.W_enc.double(), trained["W_enc"]) and torch.equal(sae.W_dec.double(), trained["W_dec"])


def test_fold_input_scale_of_one_changes_nothing_and_refuses_bad_factors():
    sae = SAE(SAEConfig(d=8, m=16, k=2), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    sae.fold_input_scale(1.0)
    assert all(torch.equal(before[k], v) for k, v in sae.state_dict().items())
    assert float(sae.threshold) == -1.0  # an unestimated threshold stays unestimated when folded
    sae.fold_input_scale(4.0)
    assert float(sae.threshold) == -1.0
    for bad in (0.0, -2.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="input scale"):
            sae.fold_input_scale(bad)
