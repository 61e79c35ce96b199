"""dualsae.core.screened_topk: the bfloat16 screen's error bound holds against float32 and float64, the
certified TopK / BatchTopK selections equal the dense float32 product's (random rows, near-ties planted
at the threshold, rows the screen cannot separate, all-negative batches), and an SAE's training forward
with the screen gives the selection, values, AuxK pick and gradients of the float32 path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dualsae.models.sae as sae_module
from dualsae.core import screened_topk as st
from dualsae.core.losses import aux_k_loss
from dualsae.core.sparse_ops import Pattern
from dualsae.models.sae import SAE, SAEConfig


def _problem(batch, m, d, seed, scale=1.0, bias=0.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d, generator=gen) * scale
    W = F.normalize(torch.randn(m, d, generator=gen), dim=1) * (0.5 + torch.rand(m, 1, generator=gen))
    b = torch.randn(m, generator=gen) * bias
    return x, W, b


def _oracles(x, W, b):
    def exact(rows, idx):
        xr = x if rows is None else x[rows]
        return Pattern(idx, W.shape[0]).sampled_dots(xr, W) + b[idx]

    def dense(rows):
        return F.linear(x[rows], W, b)

    return exact, dense


@pytest.mark.parametrize("scale,bias", [(1.0, 0.0), (30.0, 0.0), (1.0, 3.0), (1e-3, 1e-3)])
def test_bound_holds_against_float32_and_float64(scale, bias):
    x, W, b = _problem(64, 2048, 96, seed=int(scale * 10) + 1, scale=scale, bias=bias)
    # Adversarial rows: the inputs with the largest bfloat16 rounding error (just below a rounding tie).
    x[0] = (1 + 2.0 ** -9 - 2.0 ** -20) * scale
    x[1, ::2] = -x[1, ::2].abs()
    A, base = st.screen_product(x, W, b)
    bound = base[:, None] + st.REL * A.float().abs()
    f32 = F.linear(x, W, b)
    f64 = F.linear(x.double(), W.double(), b.double())
    assert ((A.float() - f32).abs() <= bound).all()
    assert ((A.double() - f64).abs() <= bound.double()).all()
    # The bound is tight enough to screen: well below the spread of the pre-activations.
    assert float(base.median()) < 0.1 * float(f32.std(dim=1).median())


@pytest.mark.parametrize("batch,m,d,k", [(128, 4096, 64, 8), (96, 8192, 128, 32), (64, 2048, 32, 1)])
def test_topk_equals_dense_float32_selection(batch, m, d, k):
    x, W, b = _problem(batch, m, d, seed=m + k, bias=0.1)
    exact, dense = _oracles(x, W, b)
    idx, vals = st.certified_topk(st.screen_product(x, W, b), k, exact, dense)
    ref = F.linear(x, W, b).topk(k, dim=1)
    assert torch.equal(idx, ref.indices.sort(dim=1).values)
    assert torch.equal(idx, idx.sort(dim=1).values)
    torch.testing.assert_close(vals, F.linear(x, W, b).gather(1, idx), rtol=0, atol=1e-5)


def test_near_ties_at_the_threshold_are_decided_in_float32():
    """Rows where the k-th and (k+1)-th float32 pre-activations differ by far less than bfloat16 resolves:
    the screen passes both on and float32 decides, as the dense product does."""
    batch, m, d, k = 64, 4096, 64, 8
    x, W, b = _problem(batch, m, d, seed=5)
    pre = F.linear(x, W, b)
    top = pre.topk(k + 1, dim=1)
    # Move the bias of the (k+1)-th latent so it lies 1e-4 above / below the k-th value in float32.
    for row in range(batch):
        j_next = top.indices[row, k]
        if j_next in top.indices[:row, :k + 1]:
            continue
        b[j_next] += (top.values[row, k - 1] - top.values[row, k]) + (1e-4 if row % 2 else -1e-4)
    exact, dense = _oracles(x, W, b)
    idx, _ = st.certified_topk(st.screen_product(x, W, b), k, exact, dense)
    assert torch.equal(idx, F.linear(x, W, b).topk(k, dim=1).indices.sort(dim=1).values)


def test_rows_the_screen_cannot_separate_take_the_dense_product(monkeypatch):
    """Equal pre-activations in every column: no candidate set is smaller than the row, so the dense
    fallback runs (counted) and still returns a float32 top-k."""
    batch, m, d, k = 8, 512, 16, 4
    x = torch.ones(batch, d)
    W = torch.ones(m, d) / 4
    b = torch.zeros(m)
    b[:3] = 1.0  # three clear winners, then 509 tied
    calls = []
    exact, dense = _oracles(x, W, b)
    idx, vals = st.certified_topk(st.screen_product(x, W, b), k, exact, lambda r: calls.append(r) or dense(r))
    assert calls, "the dense fallback did not run"
    assert (idx[:, :3] == torch.arange(3)).all()
    assert torch.equal(vals, F.linear(x, W, b).gather(1, idx))


@pytest.mark.parametrize("batch,m,d,k", [(128, 4096, 64, 8), (64, 8192, 96, 16)])
def test_batch_topk_equals_dense_flat_selection(batch, m, d, k):
    x, W, b = _problem(batch, m, d, seed=batch + k, bias=0.05)
    # Uneven rows: some rows hold many of the batch's largest values (BatchTopK's varying count).
    x[:4] *= 3
    exact, dense = _oracles(x, W, b)
    flat = st.certified_batch_topk(st.screen_product(x, W, b), k * batch, exact, dense)
    assert flat is not None
    ref = F.relu(F.linear(x, W, b)).flatten().topk(k * batch).indices
    assert torch.equal(flat.sort().values, ref.sort().values)


def test_batch_topk_declines_when_the_threshold_may_be_zero():
    x, W, b = _problem(32, 2048, 32, seed=3)
    b -= 100.0  # every pre-activation negative: the n-th largest ReLU'd value is 0, ties everywhere
    exact, dense = _oracles(x, W, b)
    assert st.certified_batch_topk(st.screen_product(x, W, b), 8 * 32, exact, dense) is None


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_sae_forward_with_screen_equals_float32_path(activation, monkeypatch):
    """The training forward at a screened width (AuxK running on dead latents) against the same SAE with
    the screen switched off: same selection and AuxK pick, values and gradients to float32 rounding."""
    monkeypatch.setattr(sae_module, "bf16_matmul_is_fast", lambda device: True)
    m, d, batch = sae_module.SCREEN_MIN_LATENTS, 48, 128
    sae = SAE(SAEConfig(d=d, m=m, k=8, activation=activation, aux_k=24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    sae.samples_since_fired[: m // 3] = sae.config.dead_window  # AuxK runs
    x = torch.randn(batch, d, generator=torch.Generator().manual_seed(2))
    runs = {}
    for screened in (False, True):
        monkeypatch.setattr(sae_module, "SCREEN_MIN_LATENTS", m if screened else m + 1)
        sae.zero_grad()
        out = sae(x)
        assert (out.selection is not None) == screened
        aux = aux_k_loss(sae, x, x - out.recon, out.pre_acts, out.selection)
        ((x - out.recon).pow(2).sum(1).mean() + aux).backward()
        runs[screened] = (out.codes.indices, out.codes.values.detach(), aux.detach(),
                          sae.W_enc.grad.clone(), sae.W_dec.grad.clone(), sae.b_enc.grad.clone())
    plain, screen = runs[False], runs[True]
    assert torch.equal(plain[0], screen[0])
    assert float(plain[2]) > 0
    for a, b in zip(plain[1:], screen[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("b_dec_on_input", [True, False])
def test_sae_encode_with_screen_equals_float32_codes(b_dec_on_input, monkeypatch):
    """Inference ``encode`` at a screened width chooses from the certified screen (counted) and returns the
    float32 path's codes: the same latents in the same order (largest first), values to float32 rounding;
    also for an SAE that does not subtract b_dec from its input (imported SAEs), where the screen's input
    must be x itself, in training as in inference."""
    import dualsae.models.activations.topk as topk_module

    monkeypatch.setattr(sae_module, "bf16_matmul_is_fast", lambda device: True)
    calls = []
    real = topk_module.certified_topk
    monkeypatch.setattr(topk_module, "certified_topk", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    m, d = sae_module.SCREEN_MIN_LATENTS, 48
    sae = SAE(SAEConfig(d=d, m=m, k=8, b_dec_on_input=b_dec_on_input), generator=torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
        sae.b_dec.normal_(0, 1.0, generator=torch.Generator().manual_seed(2))  # large: a wrong offset changes the pick
    x = torch.randn(128, d, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = sae.encode(x)
        ref = sae.activation.encode(sae, sae.pre_activations(x))
    assert len(calls) == 1
    assert torch.equal(got.indices, ref.indices)
    torch.testing.assert_close(got.values, ref.values, rtol=1e-5, atol=1e-6)
    sel = sae.selection_screen(x)  # the training forward's screen: the same input offset
    torch.testing.assert_close(sel.exact(None, ref.indices), sae.pre_activations(x).gather(1, ref.indices), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        few = sae.encode(x[: sae_module.SCREEN_MIN_ROWS - 1])  # below the screen's rows: the float32 product
    assert len(calls) == 1 and torch.equal(few.indices, ref.indices[: sae_module.SCREEN_MIN_ROWS - 1])
