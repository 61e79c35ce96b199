"""``dualsae diagnose`` end to end (:mod:`dualsae.diagnose.store_diagnosis`, :mod:`dualsae.diagnose.pilot_report`)
on a slice of the real emoji store: the printout's order, diagnose.json / diagnose.md, a kill resumed,
a saved report re-judged, and a misspelt label field."""

from __future__ import annotations

import json

import numpy as np

from dualsae.cli import main
from dualsae.diagnose.pilot_report import SYNTHETIC_HEADING
from dualsae.store.paired import write_store
from tests.fault_helpers import KILLED, run_cli


def _emoji_slice(emoji, folder, n_train=480, n_test=160):
    """Rows of the real emoji store (its own train / test split) written as a small store."""
    metas = emoji.meta_rows()
    tr = [i for i, r in enumerate(metas) if r["split"] == "train"][:n_train]
    te = [i for i, r in enumerate(metas) if r["split"] == "test"][:n_test]
    pos = np.array(sorted(tr + te))
    keep = [{k: metas[i][k] for k in ("caption", "category", "split")} for i in pos]
    write_store(folder, emoji.read("image", pos).numpy(), emoji.read("text", pos).numpy(), keep)
    return folder


FAST = ["--seeds", "2", "--pilot-steps", "16", "--steps", "4", "--no-progress"]


def test_emoji_slice_end_to_end_and_a_kill_resumes(emoji, tmp_path, capsys):
    data = _emoji_slice(emoji, tmp_path / "emoji")
    out = tmp_path / "diag"
    # Killed while writing the third unit (shared SAE of seed 1): the first two are kept.
    killed = run_cli(["diagnose", data, "--out", out, *FAST], fault="before-replace:*pilot/units/shared_seed1.json")
    assert killed.returncode == KILLED, killed.stderr[-2000:]
    units = out / "pilot" / "units"
    finished = lambda: sorted(p for p in units.glob("*.json") if not p.name.startswith("."))  # noqa: E731
    assert [p.name for p in finished()] == ["shared_seed0.json", "specific_seed0.json"]
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    kept = {p.name: p.stat().st_mtime_ns for p in finished()}
    assert main(["diagnose", str(data), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in finished() if p.name in kept} == kept  # not retrained
    assert len(finished()) == 4 and len(list(units.iterdir())) == 4  # the killed write's temporary is swept
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    rep = json.loads((out / "diagnose.json").read_text())
    assert rep["pilot"]["label_field"] == "category" and rep["pilot"]["rows"] == {"train": 480, "eval": 160}
    assert set(rep["recommendation"]["objectives"]) == {"reconstruction", "retrieval", "interpretability"}
    for key in ("recon_mse", "i2t_R@1", "t2i_R@10", "zs_top1", "steer_map"):
        assert rep["recommendation"]["summary"]["shared"][key]["n"] == 2
    # The measured recommendation comes first; synthetic numbers only under their own heading.
    head, synthetic = printed.split(SYNTHETIC_HEADING)
    assert "recommendation per objective (measured on this store)" in head and "\nrecommendation: " in head
    assert "Fig. 5" not in head and "synthetic Fig. 5 stores (App. E.2, d = 256; not this store)" in synthetic
    md = (out / "diagnose.md").read_text()
    assert "| reconstruction MSE |" in md and "## " + SYNTHETIC_HEADING in md
    # Verdicts remade from the saved file for one objective, without training.
    assert main(["diagnose", "--from-json", str(out / "diagnose.json"), "--objective", "retrieval"]) == 0
    again = capsys.readouterr().out
    assert "  retrieval: " in again and "  reconstruction: " not in again


def test_misspelt_label_field_is_one_line_exit_2(emoji, tmp_path, capsys):
    data = _emoji_slice(emoji, tmp_path / "emoji", 100, 40)
    assert main(["diagnose", str(data), "--label-field", "categroy", *FAST]) == 2
    err = capsys.readouterr().err
    assert "no field 'categroy'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
