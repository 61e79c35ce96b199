"""The eval task table (dualsae.evaluation.tasks.REGISTRY): every registered task runs on a tiny
store, fills the Table 1 columns it declares, and prints its summary lines; ``evaluate``, the
printed table and Table 1 iterate the same entries."""

from __future__ import annotations

from dualsae.evaluation.metrics.zeroshot import load_zero_shot_store
from dualsae.evaluation.tasks import (
    REGISTRY,
    TASKS,
    EvalOptions,
    aligned_view,
    evaluate,
    format_table,
    table_columns,
)
from dualsae.experiments.table1.table import COLUMNS, _flatten
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings, open_store
from tests.metrics_helpers import make_category_store, make_zeroshot_store, random_sae


def test_every_registered_task_runs_and_fills_its_columns(tmp_path):
    assert TASKS == tuple(REGISTRY) == ("recon", "retrieval", "zeroshot", "steering", "monosemanticity")
    full = PairedEmbeddings.open(make_category_store(tmp_path / "data", n=90))
    test, train = full.split("test"), full.split("train")
    ext = aligned_view(open_store(make_category_store(tmp_path / "ext", d=5, seed=9, n=90), same_width=False), test)
    zs = load_zero_shot_store(make_zeroshot_store(tmp_path / "zs"))
    pair = SAEPair("specific", random_sae(8, 24, 3, seed=1), random_sae(8, 24, 3, seed=2))
    options = EvalOptions(label_field="category", concept_field="category", steering_sources=5, steering_negatives=20,
                          progress=False)
    doc = evaluate(pair, test, options, train_store=train, zeroshot=zs, external=ext, artefact_prefix=tmp_path / "m")
    assert doc["skipped"] == {} and list(doc["tasks"]) == list(REGISTRY) and list(doc["seconds"]) == list(REGISTRY)
    cols = table_columns(doc)
    assert list(cols) == [c for c, _, _ in COLUMNS] and _flatten(doc) == cols
    for name, task in REGISTRY.items():
        row = task.table_row(doc["tasks"][name])
        assert row and set(row) <= {c for c, _, _ in task.columns}, name
        assert all(isinstance(v, float) for v in row.values()), name
        assert task.lines(doc["tasks"][name]), name
    assert all(v is not None for v in cols.values())  # a zero-shot store fills zs_recon_mse too
    text = format_table(doc)
    firsts = [line.split()[0] for line in text.splitlines() if line and not line.startswith(" ")]
    assert list(dict.fromkeys(firsts)) == list(REGISTRY)  # each task's lines, in registry order


def test_table1_columns_are_the_registry_columns_in_their_old_order():
    assert COLUMNS == (
        ("recon_mse", "Recon. MSE ↓", False),
        ("i2t_R@1", "I→T R@1 ↑", True), ("i2t_R@5", "I→T R@5 ↑", True), ("i2t_R@10", "I→T R@10 ↑", True),
        ("t2i_R@1", "T→I R@1 ↑", True), ("t2i_R@5", "T→I R@5 ↑", True), ("t2i_R@10", "T→I R@10 ↑", True),
        ("zs_recon_mse", "Zero-shot set recon. MSE ↓", False), ("zs_top1", "Zero-shot top-1 ↑", True),
        ("zs_mean_per_class", "Zero-shot mean/class ↑", True),
        ("steer_map", "Steering mAP ↑", True), ("steer_mrr", "Steering MRR ↑", True),
        ("mono_image", "Monosemanticity (image) ↑", True), ("mono_text", "Monosemanticity (text) ↑", True),
    )
