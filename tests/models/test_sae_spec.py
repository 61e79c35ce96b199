"""``models.sae_spec``: naming one SAE of a folder as PATH or PATH:MEMBER."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dualsae.core.errors import CheckpointError
from dualsae.models.formats import load_sae
from dualsae.models.sae_spec import open_sae, split_spec
from tests.metrics_helpers import random_sae


def test_split_spec_takes_only_member_suffixes():
    assert split_spec("runs/a:image") == (Path("runs/a"), "image")
    assert split_spec("runs/a") == (Path("runs/a"), None)
    assert split_spec("c:/x:y") == (Path("c:/x:y"), None)  # a colon that names no member stays in the path
    assert split_spec("odd:name:text") == (Path("odd:name"), "text")


def test_members_of_run_and_shared_folders(tmp_path):
    img, txt, shared = (random_sae(6, 8, 2, seed=s) for s in range(3))
    spec = tmp_path / "spec"
    img.save(spec / "image")
    txt.save(spec / "text")
    (spec / "config.json").write_text(json.dumps({"train": {"method": "specific"}}))
    for name, want in (("image", img), ("text", txt)):
        got = open_sae(f"{spec}:{name}")
        assert got.member == name and torch.equal(got.sae.W_dec, want.W_dec)
    with pytest.raises(CheckpointError, match="holds no shared SAE"):
        open_sae(f"{spec}:shared")
    run = tmp_path / "shared"
    shared.save(run / "shared")
    (run / "config.json").write_text(json.dumps({"train": {"method": "shared"}}))
    for s in (str(run), f"{run}:shared", f"{run}:text"):
        assert torch.equal(open_sae(s).sae.W_dec, shared.W_dec)
    half = tmp_path / "half"
    img.save(half / "image")
    (half / "config.json").write_text(json.dumps({"train": {"method": "specific"}}))
    assert torch.equal(open_sae(str(half)).sae.W_dec, img.W_dec)  # the only SAE of the folder
    with pytest.raises(CheckpointError, match=r"holds no text SAE \(it holds: image\)"):
        open_sae(f"{half}:text")


def test_a_folder_of_another_library_is_named_in_one_line(tmp_path):
    (tmp_path / "saelens").mkdir()
    (tmp_path / "saelens" / "cfg.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not an SAE folder of a known format"):
        open_sae(str(tmp_path / "saelens"))


def test_other_libraries_folders_open_through_their_readers():
    """A SAELens folder and one hookpoint of a sparsify run name one SAE each (as formats.load_sae reads it)."""
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "interop"
    for spec, folder in (("saelens_topk", fixtures / "saelens_topk"), ("sparsify_run/layers.0:image", fixtures / "sparsify_run" / "layers.0")):
        named = open_sae(str(fixtures / spec))
        want = load_sae(folder)
        assert named.path == folder and named.sae.m == want.m and named.sae.d == want.d
        assert torch.equal(named.sae.W_dec, want.W_dec)
    assert open_sae(str(fixtures / "sparsify_run/layers.0:image")).member == "image"
