"""Bring your own SAEs (README): ``dualsae align --image A --text B`` on two imported SAEs (one SAELens, one
sparsify) gives an ordinary aligned folder that info, eval and report open (the report rendered in
Chromium), recording where each SAE came from; ``dualsae export`` writes SAELens / sparsify folders that
the real libraries load and whose encode / decode equal dualsae's to 1e-5 (skipped where the library is
not installed: ``pip install -e '.[interop]'``, which .ci/run does)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dualsae.cli import main
from dualsae.models.load import load_model
from dualsae.store.paired import write_store
from tests.browser import dump_dom, find_chromium, page_url
from tests.fault_helpers import KILLED, run_cli
from tests.helpers import EMOJI

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "interop"
IMAGE_SAE = FIXTURES / "saelens_jumprelu"  # d = 16, m = 32, JumpReLU
TEXT_SAE = FIXTURES / "sparsify_run" / "layers.0"  # d = 16, m = 32, TopK k = 4
N, D = 600, 16


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def emoji_rows() -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """The first 16 coordinates of 600 emoji pairs (times sqrt(512/16), as the fixtures' rows), with captions."""
    if not (EMOJI / "image.npy").is_file():
        pytest.skip(f"{EMOJI} not present")
    scale = np.sqrt(512 / D)
    image = (np.load(EMOJI / "image.npy", mmap_mode="r")[:N, :D] * scale).astype(np.float32)
    text = (np.load(EMOJI / "text.npy", mmap_mode="r")[:N, :D] * scale).astype(np.float32)
    meta = [json.loads(line) for _, line in zip(range(N), open(EMOJI / "meta.jsonl"))]
    return image, text, [{"caption": m.get("caption", ""), "split": "test" if i % 5 == 0 else "train"} for i, m in enumerate(meta)]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory, emoji_rows):
    root = tmp_path_factory.mktemp("byo")
    write_store(root / "data", *emoji_rows)
    assert main(["align", "--image", str(IMAGE_SAE), "--text", str(TEXT_SAE), "--data", str(root / "data"),
                 "--out", str(root / "aligned"), "--no-progress"]) == 0
    return root


def test_aligned_folder_records_sources_and_keeps_each_sae_exact(aligned, emoji_rows):
    from dualsae.models.formats import load_sae

    rep = json.loads((aligned / "aligned" / "alignment.json").read_text())
    assert rep["source_method"] == "imported" and (rep["m_image"], rep["m_text"]) == (32, 32)
    assert rep["sources"]["image"]["format"] == "saelens" and rep["sources"]["text"]["format"] == "sparsify"
    assert rep["sources"]["image"]["path"] == str(IMAGE_SAE.resolve())
    assert set(rep["sources"]["text"]["files"]) == {"cfg.json", "sae.safetensors"}
    manifest = json.loads((aligned / "aligned" / "manifest.json").read_text())
    assert manifest["job"]["image"]["files"] == rep["sources"]["image"]["files"]
    pair = load_model(aligned / "aligned")
    x = torch.from_numpy(emoji_rows[0][:50])
    y = torch.from_numpy(emoji_rows[1][:50])
    # image codes unchanged; text codes are the sparsify SAE's, moved by the permutation (eq. 7)
    assert torch.allclose(pair.encode("image", x).to_dense(), load_sae(IMAGE_SAE).encode(x, dense=True), atol=1e-6)
    perm = torch.as_tensor(rep["permutation"])
    assert torch.allclose(pair.encode("text", y).to_dense()[:, perm], load_sae(TEXT_SAE).encode(y, dense=True), atol=1e-6)


def test_info_eval_and_report_open_the_aligned_imports(aligned, capsys):
    code, out, _ = _cli(["info", str(aligned / "aligned")], capsys)
    assert code == 0 and "image SAE: d=16 m=32 jumprelu" in out and "text SAE: d=16 m=32 k=4 topk" in out
    assert f"image SAE imported from saelens {IMAGE_SAE.resolve()} (32 latents)" in out
    code, out, err = _cli(["eval", str(aligned / "aligned"), "--data", str(aligned / "data"), "--tasks", "recon,retrieval",
                           "--out", str(aligned / "eval")], capsys)
    assert code == 0, err
    metrics = json.loads((aligned / "eval" / "metrics.json").read_text())
    assert {"recon", "retrieval"} <= set(json.dumps(metrics).replace('"', " ").split())
    code, _, err = _cli(["report", str(aligned / "aligned"), "--data", str(aligned / "data"), "--out", str(aligned / "site"),
                         "--no-progress"], capsys)
    assert code == 0, err
    assert (aligned / "site" / "index.html").is_file()
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found (apt-get install chromium); .ci/run installs it")
    dom = dump_dom(chromium, page_url(aligned / "site", "overview"))
    assert re.search(r'<body[^>]*\sdata-view="overview"', dom) and 'id="overview-cards"' in dom
    j = json.loads((aligned / "aligned" / "alignment.json").read_text())["matched"]["image"][0]
    dom = dump_dom(chromium, page_url(aligned / "site", f"latent/{j}"))  # a matched latent: both modalities' top rows
    assert re.search(rf'<body[^>]*\sdata-latent="{j}"', dom) and 'id="caps-image"' in dom and 'id="side-text"' in dom


def test_align_inputs_errors(aligned, tmp_path, capsys):
    code, _, err = _cli(["align", "--image", str(IMAGE_SAE), "--data", str(aligned / "data"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--image and --text go together" in err
    code, _, err = _cli(["align", "--image", str(IMAGE_SAE), "--text", str(FIXTURES / "sparsify_run"), "--data", str(aligned / "data"),
                         "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "sparsify_run/HOOKPOINT: layers.0, layers.1" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def _export(aligned: Path, to: str, capsys) -> Path:
    out = aligned / f"export_{to}"
    code, stdout, err = _cli(["export", str(aligned / "aligned"), "--to", to, "--out", str(out)], capsys)
    assert code == 0, err
    return out


def test_export_matches_json_and_refusals(aligned, capsys):
    out = _export(aligned, "saelens", capsys)
    stats = json.loads((out / "matches.json").read_text())
    rep = json.loads((aligned / "aligned" / "alignment.json").read_text())
    assert len(stats["matched"]) == rep["matched_count"] > 0
    first = stats["matched"][0]
    assert first["index"] == rep["matched"]["image"][0] and rep["permutation"][first["text_latent_before_alignment"]] == first["index"]
    assert {"correlation", "support", "null_threshold", "above_null"} <= set(first)
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    # sparsify holds TopK only: the JumpReLU image SAE is refused before anything is written
    code, _, err = _cli(["export", str(aligned / "aligned"), "--to", "sparsify", "--out", str(aligned / "bad")], capsys)
    assert code == 2 and "image SAE (jumprelu)" in err and not (aligned / "bad").exists()


def test_export_killed_between_saes_is_unfinished_and_a_rerun_finishes_it(aligned, tmp_path, capsys):
    out = tmp_path / "exp"
    killed = run_cli(["export", aligned / "aligned", "--to", "saelens", "--out", out], fault="export-between-saes")
    assert killed.returncode == KILLED, killed.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and (out / "image").is_dir() and not (out / "text").exists()
    code, _, err = _cli(["export", str(aligned / "aligned"), "--to", "sparsify", "--out", str(out)], capsys)
    assert code == 2 and "already holds files written by 'dualsae export' for another job" in err  # not another job's folder
    assert _cli(["export", str(aligned / "aligned"), "--to", "saelens", "--out", str(out)], capsys)[0] == 0  # the same job resumes
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and {"image/cfg.json", "text/sae_weights.safetensors", "matches.json"} <= set(manifest["files"])


def test_saelens_loads_the_export_and_encodes_as_dualsae(aligned, emoji_rows, capsys):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens not installed (pip install -e '.[interop]')")
    out = _export(aligned, "saelens", capsys) if not (aligned / "export_saelens").exists() else aligned / "export_saelens"
    pair = load_model(aligned / "aligned")
    for mod, rows in (("image", emoji_rows[0]), ("text", emoji_rows[1])):
        theirs = sae_lens.SAE.load_from_disk(str(out / mod))
        x = torch.from_numpy(rows[:64])
        ours = pair.encode(mod, x)
        with torch.no_grad():
            codes = theirs.encode(x)
            assert float((codes - ours.to_dense()).abs().max()) < 1e-5
            assert float((theirs.decode(codes) - pair.decode(mod, ours)).abs().max()) < 1e-5


def test_sparsify_loads_a_topk_export_and_encodes_as_dualsae(tmp_path, emoji_rows, capsys):
    sparsify = pytest.importorskip("sparsify", reason="eai-sparsify not installed (pip install -e '.[interop]')")
    write_store(tmp_path / "data", *emoji_rows)
    assert main(["align", "--image", str(FIXTURES / "saelens_topk"), "--text", str(TEXT_SAE), "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "aligned"), "--no-progress"]) == 0
    assert main(["export", str(tmp_path / "aligned"), "--to", "sparsify", "--out", str(tmp_path / "sp")]) == 0
    pair = load_model(tmp_path / "aligned")
    # a sparsify run folder whose hookpoints are the modalities
    coders = {mod: sparsify.SparseCoder.load_from_disk(tmp_path / "sp" / mod) for mod in ("image", "text")}
    for mod, rows in (("image", emoji_rows[0]), ("text", emoji_rows[1])):
        x = torch.from_numpy(rows[:64])
        ours = pair.encode(mod, x)
        with torch.no_grad():
            enc = coders[mod].encode(x)
            dense = torch.zeros(64, 32).scatter(1, enc.top_indices, enc.top_acts)
            assert float((dense - ours.to_dense()).abs().max()) < 1e-5
            assert float((coders[mod].decode(enc.top_acts, enc.top_indices) - pair.decode(mod, ours)).abs().max()) < 1e-5


def test_saes_of_different_widths_and_activations_align(tmp_path, emoji_rows, capsys):
    """A 48-latent ReLU SAE (SAELens layout, b_dec not subtracted) against a 32-latent TopK one (dualsae
    folder): the narrower gains 16 latents that never fire (recorded), its own codes are unchanged, and a
    text latent that never fires is left unmatched like the added ones."""
    from dualsae.models.formats import load_sae
    from dualsae.models.formats.reading import build_sae
    from dualsae.models.formats.saelens import write_saelens

    g = torch.Generator().manual_seed(0)
    wide = build_sae(W_enc=torch.randn(48, D, generator=g), b_enc=torch.randn(48, generator=g) * 0.1 - 0.5,
                     W_dec=torch.randn(48, D, generator=g), b_dec=torch.randn(D, generator=g) * 0.1, activation="relu", b_dec_on_input=False)
    write_saelens(wide, tmp_path / "wide")
    narrow = load_sae(TEXT_SAE)
    with torch.no_grad():
        narrow.b_enc[5] = -1e4  # latent 5 never fires
    narrow.save(tmp_path / "narrow")
    write_store(tmp_path / "data", *emoji_rows)
    code, out, err = _cli(["align", "--image", str(tmp_path / "wide"), "--text", str(tmp_path / "narrow"), "--data", str(tmp_path / "data"),
                           "--out", str(tmp_path / "aligned"), "--no-progress"], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "aligned" / "alignment.json").read_text())
    assert (rep["m_image"], rep["m_text"]) == (48, 48) and rep["dead"]["text"] >= 17 and 5 not in rep["matched"]["text"]
    assert max(rep["matched"]["text"]) < 32  # no added latent is matched
    src = rep["sources"]
    assert (src["image"]["format"], src["image"]["latents"], src["image"]["padded_to"]) == ("saelens", 48, None)
    assert (src["text"]["format"], src["text"]["latents"], src["text"]["padded_to"]) == ("dualsae", 32, 48)
    pair = load_model(tmp_path / "aligned")
    x, y = torch.from_numpy(emoji_rows[0][:20]), torch.from_numpy(emoji_rows[1][:20])
    assert torch.allclose(pair.encode("image", x).to_dense(), wide.encode(x, dense=True), atol=1e-6)
    perm = torch.as_tensor(rep["permutation"])
    text_codes = pair.encode("text", y).to_dense()[:, perm]  # back to the text SAE's own order
    assert torch.allclose(text_codes[:, :32], narrow.encode(y, dense=True), atol=1e-6) and not text_codes[:, 32:].any()
    assert torch.allclose(pair.decode("text", pair.encode("text", y)), narrow.reconstruct(y), atol=1e-5)
    assert _cli(["info", str(tmp_path / "aligned")], capsys)[0] == 0
