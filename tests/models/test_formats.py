"""Reading other libraries' SAEs (dualsae.models.formats): every fixture was saved by the library's own
save function, and dualsae's encode / decode of the imported SAE must equal the library's own on those
real rows to 1e-5 (tests/fixtures/interop/make_fixtures.py; the libraries are not needed here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dualsae.core.errors import CheckpointError, ConfigError
from dualsae.models.formats import detect_format, load_sae, sae_source
from dualsae.models.sae import SAE, SAEConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "interop"
CASES = {  # fixture folder -> (format, dualsae activation)
    "saelens_standard": ("saelens", "relu"),
    "saelens_topk": ("saelens", "topk"),
    "saelens_jumprelu": ("saelens", "jumprelu"),
    "saelens_batchtopk_inference": ("saelens", "jumprelu"),
    "saelens_batchtopk_training": ("saelens", "batchtopk"),
    "saelens_pre6_topk": ("saelens", "topk"),
    "sparsify_run/layers.0": ("sparsify", "topk"),
    "sparsify_run/layers.1": ("sparsify", "topk"),
    "overcomplete_sae": ("overcomplete", "relu"),
    "overcomplete_topksae": ("overcomplete", "topk"),
    "overcomplete_batchtopksae": ("overcomplete", "batchtopk"),
    "overcomplete_jumpsae": ("overcomplete", "jumprelu"),
    "dictionary_learning_autoencoder": ("dictionary_learning", "relu"),
    "dictionary_learning_autoencodertopk": ("dictionary_learning", "topk"),
    "dictionary_learning_batchtopksae": ("dictionary_learning", "batchtopk"),
    "dictionary_learning_jumpreluautoencoder": ("dictionary_learning", "jumprelu"),
}


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b).abs().max())


@pytest.mark.parametrize("name", list(CASES))
def test_imported_sae_encodes_and_decodes_as_its_library(name):
    folder = FIXTURES / name
    fmt, activation = CASES[name]
    assert detect_format(folder) == fmt
    sae = load_sae(folder)
    assert sae.config.activation == activation and (sae.d, sae.m) == (16, 32)
    exp = load_file(str(folder / "expected.safetensors"))
    codes = sae.encode(exp["rows"])
    assert _max_abs(codes.to_dense(), exp["codes"]) < 1e-5
    assert int((codes.values > 0).sum()) == int((exp["codes"] > 0).sum()) > 0  # the same latents fire
    assert _max_abs(sae.decode(codes), exp["recon"]) < 1e-5


def test_versions_recorded():
    versions = json.loads((FIXTURES / "versions.json").read_text())["libraries"]
    assert set(versions) >= {"sae-lens", "eai-sparsify", "overcomplete", "dictionary-learning"}


def test_sparsify_run_folder_lists_its_hookpoints():
    assert detect_format(FIXTURES / "sparsify_run") == "sparsify"
    with pytest.raises(CheckpointError, match=r"sparsify_run/HOOKPOINT: layers\.0, layers\.1"):
        load_sae(FIXTURES / "sparsify_run")


def test_format_override_and_unknown_folder(tmp_path):
    with pytest.raises(CheckpointError, match="cfg.json: missing"):
        load_sae(FIXTURES / "dictionary_learning_autoencoder", format="saelens")
    with pytest.raises(ConfigError, match="--format must be one of"):
        load_sae(FIXTURES / "saelens_topk", format="nope")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(CheckpointError, match="not an SAE folder of a known format"):
        detect_format(tmp_path)


def test_one_line_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "saelens"
    shutil.copytree(FIXTURES / "saelens_topk", bad)
    cfg = json.loads((bad / "cfg.json").read_text())
    (bad / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(CheckpointError, match=r"cfg\.json: field 'normalize_activations' is 'layer_norm'"):
        load_sae(bad)
    (bad / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 31}))
    with pytest.raises(CheckpointError, match=r"sae_weights\.safetensors: tensor 'W_enc' has shape \[16, 32\], expected \[16, 31\]"):
        load_sae(bad)
    sp = tmp_path / "sparsify"
    shutil.copytree(FIXTURES / "sparsify_run" / "layers.0", sp)
    cfg = json.loads((sp / "cfg.json").read_text())
    (sp / "cfg.json").write_text(json.dumps({**cfg, "transcode": True}))
    with pytest.raises(CheckpointError, match=r"cfg\.json: field 'transcode' is true"):
        load_sae(sp)


def test_pickle_that_runs_code_is_refused(tmp_path):
    """ae.pt is read with torch.load(weights_only=True): a pickle that calls a function is refused, not run."""
    folder = tmp_path / "dl"
    shutil.copytree(FIXTURES / "dictionary_learning_autoencoder", folder)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"encoder.weight": Evil()}, folder / "ae.pt")
    with pytest.raises(CheckpointError, match=r"ae\.pt: not a state dict torch\.load\(weights_only=True\) can read"):
        load_sae(folder)
    assert not marker.exists()


def test_source_records_format_and_hashes():
    src = sae_source(FIXTURES / "saelens_topk")
    assert src["format"] == "saelens" and set(src["files"]) == {"cfg.json", "sae_weights.safetensors"}
    assert all(len(h) == 64 for h in src["files"].values())


def test_dualsae_folder_loads_through_the_same_entry_point(tmp_path):
    sae = SAE(SAEConfig(d=8, m=16, k=2))
    sae.save(tmp_path / "s")
    assert detect_format(tmp_path / "s") == "dualsae"
    assert torch.equal(load_sae(tmp_path / "s").W_enc, sae.W_enc)


def test_saelens_variants_older_versions_wrote(tmp_path):
    """log_threshold (training folders), the pre-6.0 fine-tuning scaling_factor (multiplied into the codes
    before decoding) and a boolean normalize_activations read as SAELens reads them."""
    from safetensors.torch import save_file

    src = FIXTURES / "saelens_jumprelu"
    exp = load_file(str(src / "expected.safetensors"))
    w = load_file(str(src / "sae_weights.safetensors"))
    cfg = json.loads((src / "cfg.json").read_text())
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps(cfg))
    w_log = {k: v for k, v in w.items() if k != "threshold"} | {"log_threshold": w["threshold"].clamp_min(1e-6).log()}
    save_file(w_log, str(folder / "sae_weights.safetensors"))
    assert _max_abs(load_sae(folder).encode(exp["rows"]).to_dense(), exp["codes"]) < 1e-5

    std = FIXTURES / "saelens_standard"
    exp = load_file(str(std / "expected.safetensors"))
    w = load_file(str(std / "sae_weights.safetensors"))
    scale = torch.linspace(0.5, 2.0, 32)
    save_file({**w, "scaling_factor": scale}, str(folder / "sae_weights.safetensors"))
    old = {k: v for k, v in json.loads((std / "cfg.json").read_text()).items() if k not in ("metadata", "architecture")}
    (folder / "cfg.json").write_text(json.dumps({**old, "activation_fn_str": "relu", "normalize_activations": False,
                                                 "finetuning_scaling_factor": True, "sae_lens_version": "3.0.0"}))
    sae = load_sae(folder)
    codes = sae.encode(exp["rows"])
    assert _max_abs(codes.to_dense(), exp["codes"]) < 1e-5  # the codes are the library's
    want = (exp["codes"] * scale) @ w["W_dec"] + w["b_dec"]
    assert _max_abs(sae.decode(codes), want) < 1e-5


@pytest.mark.parametrize("name", ["saelens_topk", "saelens_jumprelu", "saelens_standard", "dictionary_learning_batchtopksae"])
def test_padded_latents_never_fire_and_keep_the_codes(name):
    from dualsae.models.formats.padding import pad_latents

    sae = load_sae(FIXTURES / name)
    exp = load_file(str(FIXTURES / name / "expected.safetensors"))
    wide = pad_latents(sae, 50)
    assert wide.m == 50 and wide.config.activation == sae.config.activation
    codes = wide.encode(exp["rows"] * 3)  # larger inputs than the fixture's, still no added latent fires
    dense = codes.to_dense()
    assert not dense[:, 32:].any() and _max_abs(dense[:, :32], sae.encode(exp["rows"] * 3, dense=True)) == 0
    assert _max_abs(wide.decode(codes), sae.reconstruct(exp["rows"] * 3)) < 1e-6
