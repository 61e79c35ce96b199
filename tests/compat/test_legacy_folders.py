"""Folders written before the layout change open after it, and the CLI says the same things about them.

``tests/fixtures/legacy/`` holds tiny run folders, aligned folders, stores, eval / heterogeneity / report
outputs written by dualsae at commit 75862d7 (before the subpackage layout), and ``expected/``: what the
old CLI printed on them (see that folder's README.md). Paths recorded in the folders are relative to the
fixture root, so every test copies the root to ``tmp_path`` and runs with the copy as working directory.

Only stable interfaces are used: the CLI (``dualsae.cli.main`` in-process, once ``python -m dualsae``),
``dualsae.store.paired.PairedEmbeddings.open`` / ``open_store`` and ``dualsae.models.load.load_model``.
Printouts are compared exactly; the only normalisations are the copy's absolute path (``<root>``) and the
wall-clock figure of ``report``'s summary line. Changes made on purpose since (issue 19) are listed in
:data:`CHANGED_ON_PURPOSE` and :data:`ADDED_KEYS`: there the old output must still be there, in order, beside
what was added (``info``'s train / test reconstruction lines), or is replaced as a whole (``eval``'s table).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dualsae
from dualsae.cli import main
from dualsae.models.load import load_model
from dualsae.store.paired import PairedEmbeddings, open_store

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "legacy"
EXPECTED = FIXTURES / "expected"
EXTRA = EXPECTED / "extra"
CODES = json.loads((EXPECTED / "codes.json").read_text())
#: Printouts changed on purpose (issue 19), by command: "added" = every old line is still printed, in the
#: old order, with new lines between (info: train / test reconstruction, the collapse-report hint); "replaced"
#: = the printout is new (eval: one table, model | raw embeddings | baseline), exit status and stderr as before.
CHANGED_ON_PURPOSE = {"info": "added", "eval": "replaced"}
#: JSON keys added on purpose since (issue 19): info's "generalization", metrics.json's retrieval "chance",
#: a report probe's "sweep" (the alpha sweep). Old documents must equal the new ones without them.
ADDED_KEYS = {"generalization", "chance", "sweep"}
#: Report files changed on purpose (issue 19: the latent page shows the alpha sweep).
CHANGED_FILES = {"report.js"}


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A copy of the fixture root (plus an empty sibling ``elsewhere/``), the working directory."""
    dst = tmp_path / "root"
    shutil.copytree(FIXTURES, dst)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(dst)
    return dst.resolve()


def _normalise(text: str, root: Path, command: str) -> str:
    for p in {str(root), str(Path(os.path.realpath(root)))}:
        text = text.replace(p, "<root>")
    if command == "report":
        # the summary line ends with the build's wall-clock time, e.g. "(0.8s)"
        text = re.sub(r"  \(\d+\.\d+s\)$", "  (<time>s)", text, flags=re.M)
    return text


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(args)
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return rc, out, err


def run_case(folder: Path, name: str, root: Path, capsys, monkeypatch, extra: list[str] = ()) -> None:
    """Run the old command ``folder/name.cmd`` (from the copy, or from the ``.cwd`` beside it) with the new
    code and check stdout, stderr and exit status equal the old ``name.txt`` / ``.stderr`` / ``.rc``."""
    words = shlex.split((folder / f"{name}.cmd").read_text().replace("<root>", str(root)))
    assert words[0] == "dualsae"
    args = words[1:] + list(extra)
    if "clip_retrieval" in args:
        pytest.importorskip("pyarrow")
    cwd = folder / f"{name}.cwd"
    if cwd.is_file():
        monkeypatch.chdir(root.parent / cwd.read_text().strip())
    rc, out, err = cli(args, capsys)
    monkeypatch.chdir(root)
    want_err = folder / f"{name}.stderr"
    command = args[0]
    mode = CHANGED_ON_PURPOSE.get(command)
    if mode is not None:
        old_out = _normalise((folder / f"{name}.txt").read_text(), root, command)
        new_out = _normalise(out, root, command)
        if mode == "added" and "--json" in args:
            assert_same_numbers(without_added(json.loads(new_out)), json.loads(old_out), name)
        elif mode == "added":
            assert_lines_kept(new_out, old_out, name)
            # info without a usable store now says why it prints no reconstruction (a note on stderr)
            assert_lines_kept(_normalise(err, root, command), _normalise(want_err.read_text(), root, command) if want_err.is_file() else "", name)
            err = want_err.read_text() if want_err.is_file() else ""
        out = (folder / f"{name}.txt").read_text()  # compared above; stderr and exit status as before below
    assert (_normalise(out, root, command), _normalise(err, root, command), rc) == (
        _normalise((folder / f"{name}.txt").read_text(), root, command),
        _normalise(want_err.read_text(), root, command) if want_err.is_file() else "",
        int((folder / f"{name}.rc").read_text()),
    ), f"'{' '.join(words)}' differs from the old CLI's output"


def without_added(obj):
    """``obj`` without the keys of :data:`ADDED_KEYS`, at any depth."""
    if isinstance(obj, dict):
        return {k: without_added(v) for k, v in obj.items() if k not in ADDED_KEYS}
    if isinstance(obj, list):
        return [without_added(v) for v in obj]
    return obj


def assert_lines_kept(new: str, old: str, where: str) -> None:
    """Every line of ``old`` is a line of ``new``, in the same order (new lines may stand between)."""
    lines = iter(new.splitlines())
    for line in old.splitlines():
        assert any(n == line for n in lines), f"{where}: old line {line!r} is missing (or out of order) in the new output:\n{new}"


def assert_same_numbers(new, old, where: str = "") -> None:
    """Same structure; strings, bools, None and ints exactly; floats to 1e-6 relative."""
    if isinstance(old, dict):
        assert isinstance(new, dict) and sorted(new) == sorted(old), f"{where}: keys {sorted(new) if isinstance(new, dict) else new} != {sorted(old)}"
        for k in old:
            assert_same_numbers(new[k], old[k], f"{where}.{k}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), f"{where}: {new} != {old}"
        for i, (a, b) in enumerate(zip(new, old)):
            assert_same_numbers(a, b, f"{where}[{i}]")
    elif isinstance(old, float):
        assert type(new) is float, f"{where}: {new!r} is not a float like {old!r}"
        assert (math.isnan(new) and math.isnan(old)) or math.isclose(new, old, rel_tol=1e-6, abs_tol=1e-12), f"{where}: {new!r} != {old!r}"
    else:  # int, bool, str, None
        assert type(new) is type(old) and new == old, f"{where}: {new!r} != {old!r}"


def _chunk(path: Path):
    """The JSON object of a latent-page data file ``...(DUALSAE.chunks=DUALSAE.chunks||{})[N]={...};``."""
    text = path.read_text()
    return json.loads(text[text.index("]=") + 2:].rstrip().rstrip(";"))


def read_js(path: Path, name: str):
    """The JSON object of a report data file ``window.DUALSAE=...;DUALSAE.<name>={...};``."""
    text = path.read_text()
    start = text.index(f"DUALSAE.{name}=") + len(f"DUALSAE.{name}=")
    return json.loads(text[start:].rstrip().rstrip(";"))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    return struct.unpack(">II", data[16:24])


def same_files(new: Path, old: Path, skip: tuple[str, ...] = ("manifest.json",)) -> None:
    """Every file of ``old`` is in ``new`` with the same bytes and nothing else is there. PNGs are compared
    by size in pixels only: their bytes come from matplotlib, not from dualsae."""
    def listing(folder: Path) -> list[str]:
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                      if p.is_file() and p.name not in skip and not p.name.endswith(".lock"))

    assert listing(new) == listing(old)
    for name in listing(old):
        if name.endswith(".png"):
            assert png_size(new / name) == png_size(old / name), name
        elif Path(name).name in CHANGED_FILES:
            continue
        elif re.fullmatch(r"(data/)?chunk-\d+\.js", name):  # latent pages: old content, plus ADDED_KEYS
            assert without_added(_chunk(new / name)) == _chunk(old / name), f"{new / name} differs from the old {old / name}"
        else:
            assert (new / name).read_bytes() == (old / name).read_bytes(), f"{new / name} differs from the old {old / name}"


#: Report files that issue 19 added (labels, agreement, interval samples, the evaluation table): the old
#: report's files must all be there with the same content, these may come on top.
REPORT_NEW_ASSETS = ("dom.js", "views.js")
#: summary.js fields whose meaning changed on purpose: eval (a table, not flattened keys), live / dead
#: (align's counts when the folder records them, not a recount on the report's rows).
SUMMARY_CHANGED = ("eval", "live", "dead")


def same_report(new: Path, old: Path) -> None:
    """A report rebuilt from old folders holds the old report: every old file (thumbnails by bytes, assets
    aside); in data/*.js every old field with the same numbers (new fields and SUMMARY_CHANGED aside; a
    latent-table column now left out as constant must have been constant); the new assets on top."""
    def listing(folder: Path) -> set[str]:
        return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
                if p.is_file() and p.name != "manifest.json" and not p.name.endswith(".lock")}

    def data_key(name: str) -> str | None:
        stem = Path(name).stem
        return "chunks" if stem.startswith("chunk-") else stem if stem in ("summary", "latents", "search") else None

    got, want = listing(new), listing(old)
    assert want <= got, f"missing from the rebuilt report: {sorted(want - got)}"
    assert all(n in REPORT_NEW_ASSETS or n.startswith("img/r") or data_key(n) for n in got - want), sorted(got - want)
    for name in sorted(want):
        if name.endswith(".png"):
            assert png_size(new / name) == png_size(old / name), name
        elif name.startswith("img/"):
            assert (new / name).read_bytes() == (old / name).read_bytes(), name
    for name in sorted(n for n in want if data_key(n)):
        key = data_key(name)
        a, b = _report_js(new / name, key), _report_js(old / name, key)
        if key == "summary":
            for k in SUMMARY_CHANGED:
                a.pop(k, None), b.pop(k, None)
            a = {k: a[k] for k in b}
        elif key == "latents":
            for k in list(b):
                if k not in a and k in a.get("constant", {}):
                    assert len({v for v in b.pop(k) if v is not None}) <= 1, k
            a = {k: a[k] for k in b}
        elif key == "chunks":
            for j, e in b["latents"].items():
                a["latents"][j] = {k: ({kk: a["latents"][j][k][kk] for kk in v} if isinstance(v, dict) else a["latents"][j][k])
                                   for k, v in e.items()}
            assert set(b["rows"]) <= set(a["rows"])
            a = {"latents": a["latents"], "rows": {r: a["rows"][r] for r in b["rows"]}}
        assert_same_numbers(a, b, name)


def _report_js(path: Path, name: str):
    if name != "chunks":
        return read_js(path, name)
    text = path.read_text()
    return json.loads(text[text.index("]=") + 2 : text.rstrip().rindex(";")])


# ------------------------------------------------------------------------------------ model folders
# folder: (method, m of the pair, m of the image / text SAE, d, k, one shared SAE, source run of an aligned folder)
MODELS = {
    "run_specific": ("specific", 16, 16, 16, 4, False, None),
    "run_shared": ("shared", 32, 32, 16, 4, True, None),
    "run_group_sparse": ("group-sparse", 32, 32, 16, 4, True, None),
    "run_iso_energy": ("iso-energy", 32, 32, 16, 4, True, None),
    "run_synth": ("specific", 24, 24, 16, 4, False, None),
    "aligned": ("aligned", 16, 16, 16, 4, False, "run_specific"),
    "aligned_pruned": ("aligned", 16, 16, 16, 4, False, "run_specific"),
    "aligned_synth": ("aligned", 24, 24, 16, 4, False, "run_synth"),
}


def _first_rows(data: str, modality: str, n: int = 4) -> torch.Tensor:
    return torch.from_numpy(np.array(getattr(open_store(data), modality)[:n], dtype=np.float32))


@pytest.mark.parametrize("folder", sorted(MODELS))
def test_model_folder_loads(root, folder):
    method, m, m_sae, d, k, shared, _ = MODELS[folder]
    old = CODES[folder]
    pair = load_model(folder)
    assert (pair.method, pair.m, pair.shared) == (method, m, shared) == (old["method"], old["m"], old["shared"])
    for mod in ("image", "text"):
        sae = pair.sae_for(mod)
        assert (sae.m, sae.d) == (m_sae, d) == (old[mod]["m"], old[mod]["d"])
        codes = pair.encode(mod, _first_rows(old["data"], mod))
        assert codes.m == m and tuple(codes.values.shape) == tuple(codes.indices.shape) == (4, k)
        assert torch.isfinite(codes.values).all() and (codes.values >= 0).all()
        want_values = np.asarray(old[mod]["values"])
        assert ((codes.values > 0).sum(dim=1).tolist() == (want_values > 0).sum(axis=1).tolist() == [k] * 4)
        # the same latents with the same activations as the old loader gave
        assert codes.indices.tolist() == old[mod]["indices"]
        np.testing.assert_allclose(codes.values.numpy(), want_values, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("folder", [f for f in sorted(MODELS) if MODELS[f][6]])
def test_aligned_folder_permutation(root, folder):
    """The aligned pair holds alignment.json's permutation, and its text codes are the source run's text
    codes relabelled by it (eq. 7); its image codes are the source run's."""
    alignment = json.loads((root / folder / "alignment.json").read_text())
    source = MODELS[folder][6]
    assert alignment["source_run"] == source
    pair, run = load_model(folder), load_model(source)
    perm = np.asarray(alignment["permutation"])
    assert sorted(perm.tolist()) == list(range(MODELS[folder][2]))
    assert np.array_equal(np.asarray(pair.permutation), perm)
    data = CODES[folder]["data"]
    x_img, x_txt = _first_rows(data, "image", 32), _first_rows(data, "text", 32)
    a, b = pair.encode("image", x_img), run.encode("image", x_img)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    a, b = pair.encode("text", x_txt), run.encode("text", x_txt)
    assert np.array_equal(a.indices.numpy(), perm[b.indices.numpy()])
    torch.testing.assert_close(a.values, b.values, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------- stores
def _meta_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# name: (open with same_width, rows, image width, text width, dtype, meta fields or None)
STORES = {
    "store": (True, 300, 16, 16, np.float32, ["caption", "category", "id"]),
    "external": (False, 300, 24, 12, np.float32, None),
    "clip_retrieval": (True, 120, 16, 16, np.float16, ["caption", "category", "key"]),
    "synth_store": (True, 400, 16, 16, np.float32, ["split"]),
}


@pytest.mark.parametrize("name", sorted(STORES))
@pytest.mark.parametrize("opener", ["open_store", "PairedEmbeddings.open"])
def test_store_opens(root, name, opener):
    if name == "clip_retrieval":
        pytest.importorskip("pyarrow")
    same_width, n, d_img, d_txt, dtype, fields = STORES[name]
    open_fn = open_store if opener == "open_store" else PairedEmbeddings.open
    s = open_fn(name, same_width=same_width)
    assert (s.n, s.d, s.has_pairs) == (n, d_img, True)
    assert (tuple(s.image.shape), tuple(s.text.shape)) == ((n, d_img), (n, d_txt))
    assert (np.asarray(s.image[:2]).dtype, np.asarray(s.text[:2]).dtype) == (dtype, dtype)
    if fields is None:
        assert s.meta is None
    else:
        assert len(s.meta) == n and all(sorted(r) == fields for r in s.meta)
    base = root / ("store" if name == "clip_retrieval" else name)
    if name != "clip_retrieval":
        for mod in ("image", "text"):
            np.testing.assert_array_equal(np.asarray(getattr(s, mod)[:]), np.load(base / f"{mod}.npy"))
    if name in ("store", "synth_store"):
        assert s.meta == _meta_rows(base / "meta.jsonl")
    if name == "store":
        assert (s.meta[0], s.meta[-1]) == ({"id": "r0000", "caption": "a photo of a cat", "category": "cat"},
                                           {"id": "r0299", "caption": "a picture of a bird", "category": "bird"})
        assert len({r["category"] for r in s.meta}) == 6
    if name == "synth_store":
        assert [r["split"] for r in s.meta] == ["train"] * 300 + ["test"] * 100
    if name == "clip_retrieval":
        # the first 120 rows of store/ as float16, the parquet columns as meta
        for mod in ("image", "text"):
            np.testing.assert_array_equal(np.asarray(getattr(s, mod)[:]), np.load(base / f"{mod}.npy")[:120].astype(np.float16))
        old = _meta_rows(base / "meta.jsonl")[:120]
        assert s.meta == [{"caption": r["caption"], "category": r["category"], "key": f"{i:09d}"} for i, r in enumerate(old)]


def test_external_store_needs_same_width_false(root):
    """As before: an external store whose widths differ is refused unless same_width=False."""
    with pytest.raises(Exception) as e:
        open_store("external")
    assert str(e.value) == "external: text.npy has dimension 12, image.npy has 24; both must be [N, d] with the same d"


# --------------------------------------------------------------------------- the old CLI's printouts
READ_ONLY = [n.stem for n in sorted(EXPECTED.glob("*.cmd"))]
READ_ONLY_EXTRA = ["analyze_top_collapse", "translate_run_specific", "translate_aligned_recorded",
                   "info_aligned_elsewhere", "translate_aligned_elsewhere"]


@pytest.mark.parametrize("name", READ_ONLY)
def test_cli_output_as_before(root, name, capsys, monkeypatch):
    run_case(EXPECTED, name, root, capsys, monkeypatch)


@pytest.mark.parametrize("name", READ_ONLY_EXTRA)
def test_cli_refusals_and_recorded_paths_as_before(root, name, capsys, monkeypatch):
    run_case(EXTRA, name, root, capsys, monkeypatch)


def test_info_reads_the_old_collapse_report(root, capsys):
    """The old CLI refused ``info collapse`` (expected/extra/info_collapse.*); since issue 19 it shows the collapse
    report with the shared run it names (``source_run``)."""
    rc, out, err = cli(["info", "collapse", "--data", "store", "--json"], capsys)
    assert (rc, err) == (0, "")
    info = json.loads(out)
    old = json.loads((root / "collapse" / "collapse.json").read_text())
    assert info["source_run"] == "run_shared" and info["method"] == "shared"
    assert info["alignment"]["collapse_rate"] == old["collapse_rate"] and info["alignment"]["rows"] == old["rows"]


def test_python_m_dualsae_as_before(root):
    """The entry point itself, in a fresh process: ``python -m dualsae info aligned --data store``."""
    src = str(Path(dualsae.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    args = shlex.split((EXPECTED / "info_aligned.cmd").read_text())[1:]
    p = subprocess.run([sys.executable, "-m", "dualsae", *args], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert (p.stderr, p.returncode) == ("", 0)
    assert_lines_kept(p.stdout, (EXPECTED / "info_aligned.txt").read_text(), "python -m dualsae info")  # CHANGED_ON_PURPOSE


# ------------------------------------------------------------------------------ outputs rebuilt now
def test_eval_rerun_gives_old_metrics(root, capsys, monkeypatch):
    run_case(EXTRA, "eval_aligned", root, capsys, monkeypatch)
    new = json.loads((root / "eval_rerun" / "metrics.json").read_text())
    old = json.loads((root / "eval" / "metrics.json").read_text())
    # 'seconds' holds each task's wall-clock time: only its keys (the tasks run) can match
    assert sorted(new.pop("seconds")) == sorted(old.pop("seconds"))
    assert_same_numbers(without_added(new), old, "metrics.json")
    for name in ("metrics_monosemanticity_image.npy", "metrics_monosemanticity_text.npy"):
        np.testing.assert_allclose(np.load(root / "eval_rerun" / name), np.load(root / "eval" / name), rtol=1e-6)
    assert png_size(root / "eval_rerun" / "metrics_monosemanticity.png") == png_size(root / "eval" / "metrics_monosemanticity.png")


def test_heterogeneity_from_old_correlation(root, capsys, monkeypatch):
    """analyze heterogeneity reads aligned/correlation.safetensors (not the store: it runs without one)."""
    shutil.rmtree(root / "store")
    run_case(EXTRA, "heterogeneity_aligned", root, capsys, monkeypatch)
    new = json.loads((root / "heterogeneity_rerun" / "heterogeneity.json").read_text())
    old = json.loads((root / "heterogeneity" / "heterogeneity.json").read_text())
    assert new["correlation_source"] == "aligned/correlation.safetensors"
    assert_same_numbers(new, old, "heterogeneity.json")
    assert png_size(root / "heterogeneity_rerun" / "heterogeneity.png") == png_size(root / "heterogeneity" / "heterogeneity.png")


def test_report_from_aligned_with_old_eval(root, capsys, monkeypatch):
    """The old command into a new folder rebuilds the old report/ file for file."""
    run_case(EXTRA, "report_aligned", root, capsys, monkeypatch)
    same_report(root / "report_rerun", root / "report")
    # its evaluation table holds the old eval/metrics.json's numbers (rounded to 4 decimals)
    tasks = json.loads((root / "eval" / "metrics.json").read_text())["tasks"]
    rows = {r["metric"]: r for r in read_js(root / "report_rerun" / "data" / "summary.js", "summary")["eval"]["rows"]}
    assert len(rows) == 16
    for metric, col, want in (("MSE (image)", "model", tasks["recon"]["image"]["mse"]),
                              ("image→text R@5", "model", tasks["retrieval"]["image_to_text"]["R@5"]),
                              ("image→text R@5", "raw", tasks["retrieval"]["embedding_reference"]["image_to_text"]["R@5"]),
                              ("top-1", "baseline", tasks["zeroshot"]["majority_baseline"]),
                              ("mean per class", "model", tasks["zeroshot"]["mean_per_class"]),
                              ("MRR", "raw", tasks["steering"]["mrr_unsteered"])):
        assert math.isclose(rows[metric][col], want, rel_tol=0, abs_tol=5e-5), (metric, col)


def test_report_from_shared_run_with_old_collapse(root, capsys, monkeypatch):
    """report reads collapse.json when it sits in the shared run's folder: the old align output, put there."""
    shutil.copy(root / "collapse" / "collapse.json", root / "run_shared" / "collapse.json")
    run_case(EXTRA, "report_run_shared", root, capsys, monkeypatch)
    same_report(root / "report_run_shared" / "data", EXTRA / "report_run_shared_data")
    collapse = json.loads((root / "collapse" / "collapse.json").read_text())
    got = read_js(root / "report_run_shared" / "data" / "summary.js", "summary")["collapse"]
    assert got.pop("source") == "run_shared/collapse.json"
    assert got == {k: collapse[k] for k in ("collapse_rate", "collapse_rate_of_matched", "collapsed", "matched", "live",
                                            "mean_matched_correlation", "rows")}


def test_old_report_folder_is_a_report(root, capsys, monkeypatch):
    """The copied report/ names /work/legacy_fixtures in its manifest's job, so here it is another job's
    report: refused in one line and left as it is; --overwrite replaces it (as the old code did)."""
    before = {p: p.read_bytes() for p in (root / "report").rglob("*") if p.is_file()}
    run_case(EXTRA, "report_into_old_copied", root, capsys, monkeypatch)
    assert {p: p.read_bytes() for p in (root / "report").rglob("*") if p.is_file()} == before
    run_case(EXTRA, "report_into_old_copied_overwrite", root, capsys, monkeypatch)
    same_report(root / "report", FIXTURES / "report")
    manifest = json.loads((root / "report" / "manifest.json").read_text())
    assert (manifest["command"], manifest["complete"], manifest["job"]["model"]) == ("report", True, str(root / "aligned"))


def test_old_report_folder_same_job_is_replaced(root, capsys, monkeypatch):
    """The old report/ as if written here (its manifest's job naming this copy): the same command replaces
    it without --overwrite, stray files included (as the old code did)."""
    manifest = root / "report" / "manifest.json"
    written_in = Path(json.loads(manifest.read_text())["job"]["model"]).parent  # /work/legacy_fixtures
    manifest.write_text(manifest.read_text().replace(f'"{written_in}/', f'"{root}/'))
    (root / "report" / "stray.txt").write_text("not part of the report\n")
    run_case(EXTRA, "report_into_old_same_job", root, capsys, monkeypatch)
    assert sorted(p.name for p in (root / "report").iterdir()) == sorted((EXTRA / "report_into_old_same_job.ls").read_text().split() + list(REPORT_NEW_ASSETS))
    same_report(root / "report", FIXTURES / "report")
