"""Translation and steering (dualsae.use.translation / dualsae.use.steering, ``dualsae translate`` / ``dualsae steer``) on a planted
aligned pair whose right answers are known: feature f has image direction phi_f and a text direction
psi_f that is nearer to the *wrong* image feature phi_{f+1} than to phi_f, so raw cross-modal
neighbours are wrong and translated ones are right."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dualsae.cli import main
from dualsae.core.errors import ConfigError
from dualsae.evaluation.top_rows import top_examples
from dualsae.models.aligned import ALIGNMENT_FORMAT, AlignedPair
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings, write_store
from dualsae.use.steering import steer
from dualsae.use.translation import latents_for, translate
from tests.helpers import tied_sae

F_, D_ = 4, 8
PER_FEATURE = 10


def planted(tmp_path):
    phi = np.eye(D_, dtype=np.float32)[:F_]
    psi = np.eye(D_, dtype=np.float32)[F_:] + 0.9 * np.roll(phi, -1, axis=0)  # psi_f leans toward phi_{f+1}
    psi /= np.linalg.norm(psi, axis=1, keepdims=True)
    feature = np.repeat(np.arange(F_), PER_FEATURE)
    x = 2 * phi[feature]
    y = 2 * psi[feature]
    meta = [{"caption": f"feature {f}", "id": f"r{i}"} for i, f in enumerate(feature)]
    store_dir = write_store(tmp_path / "store", x, y, meta)
    pair = AlignedPair("aligned", tied_sae(phi), tied_sae(psi), {"format": ALIGNMENT_FORMAT, "permutation": list(range(F_)),
                                                          "data": str(store_dir)})
    folder = pair.save(tmp_path / "aligned")
    return pair, PairedEmbeddings.open(store_dir), feature, folder


def test_translate_recovers_the_planted_image_direction(tmp_path):
    pair, store, feature, _ = planted(tmp_path)
    y = store.read("text", np.array([0, PER_FEATURE, 2 * PER_FEATURE]))
    out = translate(pair, y, source="text", target="image")
    # encode with the text SAE (latent f, value 2), decode with the image SAE: exactly 2 phi_f
    expect = 2 * torch.eye(D_)[[0, 1, 2]]
    assert torch.allclose(out, expect, atol=1e-5)
    # raw text embeddings are nearer to the wrong image feature (f + 1)
    raw_cos = torch.nn.functional.normalize(y, dim=1) @ torch.eye(D_)[:F_].T
    assert raw_cos.argmax(1).tolist() == [1, 2, 3]


def test_latents_for_store_rows_and_embeddings(tmp_path):
    pair, store, feature, _ = planted(tmp_path)
    codes = latents_for(pair, store, "text", rows=[3, 15, 39])
    assert codes.indices[:, 0].tolist() == feature[[3, 15, 39]].tolist()
    assert torch.allclose(codes.values[:, 0], torch.full((3,), 2.0))
    codes2 = latents_for(pair, store.read("image", np.array([25])).numpy(), "image")
    assert codes2.indices[0, 0].item() == 2


def test_steer_adds_the_scaled_unit_decoder_direction(tmp_path):
    pair, store, _, _ = planted(tmp_path)
    x = store.read("image", np.array([0]))  # 2 phi_0
    out = steer(pair, x, latent=3, alpha=1.5, modality="image")
    assert torch.allclose(out, 2 * torch.eye(D_)[0] + 1.5 * 2 * torch.eye(D_)[3])


def test_top_examples_returns_the_rows_of_the_latent(tmp_path):
    pair, store, feature, _ = planted(tmp_path)
    top = top_examples(pair, 2, store, n=5)
    for mod in ("image", "text"):
        # the 10 rows of feature 2 share one caption: one line, counted 10 times
        assert [(r["row"] // PER_FEATURE, r["caption"], r["count"]) for r in top[mod]] == [(2, "feature 2", PER_FEATURE)]


def test_unaligned_specific_pair_refuses_translation(tmp_path):
    pair, *_ = planted(tmp_path)
    specific = SAEPair("specific", pair.image, pair.text)
    with pytest.raises(ConfigError, match="align"):
        translate(specific, torch.zeros(1, D_))


def test_cli_translate_prints_translated_next_to_raw(tmp_path, capsys):
    _, _, feature, folder = planted(tmp_path)
    # --data omitted: the store recorded in alignment.json is used
    assert main(["translate", str(folder), "--rows", "0", "10", "-n", "3", "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "translated 2/2, raw 0/2" in out
    doc = json.loads((tmp_path / "t" / "translate.json").read_text())
    for q, f in zip(doc["queries"], (0, 1)):
        assert all(n["row"] // PER_FEATURE == f for n in q["translated"])
        assert all(n["row"] // PER_FEATURE == (f + 1) % F_ for n in q["raw"])


def test_cli_translate_from_embeddings_file(tmp_path, capsys):
    _, store, _, folder = planted(tmp_path)
    np.save(tmp_path / "q.npy", store.read("text", np.array([35])).numpy())
    assert main(["translate", str(folder), "--data", str(store.root), "--embeddings", str(tmp_path / "q.npy"), "-n", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if " row " in line and "|" in line]
    assert "q.npy[0]" in out and len(rows) == 2
    assert all("feature 3" in r.split("|")[0] and "feature 0" in r.split("|")[1] for r in rows)


def test_cli_steer_moves_neighbours_to_the_concept(tmp_path, capsys):
    _, _, _, folder = planted(tmp_path)
    assert main(["steer", str(folder), "--latent", "3", "--alpha", "3", "--sources", "4", "-n", "5",
                 "--out", str(tmp_path / "s")]) == 0
    doc = json.loads((tmp_path / "s" / "steer.json").read_text())
    assert doc["concept_rows"] == PER_FEATURE
    assert doc["mean_share_before"] == 0.0 and doc["mean_share_after"] == 1.0
    assert all(r["row"] // PER_FEATURE != 3 for r in doc["sources"])  # sources lack the concept
    assert "0.00 before -> 1.00 after" in capsys.readouterr().out
