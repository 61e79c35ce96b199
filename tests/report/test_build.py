"""``dualsae report``: the numbers behind the site (against brute force) and the site itself in a real
browser (headless Chromium): overview, table, a latent page with thumbnails, search, and injected
captions that must show as text and run nothing."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dualsae.alignment.coactivation import stats_from_codes
from dualsae.cli import main
from dualsae.core.codes import SparseCodes
from dualsae.evaluation.top_rows import collapse_captions
from dualsae.report import latents as L
from dualsae.report.pages import caption_groups
from dualsae.store.paired import write_store
from tests.browser import dump_dom, find_chromium, page_url, screenshot

WORDS = ["red", "blue", "green", "cat", "dog", "star", "moon", "tree", "car", "boat", "fish", "bird"]
SCRIPT_CAPTION = '<script>document.title="PWNED"</script> red cat'
IMG_CAPTION = '<img src=x onerror="document.body.dataset.pwned=1;document.title=\'PWNED\'"> red cat'
N, D = 240, 16


def _site_store(folder: Path) -> Path:
    """Planted store: each row holds 1-3 of 12 features, its caption names them, its thumbnail (even
    rows only) is a PNG coloured by its first feature. Rows 3 and 4 carry hostile captions, row 5 a
    hostile id."""
    from PIL import Image

    rng = np.random.default_rng(0)
    f = len(WORDS)
    phi = rng.normal(size=(f, D))
    psi = phi + 0.4 * rng.normal(size=(f, D))
    z = np.zeros((N, f))
    meta = []
    (folder / "thumbs").mkdir(parents=True)
    for i in range(N):
        feats = rng.choice(f, size=rng.integers(1, 4), replace=False)
        z[i, feats] = rng.uniform(0.5, 1.5, size=len(feats))
        caption = " ".join(WORDS[j] for j in sorted(feats))
        meta.append({"id": f"e{i}", "caption": caption, "split": "test" if i % 5 == 0 else "train"})
        if i % 2 == 0:
            hue = (37 * int(feats[0])) % 256
            Image.new("RGB", (12, 12), (hue, 255 - hue, 128)).save(folder / "thumbs" / f"e{i}.png")
    meta[3]["caption"], meta[4]["caption"] = SCRIPT_CAPTION, IMG_CAPTION
    meta[5]["id"] = "<b onmouseover=alert(1)>x"
    x = z @ phi + 0.01 * rng.normal(size=(N, D))
    y = z @ psi + 0.01 * rng.normal(size=(N, D))
    return write_store(folder, x, y, meta)


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = _site_store(root / "data")
    assert main(["train", "--data", str(data), "--method", "specific", "--latents", "32", "--k", "4", "--batch-size", "32",
                 "--epochs", "6", "--out", str(root / "run"), "--no-progress"]) == 0
    assert main(["align", str(root / "run"), "--data", str(data), "--out", str(root / "aligned"), "--no-progress"]) == 0
    assert main(["eval", str(root / "aligned"), "--data", str(data), "--out", str(root / "aligned" / "eval"), "--tasks", "recon,retrieval",
                 "--no-progress"]) == 0
    assert main(["report", str(root / "aligned"), "--data", str(data), "--out", str(root / "site"), "--no-progress"]) == 0
    return root


def _chunk(site_dir: Path, c: int = 0) -> dict:
    text = (site_dir / "data" / f"chunk-{c:04d}.js").read_text()
    return json.loads(text[text.index("]=") + 2 : text.rstrip().rindex(";")])


def _global(site_dir: Path, name: str) -> dict:
    text = (site_dir / "data" / f"{name}.js").read_text()
    return json.loads(text[text.index(f"DUALSAE.{name}=") + len(f"DUALSAE.{name}=") : text.rstrip().rindex(";")])


# ---------------------------------------------------------------------- numbers against brute force
def _random_codes(n=50, k=3, m=7, seed=0) -> SparseCodes:
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(m, size=k, replace=False) for _ in range(n)])
    val = rng.uniform(0.1, 2.0, size=(n, k)).astype(np.float32)
    val[rng.random((n, k)) < 0.2] = 0.0  # inactive TopK entries must count for nothing
    return SparseCodes(torch.from_numpy(val), torch.from_numpy(idx.astype(np.int64)), m)


def _dense(c: SparseCodes) -> np.ndarray:
    out = np.zeros((c.batch, c.m))
    np.add.at(out, (np.repeat(np.arange(c.batch), c.values.shape[1]), c.indices.numpy().ravel()), c.values.numpy().ravel())
    return out


def test_latent_stats_match_dense_brute_force():
    codes = _random_codes()
    z = _dense(codes)
    st = L.latent_stats(codes, top=5)
    np.testing.assert_array_equal(st.fired, (z > 0).sum(0))
    np.testing.assert_allclose(st.freq, (z > 0).mean(0))
    for j in range(codes.m):
        active = z[:, j][z[:, j] > 0]
        assert st.mean_active[j] == pytest.approx(active.mean())
        want = sorted(np.flatnonzero(z[:, j] > 0), key=lambda r: (-z[r, j], r))[:5]
        assert st.top_rows[j].tolist() == want
        assert st.hist[j].sum() == len(active) and st.hist[j][-1] >= 1  # the maximum lands in the last bin


def test_same_index_support_and_correlation_match_numpy():
    a, b = _random_codes(seed=1), _random_codes(seed=2)
    za, zb = _dense(a), _dense(b)
    support, corr = stats_from_codes(a, b, same_index=True).same_index_correlation()
    np.testing.assert_array_equal(support, ((za > 0) & (zb > 0)).sum(0))
    for j in range(a.m):
        assert corr[j] == pytest.approx(np.corrcoef(za[:, j], zb[:, j])[0, 1], abs=1e-9)


def test_word_index_scores_are_excess_mean_activation():
    a, b = _random_codes(seed=3), _random_codes(seed=4)
    captions = [("cat " if i % 3 == 0 else "") + ("dog" if i % 2 else "fish") for i in range(a.batch)]
    index = L.word_index(captions, {"image": a, "text": b}, per_word=a.m)
    rows = np.array(["cat" in c.split() for c in captions])
    za, zb = _dense(a), _dense(b)
    want_i = za[rows].mean(0) - za.mean(0)
    want_t = zb[rows].mean(0) - zb.mean(0)
    got = {e[0]: e for e in index["cat"]}
    assert got, "a word with rows must find latents"
    for j, e in got.items():
        # A latent with no activation on the word's rows in one modality scores 0 there (never a hit).
        assert e[1] == pytest.approx(want_i[j] if za[rows, j].any() else 0.0, abs=1e-4)
        assert e[2] == pytest.approx(want_t[j] if zb[rows, j].any() else 0.0, abs=1e-4)
    order = [e[0] for e in index["cat"]]
    assert order == sorted(order, key=lambda j: -(got[j][1] + got[j][2]))


def test_collapse_captions_counts_duplicates_in_activation_order():
    out = caption_groups(["a", "b", "a", None, "a"], np.array([5.0, 4.0, 3.0, 2.0, 1.0]), limit=10)
    assert out == [["a", 3, 5.0], ["b", 1, 4.0], ["", 1, 2.0]]
    # The one implementation underneath: first (strongest) position and count; None is never merged.
    assert collapse_captions(["a", "b", "a", None, "a", None]) == [("a", 3, 0), ("b", 1, 1), (None, 1, 3), (None, 1, 5)]


# ---------------------------------------------------------------------- the site's files
def test_site_files_and_each_image_copied_once(site):
    s = site / "site"
    for name in ("index.html", "report.css", "report.js", "data/summary.js", "data/latents.js", "data/search.js", "data/chunk-0000.js"):
        assert (s / name).is_file(), name
    summary, table = _global(s, "summary"), _global(s, "latents")
    assert summary["kind"] == "aligned" and summary["m"] == 16 and summary["n_rows"] == N
    assert len(table["corr"]) == 16 and summary["heterogeneity_png"] and summary["curve"]["step"]
    alignment = json.loads((site / "aligned" / "alignment.json").read_text())
    for j, c in zip(alignment["matched"]["image"], alignment["matched"]["correlation"]):
        assert table["corr"][j] == pytest.approx(c, abs=1e-4)
    chunk = _chunk(s)
    refs = {int(r): v for r, v in chunk["rows"].items()}
    with_thumb = {r: v[2] for r, v in refs.items() if v[2]}
    assert with_thumb and all(r % 2 == 0 for r in with_thumb)  # only even rows have thumbnails
    assert all(v[2] is None for r, v in refs.items() if r % 2)
    files = sorted(p.name for p in (s / "img").iterdir() if p.name.startswith("r"))
    assert files == sorted(Path(p).name for p in with_thumb.values())  # one file per row, however often shown
    # A hostile id never becomes a file name or leaves the folder.
    assert not any("<" in p.name for p in s.rglob("*"))


def test_overview_shows_align_and_eval_numbers_as_written(site):
    """The Alignment card's live counts are alignment.json's (not recounted on the report's rows), the
    evaluation table's numbers are metrics.json's, and train / test reconstruction sit side by side."""
    s = _global(site / "site", "summary")
    alignment = json.loads((site / "aligned" / "alignment.json").read_text())
    assert s["live"] == alignment["live"] and s["dead"] == alignment["dead"]
    assert f"{alignment['rows']:,} rows" in s["live_source"]
    card = dict(map(tuple, s["alignment_card"]))
    assert card["live image latents"].startswith(f"{alignment['live']['image']:,} of {alignment['m_image']:,}")
    assert card["matched pairs"] == f"{alignment['matched_count']:,}"
    metrics = json.loads((site / "aligned" / "eval" / "metrics.json").read_text())["tasks"]
    rows = {r["metric"]: r for r in s["eval"]["rows"]}
    assert rows["MSE (image)"]["model"] == pytest.approx(metrics["recon"]["image"]["mse"], abs=5e-5)
    assert rows["text→image R@5"]["raw"] == pytest.approx(metrics["retrieval"]["embedding_reference"]["text_to_image"]["R@5"], abs=5e-5)
    rs = s["reconstruction_splits"]["modalities"]["image"]
    assert rs["test"]["mse"] == pytest.approx(metrics["recon"]["image"]["mse"], rel=1e-4)  # eval and report: the same test rows
    assert rs["train"]["n_rows"] + rs["test"]["n_rows"] == N


def test_table_has_labels_agreement_score_and_pages_interval_samples(site):
    s = site / "site"
    table, chunk = _global(s, "latents"), _chunk(s)
    m = len(table["corr"])
    for key in ("score", "flags", "label_image", "label_text", "agreement"):
        assert len(table[key]) == m, key
    assert any(table["label_text"]) and set(" ".join(table["label_text"]).replace("·", " ").split()) <= set(WORDS)
    # a latent page: rows from every quantile bin, each with an activation inside its bin
    e = next(e for e in chunk["latents"].values() if e["image"]["fired"] >= 10)
    bins = e["image"]["intervals"]
    assert len(bins) == 5 and all(lo <= v <= hi for lo, hi, rows in bins for _, v in rows)
    assert all(str(r) in chunk["rows"] for _, _, rows in bins for r, _ in rows)
    assert bins[-1][1] == pytest.approx(e["image"]["max"], abs=1e-4)


def test_search_finds_the_planted_word(site):
    index = _global(site / "site", "search")
    chunk = _chunk(site / "site")
    best = index["red"][0][0]
    tops = [chunk["rows"][str(r)][0] for r, _ in chunk["latents"][str(best)]["text"]["top"][:5]]
    # "red" is in about 1 caption of 6; the best latent for it fires mostly on captions holding it.
    assert sum("red" in t.split() for t in tops) >= 3, tops


def test_report_refuses_a_foreign_out_folder_and_writes_nothing(site, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = _cli(["report", str(site / "aligned"), "--data", str(site / "data"), "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and "already holds files written by something else (notes.txt)" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_report_option_errors_are_one_line(site, tmp_path, capsys):
    base = ["report", str(site / "aligned"), "--data", str(site / "data"), "--out", str(tmp_path / "x")]
    for flag, value, want in (("--interval-bins", "0", "--interval-bins must be >= 1, found 0"),
                              ("--low-support", "-1", "--low-support must be >= 0, found -1"),
                              ("--overfit-ratio", "0", "--overfit-ratio must be > 0, found 0.0")):
        code, _, err = _cli([*base, flag, value], capsys)
        assert code == 2 and err.count("\n") == 1 and want in err, err
    assert not (tmp_path / "x").exists()


def test_report_folder_is_owned_locked_and_replaced_whole(site, tmp_path, capsys):
    """The site is written as a unit (manifest with every file's hash, swapped in whole), under a lock
    beside it; another model's report is refused unless --overwrite; a kill mid-swap leaves a complete
    site (the old or the new one) and the next run cleans up."""
    from dualsae.files.outdir import check_finished, verify_files
    from dualsae.report.build import report_lock
    from tests.fault_helpers import KILLED, run_cli

    out = tmp_path / "site"
    base = ["report", str(site / "aligned"), "--data", str(site / "data"), "--out", str(out), "--no-progress", "--probe-latents", "0"]
    assert _cli(base, capsys)[0] == 0
    first = check_finished(out)
    assert first["command"] == "report" and "data/summary.js" in first["files"] and "index.html" in first["files"]
    verify_files(out, first)
    assert _cli(base, capsys)[0] == 0  # the same report again: replaced
    other = ["report", str(site / "run"), "--data", str(site / "data"), "--out", str(out), "--no-progress", "--probe-latents", "0"]
    code, _, err = _cli(other, capsys)
    assert code == 2 and err.count("\n") == 1 and "'dualsae report' for another job" in err and "--overwrite" in err
    with report_lock(out):
        code, _, err = _cli(base, capsys)
    assert code == 2 and f"in use by another dualsae process (pid {os.getpid()})" in err
    # SIGKILL while the new site and the old one are being exchanged
    killed = run_cli([*other, "--overwrite"], fault="report-swap")
    assert killed.returncode == KILLED, killed.stderr
    verify_files(out, check_finished(out))  # a complete site is in place
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".site.")]
    assert leftovers, "the kill point should have left the other site beside --out"
    assert _cli([*other, "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".site.") and not p.name.endswith(".lock")) == []
    assert json.loads((out / "manifest.json").read_text())["job"]["model"] == str((site / "run").resolve())
    # a kill between the two renames of the fallback swap (no RENAME_EXCHANGE): the next run puts the
    # old site back before it refuses another job
    os.replace(out, tmp_path / ".site.old-99")
    (tmp_path / ".site.tmp-99").mkdir()
    code, _, err = _cli(base, capsys)
    assert code == 2 and "for another job" in err
    verify_files(out, check_finished(out))
    assert not (tmp_path / ".site.old-99").exists() and not (tmp_path / ".site.tmp-99").exists()


def test_specific_run_warns_and_shared_sae_gets_collapse_rate(site, tmp_path, capsys):
    code, out, _ = _cli(["report", str(site / "run"), "--data", str(site / "data"), "--out", str(tmp_path / "spec"),
                         "--no-progress"], capsys)
    assert code == 0 and "unrelated" in out
    s = _global(tmp_path / "spec", "summary")
    assert s["kind"] == "specific" and s["probes"] == [] and "unrelated" in s["warnings"][0]
    # A shared SAE: the collapse rate is computed from the report's codes and equals align's.
    from dualsae.alignment.post_hoc import align
    from dualsae.models.pair import SAEPair
    from dualsae.models.sae import SAE, SAEConfig
    from dualsae.store.paired import PairedEmbeddings

    torch.manual_seed(0)
    sae = SAE(SAEConfig(d=D, m=16, k=4))
    sae.save(tmp_path / "shared")
    code, _, _ = _cli(["report", str(tmp_path / "shared"), "--data", str(site / "data"), "--out", str(tmp_path / "sh"),
                       "--no-progress"], capsys)
    assert code == 0
    s = _global(tmp_path / "sh", "summary")
    want = align(SAEPair("sae", sae, sae), PairedEmbeddings.open(site / "data"), progress=False).report
    assert s["kind"] == "shared" and s["collapse"]["collapse_rate"] == pytest.approx(want["collapse_rate"])
    assert any("counted on the report's" in w for w in s["warnings"])
    # cos(dec I, dec T) is 1 on every latent of a shared SAE: not a column, listed as constant
    table = _global(tmp_path / "sh", "latents")
    assert "cos" not in table and table["constant"] == {"cos": 1.0}


def test_report_of_a_shared_runs_collapse_folder_shows_aligns_numbers(site, tmp_path, capsys):
    """align on a shared run writes collapse.json into its own --out; reporting that folder shows align's
    collapse rate and live counts (counted on align's train rows), not a recount on the report's rows."""
    data = site / "data"
    assert main(["train", "--data", str(data), "--method", "shared", "--latents", "16", "--k", "4", "--batch-size", "32",
                 "--epochs", "2", "--out", str(tmp_path / "shared"), "--no-progress"]) == 0
    assert main(["align", str(tmp_path / "shared"), "--data", str(data), "--out", str(tmp_path / "collapse"), "--no-progress",
                 "--shuffles", "0"]) == 0
    code, _, _ = _cli(["report", str(tmp_path / "collapse"), "--data", str(data), "--out", str(tmp_path / "site"),
                       "--no-progress", "--probe-latents", "0"], capsys)
    assert code == 0
    s = _global(tmp_path / "site", "summary")
    col = json.loads((tmp_path / "collapse" / "collapse.json").read_text())
    assert col["rows"] < N  # align counted on the train split, the report shows all rows
    assert s["collapse"]["collapse_rate"] == col["collapse_rate"] and s["collapse"]["source"].endswith("collapse.json")
    assert s["live"] == {m: col["live"][m] for m in ("image", "text")}
    assert not any("counted on the report's" in w for w in s["warnings"])
    assert s["curve"] and s["config"]["method"] == "shared"  # the run behind the collapse folder


# ---------------------------------------------------------------------- in a real browser
@pytest.fixture(scope="module")
def chromium():
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set $CHROMIUM); .ci/run installs it")
    return binary


def _attr(dom: str, name: str) -> str | None:
    m = re.search(rf'<body[^>]*\s{name}="([^"]*)"', dom)
    return m.group(1) if m else None


def test_site_renders_in_chromium_and_injected_captions_stay_text(site, chromium, tmp_path):
    s = site / "site"
    dom = dump_dom(chromium, page_url(s, "overview"))
    assert _attr(dom, "data-view") == "overview"
    for part in ('id="overview-cards"', 'id="corr-hist"', 'src="img/heterogeneity.png"', 'id="curve"', "<polyline", 'id="eval-table"',
                 'id="recon-splits"', "image→text R@1"):
        assert part in dom, part
    assert "{&quot;" not in dom and "recon.image" not in dom  # no raw JSON anywhere

    dom = dump_dom(chromium, page_url(s, "table"))
    assert ">score ▼<" in dom and ">label (text side)<" in dom and ">agreement<" in dom  # default: support-aware score

    dom = dump_dom(chromium, page_url(s, "table?sort=support&dir=desc"))
    assert _attr(dom, "data-view") == "table" and _attr(dom, "data-table-rows") == "16"
    table = _global(s, "latents")
    first = int(re.search(r'<tbody><tr><td class="n"><a href="#latent/(\d+)"', dom).group(1))
    assert table["support"][first] == max(table["support"])  # sorted by support, largest first

    # A latent whose top rows hold both thumbnails and a hostile caption.
    chunk = _chunk(s)
    hostile = next(j for j, e in chunk["latents"].items()
                   if {3, 4} & {r for mod in ("image", "text") for r, _ in e[mod]["top"]}
                   and any(chunk["rows"][str(r)][2] for r, _ in e["image"]["top"]))
    dom = dump_dom(chromium, page_url(s, f"latent/{hostile}"))
    assert _attr(dom, "data-view") == "latent" and _attr(dom, "data-latent") == hostile
    assert re.search(r'id="thumbs-image".*?<img src="img/r\d+\.png"', dom, re.S)
    assert 'id="side-text"' in dom and 'id="caps-image"' in dom and 'id="intervals-image"' in dom
    # nearest-latent chips carry the neighbour's label: "12 red · cat (0.83)"
    chips = re.findall(r'<a href="#latent/(\d+)" title="latent \d+: ([^"]+)">\1 ([^<]+) \((-?[\d.]+)\)</a>', dom)
    assert chips and all(label == text for _, label, text, _ in chips), chips[:3]
    assert f"<title>dualsae report: latent {hostile}</title>" in dom
    assert "PWNED" not in re.search(r"<title>.*?</title>", dom).group(0)
    assert _attr(dom, "data-pwned") is None
    assert "&lt;script&gt;document.title" in dom or "&lt;img src=x onerror=" in dom  # shown as text
    assert '<img src="x"' not in dom and "<script>document.title" not in dom
    screenshot(chromium, page_url(s, f"latent/{hostile}"), tmp_path / "latent.png")
    assert (tmp_path / "latent.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dom = dump_dom(chromium, page_url(s, "search/red cat"))
    assert _attr(dom, "data-view") == "search" and int(_attr(dom, "data-results")) > 0
    assert re.search(r'id="search-results".*?href="#latent/\d+"', dom, re.S)
    # A hostile query typed into the search box is shown as text too.
    dom = dump_dom(chromium, page_url(s, "search/%3Cimg%20src%3Dx%20onerror%3D%22document.title%3D1%22%3E"))
    assert "&lt;img src=x onerror=" in dom and '<img src="x"' not in dom
