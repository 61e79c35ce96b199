"""Post-hoc alignment: streaming correlation (eq. 5), assignment (eq. 6), permutation (eq. 7),
the aligned pair on disk, the App. F.2 collapse rate and the ``dualsae align`` command."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from dualsae.alignment.assignment import match_latents, solve_assignment
from dualsae.alignment.coactivation import coactivation_correlation
from dualsae.alignment.correlation import CoactivationStats, load_correlation
from dualsae.alignment.permutation import build_permutation, permute_sae
from dualsae.alignment.post_hoc import align
from dualsae.core.codes import SparseCodes
from dualsae.core.errors import CheckpointError, DataError
from dualsae.models.aligned import AlignedPair
from dualsae.models.pair import SAEPair
from dualsae.models.sae import SAE, SAEConfig
from dualsae.store.paired import PairedEmbeddings, write_store


# ---------------------------------------------------------------------------- helpers
def random_codes(gen: torch.Generator, batch: int, m: int, k: int, allowed: np.ndarray) -> SparseCodes:
    """TopK-like codes: k distinct latents drawn from ``allowed`` per row, some values zeroed."""
    allowed_t = torch.as_tensor(allowed)
    idx = torch.stack([allowed_t[torch.randperm(len(allowed_t), generator=gen)[:k]] for _ in range(batch)])
    vals = torch.rand(batch, k, generator=gen, dtype=torch.float64) * 2
    vals[torch.rand(batch, k, generator=gen) < 0.2] = 0.0  # inactive entries (ReLU'd TopK picks)
    return SparseCodes(vals.float(), idx, m)


def dense_corr(zi: np.ndarray, zt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brute-force float64 Pearson correlation of every image column with every text column."""
    li = np.flatnonzero(zi.std(0) > 0)
    lt = np.flatnonzero(zt.std(0) > 0)
    full = np.corrcoef(zi[:, li].T, zt[:, lt].T)
    return full[: len(li), len(li):], li, lt


def make_sae(w_enc: torch.Tensor, w_dec: torch.Tensor, k: int) -> SAE:
    m, d = w_enc.shape
    sae = SAE(SAEConfig(d=d, m=m, k=k, dec_bias_init="zero"))
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.W_dec.copy_(w_dec)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def unit_rows(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=1, keepdim=True)


# ---------------------------------------------------------------------------- eq. 5
def test_sparse_correlation_equals_dense_reference():
    gen = torch.Generator().manual_seed(0)
    m_i, m_t = 40, 30
    stats = CoactivationStats(m_i, m_t)
    alive_i = np.arange(0, 35)  # image latents 35..39 never fire
    alive_t = np.arange(3, 30)  # text latents 0..2 never fire
    dense_i, dense_t = [], []
    batches = [(random_codes(gen, 64, m_i, 6, alive_i), random_codes(gen, 64, m_t, 4, alive_t)) for _ in range(3)]
    # A padded batch with a repeated index holding two non-zero values (must be summed first).
    ci = random_codes(gen, 8, m_i, 6, alive_i)
    ci.indices[:, 5] = ci.indices[:, 0]
    ci.values[:, 5] = 0.5
    batches.append((ci, random_codes(gen, 8, m_t, 4, alive_t)))
    batches.append(batches[0])  # the same batch again counts twice, in both computations
    for a, b in batches:
        stats.update(a, b)
        dense_i.append(a.to_dense().double().numpy())
        dense_t.append(b.to_dense().double().numpy())
    c, li, lt = stats.correlation()
    ref, ref_li, ref_lt = dense_corr(np.concatenate(dense_i), np.concatenate(dense_t))
    assert li.tolist() == ref_li.tolist() and lt.tolist() == ref_lt.tolist()
    assert li.tolist() == list(range(35)) and lt.tolist() == list(range(3, 30))
    assert c.dtype == torch.float64
    np.testing.assert_allclose(c.numpy(), ref, atol=1e-5, rtol=0)
    assert stats.n == 64 * 4 + 8


def test_merge_of_shards_equals_one_pass():
    gen = torch.Generator().manual_seed(1)
    batches = [(random_codes(gen, 50, 20, 4, np.arange(20)), random_codes(gen, 50, 16, 3, np.arange(16))) for _ in range(4)]
    whole, a, b = CoactivationStats(20, 16), CoactivationStats(20, 16), CoactivationStats(20, 16)
    for n, (x, y) in enumerate(batches):
        whole.update(x, y)
        (a if n % 2 else b).update(x, y)
    a.merge(b)
    assert a.n == whole.n == 200
    ca, _, _ = a.correlation()
    cw, _, _ = whole.correlation()
    np.testing.assert_allclose(ca.numpy(), cw.numpy(), atol=1e-12)
    with pytest.raises(Exception, match="m_image=20, m_text=16"):
        a.merge(CoactivationStats(20, 15))


def _all_reduce_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(7)
    batches = [(random_codes(gen, 30, 12, 3, np.arange(12)), random_codes(gen, 30, 10, 3, np.arange(10))) for _ in range(4)]
    stats = CoactivationStats(12, 10)
    for x, y in batches[rank::world]:
        stats.update(x, y)
    stats.all_reduce()
    c, _, _ = stats.correlation()
    np.save(f"{out_dir}/rank{rank}_n{stats.n}.npy", c.numpy(), allow_pickle=False)
    dist.destroy_process_group()


def test_all_reduce_over_two_gloo_processes(tmp_path):
    """Two processes each see half the batches; after all_reduce both hold the full statistics."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_all_reduce_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    gen = torch.Generator().manual_seed(7)
    whole = CoactivationStats(12, 10)
    for _ in range(4):
        whole.update(random_codes(gen, 30, 12, 3, np.arange(12)), random_codes(gen, 30, 10, 3, np.arange(10)))
    ref, _, _ = whole.correlation()
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}_n120.npy", allow_pickle=False)  # the name carries n = 120
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-12)


# ---------------------------------------------------------------------------- eq. 6
@pytest.mark.parametrize("shape", [(60, 60), (45, 70), (70, 45)])
def test_solvers_give_identical_totals(shape):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    score = rng.uniform(-0.3, 1.0, size=shape)
    r1, c1, t1 = solve_assignment(score, "lapjv")
    r2, c2, t2 = solve_assignment(score, "scipy")
    k = min(shape)
    for r, c, t in ((r1, c1, t1), (r2, c2, t2)):
        assert len(r) == k and len(set(r.tolist())) == k and len(set(c.tolist())) == k
        assert t == pytest.approx(score[r, c].sum(), abs=1e-12)
    assert t1 == pytest.approx(t2, abs=1e-9)


def test_assignment_is_optimal_against_brute_force():
    rng = np.random.default_rng(3)
    score = rng.standard_normal((4, 6))
    best = max(sum(score[i, p[i]] for i in range(4)) for p in itertools.permutations(range(6), 4))
    for solver in ("lapjv", "scipy"):
        assert solve_assignment(score, solver)[2] == pytest.approx(best, abs=1e-12)


def test_rectangular_assignment_reports_modality_only_latents():
    """12 live image latents, 6 live text latents: image latents 0..5 are planted on text latents
    sigma(0..5); the other 6 image latents must come out as image-only, dead text latents nowhere."""
    gen = torch.Generator().manual_seed(5)
    m = 12
    sigma = np.array([9, 4, 0, 7, 2, 5])  # text latent of image latent i (i < 6); text 1,3,6,8,10,11 dead
    stats = CoactivationStats(m, m)
    for _ in range(4):
        ci = random_codes(gen, 100, m, 4, np.arange(m))
        dense = ci.to_dense()
        keep = dense[:, :6] * (1 + 0.05 * torch.rand(100, 6, generator=gen))
        dt = torch.zeros(100, m)
        dt[:, torch.as_tensor(sigma)] = keep
        stats.update(ci, SparseCodes.from_dense(dt))
    c, li, lt = stats.correlation()
    mt = match_latents(c, li, lt, solver="auto")
    assert sorted(lt.tolist()) == sorted(sigma.tolist())
    assert dict(zip(mt.image.tolist(), mt.text.tolist())) == {i: int(sigma[i]) for i in range(6)}
    assert mt.image_only.tolist() == list(range(6, 12)) and mt.text_only.tolist() == []
    assert mt.corr.min() > 0.95
    perm = build_permutation(mt, m, m)
    assert sorted(perm.tolist()) == list(range(m))
    assert all(perm[sigma[i]] == i for i in range(6))
    # Dead text latents fill the free indices 6..11 in increasing original order.
    assert perm[[1, 3, 6, 8, 10, 11]].tolist() == list(range(6, 12))


# ---------------------------------------------------------------------------- eq. 7
def _planted_pair(seed: int = 0, d: int = 32, m: int = 64, k: int = 4, noise: float = 1e-3):
    gen = torch.Generator().manual_seed(seed)
    w = unit_rows(torch.randn(m, d, generator=gen))
    image = make_sae(w, w, k)
    sigma = torch.randperm(m, generator=gen)  # image latent i == text latent sigma[i]
    wt = torch.empty_like(w)
    wt[sigma] = w + noise * torch.randn(m, d, generator=gen)
    text = make_sae(wt, unit_rows(wt), k)
    x = torch.randn(3000, d, generator=gen)
    y = x + noise * torch.randn(3000, d, generator=gen)
    return SAEPair("specific", image, text), sigma, x, y


def test_planted_permutation_is_recovered_and_codes_agree(tmp_path):
    pair, sigma, x, y = _planted_pair(noise=1e-4)
    store = PairedEmbeddings(x.numpy(), y.numpy())
    result = align(pair, store, batch_size=700, progress=False)
    assert result.kind == "aligned"
    live = result.matching.live_image
    assert len(live) == 64  # every latent fires on 3000 Gaussian rows
    perm = result.pair.permutation
    assert all(perm[int(sigma[i])] == i for i in range(64))
    assert result.report["mean_matched_correlation"] > 0.9
    # After eq. 7 both modalities encode a pair into the same indices.
    ci, ct = result.pair.encode_image(x), result.pair.encode_text(y)
    same = (ci.indices.sort(1).values == ct.indices.sort(1).values).all(1).float().mean().item()
    assert same > 0.99
    # Decoder directions are permuted, not altered (eq. 7).
    wt_orig = pair.text.W_dec.detach()
    wt_new = result.pair.text.W_dec.detach()
    assert torch.equal(wt_new[torch.as_tensor(perm)], wt_orig)
    # The permuted text SAE is exactly the original followed by relabelling.
    orig = pair.text.encode(y[:50])
    assert torch.equal(result.pair.text.encode(y[:50]).indices, orig.permute(torch.as_tensor(perm)).indices)


def test_permute_sae_moves_every_per_latent_tensor():
    gen = torch.Generator().manual_seed(2)
    sae = make_sae(unit_rows(torch.randn(8, 5, generator=gen)), unit_rows(torch.randn(8, 5, generator=gen)), 2)
    sae.b_enc.data = torch.arange(8.0)
    sae.samples_since_fired.copy_(torch.arange(8) * 10)
    perm = np.array([3, 0, 7, 1, 2, 6, 5, 4])
    out = permute_sae(sae, perm)
    assert out.b_enc[perm].tolist() == sae.b_enc.tolist()
    assert out.samples_since_fired[perm].tolist() == sae.samples_since_fired.tolist()
    assert torch.equal(out.b_dec, sae.b_dec)
    with pytest.raises(Exception, match="rearrangement"):
        permute_sae(sae, np.array([0, 0, 1, 2, 3, 4, 5, 6]))


# ---------------------------------------------------------------------------- App. F.2
def test_collapse_rate_on_planted_shared_sae(tmp_path):
    """Identity shared SAE (m = d = 20, k = 2). Concepts 0..3 use the same latent in both modalities
    (collapsed); concepts 4..9 use image latent 4..9 and text latent 10..15 (split); 16..19 dead.
    Live in either modality: 16, collapsed: 4 -> rate 0.25; 4 of 10 matched pairs -> 0.4."""
    m = 20
    sae = make_sae(torch.eye(m), torch.eye(m), k=2)
    image_latent = np.arange(10)
    text_latent = np.array([0, 1, 2, 3, 10, 11, 12, 13, 14, 15])
    rng = np.random.default_rng(0)
    n = 3000
    x, y = np.zeros((n, m), np.float32), np.zeros((n, m), np.float32)
    for r in range(n):
        for c in rng.choice(10, size=2, replace=False):
            x[r, image_latent[c]] = rng.exponential() + 0.1
            y[r, text_latent[c]] = rng.exponential() + 0.1
    result = align(SAEPair("shared", sae, sae), PairedEmbeddings(x, y), batch_size=512, progress=False)
    rep = result.report
    assert result.kind == "collapse" and result.pair is None
    assert rep["live"] == {"image": 10, "text": 10, "either": 16, "both": 4}
    assert rep["collapsed_latents"] == [0, 1, 2, 3]
    assert rep["collapse_rate"] == pytest.approx(4 / 16)
    assert rep["collapse_rate_of_matched"] == pytest.approx(4 / 10)
    assert dict(zip(rep["matching"]["image"], rep["matching"]["text"])) == dict(zip(image_latent.tolist(), text_latent.tolist()))
    result.save(tmp_path / "collapse")
    saved = json.loads((tmp_path / "collapse" / "collapse.json").read_text())
    assert saved["collapse_rate"] == pytest.approx(0.25)


# ---------------------------------------------------------------------------- on disk
def test_aligned_pair_save_load_roundtrip_and_errors(tmp_path):
    pair, sigma, x, y = _planted_pair(seed=4, m=32)
    result = align(pair, PairedEmbeddings(x.numpy(), y.numpy()), batch_size=1000, progress=False, source="runs/x")
    folder = result.save(tmp_path / "aligned")
    loaded = AlignedPair.load(folder)
    assert loaded.method == "aligned" and loaded.alignment == json.loads((folder / "alignment.json").read_text())
    assert loaded.alignment["source_run"] == "runs/x" and loaded.alignment["live"] == {"image": 32, "text": 32}
    for mod in ("image", "text"):
        a, b = result.pair.encode(mod, x[:20]), loaded.encode(mod, x[:20])
        assert torch.equal(a.indices, b.indices) and torch.allclose(a.values, b.values)
        assert torch.allclose(result.pair.decode(mod, a), loaded.decode(mod, a))
    c, li, lt = load_correlation(folder)
    perm = loaded.permutation
    # Stored live_text is in the shared index space: column b of C is text latent live_text[b] after eq. 7.
    assert lt.tolist() == perm[result.matching.live_text].tolist()
    np.testing.assert_allclose(c.numpy(), result.correlation.float().numpy())

    # A missing tensor in text/model.safetensors names the file and the tensor.
    from safetensors.torch import load_file, save_file

    st = folder / "text" / "model.safetensors"
    tensors = load_file(str(st))
    del tensors["W_dec"]
    save_file(tensors, str(st))
    with pytest.raises(CheckpointError, match=r"text/model\.safetensors.*W_dec"):
        AlignedPair.load(folder)
    (folder / "alignment.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="format"):
        AlignedPair.load(folder)
    (folder / "alignment.json").unlink()
    with pytest.raises(CheckpointError, match="alignment.json: missing"):
        AlignedPair.load(folder)


def test_coactivation_correlation_checks_dimensions(tmp_path):
    pair, _, x, y = _planted_pair(seed=1, d=32, m=16)
    with pytest.raises(DataError, match=r"d=8.*d=32"):
        coactivation_correlation(pair, PairedEmbeddings(np.zeros((5, 8), np.float32), np.zeros((5, 8), np.float32)))
    with pytest.raises(DataError, match="no text.npy"):
        coactivation_correlation(pair, PairedEmbeddings(x.numpy(), None))


# ---------------------------------------------------------------------------- CLI
def _write_run(folder, pair: SAEPair, method: str = "specific"):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"train": {"method": method, "split": "train"}}))
    if pair.shared:
        pair.image.save(folder / "shared")
    else:
        pair.image.save(folder / "image")
        pair.text.save(folder / "text")
    return folder


def test_align_command(tmp_path, capsys):
    from dualsae.cli import main
    from dualsae.models.load import load_model

    pair, sigma, x, y = _planted_pair(seed=6, m=32)
    n = len(x)
    meta = [{"caption": f"c{i}", "split": "train" if i < 2400 else "test"} for i in range(n)]
    store = write_store(tmp_path / "store", x.numpy(), y.numpy(), meta)
    run = _write_run(tmp_path / "run", pair)
    out = tmp_path / "aligned"
    assert main(["align", str(run), "--data", str(store), "--out", str(out), "--solver", "scipy", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "matched 32" in printed and "mean matched correlation" in printed
    loaded = load_model(out)
    assert isinstance(loaded, AlignedPair) and loaded.alignment["rows"] == 2400 and loaded.alignment["split"] == "train"
    assert all(loaded.permutation[int(sigma[i])] == i for i in range(32))

    # A shared run gets the collapse report.
    shared = _write_run(tmp_path / "shared_run", SAEPair("shared", pair.image, pair.image), method="shared")
    assert main(["align", str(shared), "--data", str(store), "--out", str(tmp_path / "col"), "--no-progress"]) == 0
    assert "collapse rate" in capsys.readouterr().out
    rep = json.loads((tmp_path / "col" / "collapse.json").read_text())
    assert rep["collapse_rate"] == pytest.approx(1.0)  # the same SAE on nearly equal inputs: every latent matches itself

    # Errors: dimension mismatch, store without text.
    bad = write_store(tmp_path / "bad", np.zeros((10, 8), np.float32), np.zeros((10, 8), np.float32))
    assert main(["align", str(run), "--data", str(bad), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "d=8" in err and "d=32" in err
    lonely = write_store(tmp_path / "lonely", x.numpy(), None)
    assert main(["align", str(run), "--data", str(lonely), "--out", str(tmp_path / "o3")]) == 2
    assert "text.npy" in capsys.readouterr().err


def test_tiled_statistics_encode_once_and_equal_one_pass(monkeypatch):
    """tiles > 1 encodes the store once (codes kept between tiles) and gives the one-pass statistics."""
    import dualsae.alignment.coactivation as corr

    pair, _, x, y = _planted_pair(seed=3, d=32, m=64)
    store = PairedEmbeddings(x.numpy(), y.numpy())
    one = coactivation_correlation(pair, store, batch_size=500, progress=False, stats="sparse")
    calls = []
    real = corr.iter_codes
    monkeypatch.setattr(corr, "iter_codes", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    tiled = coactivation_correlation(pair, store, batch_size=500, progress=False, stats="sparse", tiles=3)
    assert sorted(calls) == ["image", "text"], "one encoding pass per modality, whatever the number of tiles"
    k1, s1, c1 = one.pairs.entries()
    k3, s3, c3 = tiled.pairs.entries()
    assert torch.equal(k1, k3) and torch.equal(c1, c3)
    torch.testing.assert_close(s1, s3, rtol=1e-13, atol=0)
    for name in ("sum_i", "sumsq_i", "fired_i", "sum_t", "sumsq_t", "fired_t"):
        torch.testing.assert_close(getattr(one, name), getattr(tiled, name), rtol=0, atol=0)


def test_align_with_confidence_encodes_the_store_once(monkeypatch):
    """align with match confidence encodes each modality once (statistics and confidence share the codes) and
    gives the matching, correlations and support of the two-pass path; the tiled statistics from held codes
    equal the one-pass ones."""
    import dualsae.alignment.coactivation as coact
    import dualsae.alignment.confidence as confmod
    from dualsae.alignment.coactivation import encode_store, stats_from_codes
    from dualsae.alignment.confidence import ConfidenceOptions

    pair, _, x, y = _planted_pair(seed=4, d=32, m=64)
    store = PairedEmbeddings(x.numpy(), y.numpy())
    opts = ConfidenceOptions(shuffles=20)
    calls = []
    real = coact.encode_rows
    monkeypatch.setattr(coact, "encode_rows", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    once = align(pair, store, batch_size=300, progress=False, confidence=opts, stats_mode="sparse", solver="sparse")
    assert sorted(calls) == ["image", "text"], "one encoding per modality for statistics and confidence"
    monkeypatch.undo()
    stats = coactivation_correlation(pair, store, batch_size=300, progress=False, stats="sparse")
    twice = align(pair, store, stats=stats, batch_size=300, progress=False, confidence=opts, solver="sparse")
    assert once.report["permutation"] == twice.report["permutation"]
    assert once.report["total_matched_correlation"] == pytest.approx(twice.report["total_matched_correlation"], abs=1e-12)
    assert once.report["matched"]["support"] == twice.report["matched"]["support"]
    assert once.report["matched"]["null_threshold"] == twice.report["matched"]["null_threshold"]
    assert once.report["solver_details"]["cofiring_pairs"] == len(stats.pairs)
    codes = encode_store(pair, store, batch_size=300)
    tiled = stats_from_codes(*codes, batch_size=300, sparse=True, tiles=3)
    k1, s1, c1 = stats.pairs.entries()
    k3, s3, c3 = tiled.pairs.entries()
    assert torch.equal(k1, k3) and torch.equal(c1, c3)
    torch.testing.assert_close(s1, s3, rtol=1e-13, atol=0)
    assert confmod.encode_store is coact.encode_store
    # release_stats: the caller's co-firing sums are freed once the sparse C holds them; the result is the same
    freed = align(pair, stats=stats, progress=False, solver="sparse", release_stats=True)
    assert stats.pairs is None and freed.report["permutation"] == twice.report["permutation"]
    assert freed.report["solver_details"]["cofiring_pairs"] == len(k1)
