"""diagnose's pilot head-to-head: the budget it picks from the store's size, the label field, the
recommendation it reaches on App. E.2 stores where each method should win, and its flags."""

from __future__ import annotations

import numpy as np
import pytest

from dualsae.cli import build_parser
from dualsae.commands.diagnose import PILOT_FLAGS
from dualsae.commands.flags import given
from dualsae.core.errors import ConfigError, DataError
from dualsae.diagnose.head_to_head import PilotConfig, resolve_label_field, run_pilot
from dualsae.diagnose.verdicts import recommend
from dualsae.store.generator import SynthConfig, write_synthetic
from dualsae.store.paired import open_store, write_store


def test_budget_follows_the_store_size():
    q = PilotConfig().resolve(6_675, 1_605)  # the emoji store
    assert (q.pilot_rows, q.pilot_eval_rows, q.pilot_latents, q.pilot_k, q.pilot_epochs) == (6_675, 1_605, 512, 32, 10)
    q = PilotConfig().resolve(1_000_000, 250_000)  # rows capped: the cost stops growing with N
    assert (q.pilot_rows, q.pilot_eval_rows, q.pilot_latents, q.pilot_k, q.pilot_epochs) == (16_384, 4_096, 1024, 32, 4)
    q = PilotConfig().resolve(200, 50)  # a small store: m at its floor, K at most m / 8
    assert (q.pilot_latents, q.pilot_k, q.pilot_epochs) == (32, 4, 328)
    with pytest.raises(DataError, match="at least|>= 64"):
        PilotConfig().resolve(40, 10)
    with pytest.raises(ConfigError, match="--seeds must be >= 2"):
        PilotConfig(seeds=1).validate()
    with pytest.raises(ConfigError, match="--baselines: unknown"):
        PilotConfig(baselines="iso").validate()
    assert PilotConfig(baselines="iso-energy, group-sparse").methods() == ("shared", "specific", "group-sparse", "iso-energy")


def test_label_field_auto_named_and_misspelt(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    write_store(tmp_path / "s", x, x, [{"caption": str(i), "category": "ab"[i % 2]} for i in range(20)])
    store = open_store(tmp_path / "s")
    assert resolve_label_field(store, "auto") == "category"
    assert resolve_label_field(store, "none") is None
    with pytest.raises(ConfigError, match=r"--label-field: .*meta.jsonl has no field 'categroy'.*fields found: caption, category"):
        resolve_label_field(store, "categroy")


def _synthetic(tmp_path, distance: float, n_side: int, active: int):
    """A small App. E.2 store: d = 32, 128 shared + ``n_side`` image-only + ``n_side`` text-only concepts,
    ``active`` of them active per pair on average."""
    cfg = SynthConfig(alpha=1.0 - distance, d=32, n_shared=128, n_image=n_side, n_text=n_side, sparsity=1 - active / (128 + 2 * n_side),
                      eps_max=0.5, n_train=2_048, n_eval=512, seed=3)
    folder = tmp_path / f"dist{distance:g}"
    write_synthetic(cfg, folder, progress=False)
    return open_store(folder)


def test_at_distance_0_a_shared_sae_wins_reconstruction_and_retrieval(tmp_path):
    """Planted by capacity: at distance 0 both modalities use the same 128 directions; the shared SAE's
    64 latents serve both, each specific SAE has 32 for the same 128, so a shared SAE reconstructs
    better, and it codes an image and its caption on the same indices (retrieval)."""
    store = _synthetic(tmp_path, 0.0, 0, 4)
    cfg = PilotConfig(seeds=2, pilot_latents=64, pilot_k=4, pilot_steps=256, label_field="none")
    rec = recommend(run_pilot(store, cfg, tmp_path / "work", threads=1)["units"], ("reconstruction", "retrieval"))
    assert rec["objectives"]["reconstruction"]["winner"] == "shared", rec["objectives"]["reconstruction"]["verdict"]
    assert rec["objectives"]["retrieval"]["winner"] == "shared", rec["objectives"]["retrieval"]["verdict"]
    assert rec["descriptors"]["collapse_rate"]["mean"] > 0.9


def test_at_distance_1_the_specific_pair_wins_reconstruction(tmp_path):
    """Fig. 5's claim (a) at distance 1 (orthogonal image and text directions), at the pilot budget."""
    store = _synthetic(tmp_path, 1.0, 64, 8)
    cfg = PilotConfig(seeds=2, pilot_latents=256, pilot_k=8, pilot_steps=256, label_field="none")
    rec = recommend(run_pilot(store, cfg, tmp_path / "work", threads=1)["units"], ("reconstruction",))
    assert rec["objectives"]["reconstruction"]["winner"] == "specific", rec["objectives"]["reconstruction"]["verdict"]
    assert rec["descriptors"]["collapse_rate"]["mean"] < 0.2 and rec["descriptors"]["heterogeneity"]["mean"] > 0.8


def test_pilot_flags_build_the_config():
    args = build_parser().parse_args(["diagnose", "s", "--seeds", "2", "--pilot-latents", "64", "--baselines", "iso-energy",
                                      "--label-field", "none", "--spread", "2", "--objective", "retrieval"])
    assert PilotConfig(**given(args, PILOT_FLAGS)) == PilotConfig(seeds=2, pilot_latents=64, baselines="iso-energy",
                                                                  label_field="none", spread=2.0)
    assert args.objective == "retrieval"
