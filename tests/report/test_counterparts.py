"""``dualsae report MODEL --compare DIR``: each latent's counterpart in B, in data/latents.js and on the
rendered table and latent page."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from dualsae.cli import main
from tests.browser import dump_dom, find_chromium, page_url
from tests.evaluation.test_feature_overlap import permuted_copy
from tests.helpers import make_store
from tests.metrics_helpers import random_sae


def _latents(site) -> dict:
    text = (site / "data" / "latents.js").read_text()
    return json.loads(text[text.index("latents=") + len("latents="): text.rstrip().rindex(";")])


def test_report_shows_each_latents_counterpart_in_b(tmp_path, capsys):
    a = random_sae(12, 16, 3, seed=0)
    a.save(tmp_path / "a")
    perm = np.random.default_rng(2).permutation(16)
    permuted_copy(a, perm, noise=0.01).save(tmp_path / "b")
    make_store(tmp_path / "data", n=200, d=12)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 0
    assert main(["report", str(tmp_path / "a"), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "site"),
                 "--compare", str(tmp_path / "cmp"), "--probe-latents", "0", "--no-progress"]) == 0
    table = _latents(tmp_path / "site")
    assert table["counterpart"] == perm.tolist()
    assert min(table["counterpart_cos"]) > 0.99 and table["counterpart_of"] == str(tmp_path / "b")
    # A compare.json of a wider A than the report's model: one line, no site written.
    random_sae(12, 8, 3, seed=1).save(tmp_path / "small")
    capsys.readouterr()
    assert main(["report", str(tmp_path / "small"), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "site2"),
                 "--compare", str(tmp_path / "cmp"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "SAE A has 16 latents, this report's model 8" in err and not (tmp_path / "site2").exists()
    assert main(["report", str(tmp_path / "a"), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "site3"),
                 "--compare", str(tmp_path / "data")]) == 2
    assert "compare.json: missing; expected the --out folder of 'dualsae compare'" in capsys.readouterr().err

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium: the rendered column is not checked")
    dom = dump_dom(chromium, page_url(tmp_path / "site", "table?sort=counterpart_cos&dir=desc"))
    assert "counterpart in B (cos)" in dom
    cells = re.findall(r'<td class="n" title="decoder-matched latent of [^"]*">B (\d+) \(([\d.]+)\)</td>', dom)
    assert len(cells) == 16 and sorted(int(b) for b, _ in cells) == list(range(16))
    dom = dump_dom(chromium, page_url(tmp_path / "site", "latent/3"))
    assert f"B {perm[3]} (" in dom and "counterpart in " in dom
