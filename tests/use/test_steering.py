"""One steering step and one concept-share measurement (dualsae.use.steering): ``dualsae steer`` and
the report's probe (dualsae.report.probe.Prober) pick the same sources and find the same neighbours
before and after steering for the same latent and alpha, and the Sec. 6.2 step (mean norm, unit
output) is ``normalize(x + alpha * s * w)``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dualsae.cli import main
from dualsae.models.aligned import ALIGNMENT_FORMAT, AlignedPair
from dualsae.models.encoding import encode_rows
from dualsae.report.probe import Prober
from dualsae.store.paired import PairedEmbeddings, write_store
from dualsae.use.steering import concept_share, latent_fires, steer
from tests.helpers import tied_sae

N, D, M = 80, 8, 6


def _aligned(tmp_path):
    rng = np.random.default_rng(3)
    unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    image, text = unit(rng.normal(size=(N, D))), unit(rng.normal(size=(N, D)))  # CLIP-like unit rows
    store_dir = write_store(tmp_path / "store", image, text, [{"caption": f"c{i % 7}", "id": f"r{i}"} for i in range(N)])
    w = unit(rng.normal(size=(M, D)))
    pair = AlignedPair("aligned", tied_sae(w, k=2), tied_sae(unit(w + 0.3 * rng.normal(size=(M, D))), k=2),
                       {"format": ALIGNMENT_FORMAT, "permutation": list(range(M)), "data": str(store_dir)})
    return pair, PairedEmbeddings.open(store_dir), pair.save(tmp_path / "aligned")


def test_cli_steer_and_report_probe_give_the_same_neighbours(tmp_path, capsys):
    pair, store, folder = _aligned(tmp_path)
    codes = encode_rows(pair, store, "image")
    latent = next(j for j in range(M) if 10 <= latent_fires(codes, j).sum() <= N - 10)
    for alpha in (0.5, 2.0):
        out = tmp_path / f"steer-{alpha}"
        assert main(["steer", str(folder), "--latent", str(latent), "--alpha", str(alpha), "--sources", "6", "-n", "5",
                     "--out", str(out)]) == 0
        cli = json.loads((out / "steer.json").read_text())
        probe = Prober(pair, store, codes, alpha=alpha, neighbours=5).probe(latent, None, sources=6, examples=6)["steer"]
        assert [s["row"] for s in cli["sources"]] == [e["source"] for e in probe["examples"]]
        assert [s["before"] for s in cli["sources"]] == [e["before"] for e in probe["examples"]]
        assert [s["after"] for s in cli["sources"]] == [e["after"] for e in probe["examples"]]
        assert cli["mean_share_before"] == pytest.approx(probe["hit_before"], abs=1e-12)
        assert cli["mean_share_after"] == pytest.approx(probe["hit_after"], abs=1e-12)
        assert cli["mean_share_after"] > cli["mean_share_before"]
    capsys.readouterr()


def test_steer_scales_and_normalises_as_the_metric_does(tmp_path):
    pair, store, _ = _aligned(tmp_path)
    x = store.read("image", np.arange(5)) * torch.tensor([[1.0], [2.0], [0.5], [3.0], [1.5]])
    w = F.normalize(pair.decoder_columns("image")[2].float(), dim=0)
    assert torch.equal(steer(pair, x, 2, 0.7), x + 0.7 * x.norm(dim=1, keepdim=True) * w)  # dualsae steer: own norm
    s = float(x.norm(dim=1).mean())
    assert torch.equal(steer(pair, x, 2, 0.7, scale=s, normalize=True), F.normalize(x + 0.7 * s * w, dim=1))  # Sec. 6.2


def test_concept_share_counts_neighbours_on_which_the_latent_fires():
    fires = np.array([True, False, True, False])
    share = concept_share(np.array([[0, 1], [2, 2], [1, 3]]), fires)
    assert share.per_source.tolist() == [0.5, 1.0, 0.0] and share.overall == 0.5
