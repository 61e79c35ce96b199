"""The pilot head-to-head of ``dualsae diagnose``: the methods trained with a small budget on the
store's own training rows and measured on its held-out rows, over several seeds.

Each (method, seed) is one unit of a :class:`dualsae.files.unit_job.UnitJob` (``<out>/pilot/``):
:func:`dualsae.training.trainer.train` on the training rows, :func:`dualsae.alignment.post_hoc.align`
on the same rows (eqs. 5-7 for the specific pair, which is then evaluated as the aligned pair; the
App. F.2 collapse report for a shared SAE), then :func:`dualsae.evaluation.tasks.evaluate` on the
held-out rows: reconstruction (eq. 4 MSE, explained variance), retrieval R@1/5/10 both ways, and
where the store has labels zero-shot top-1 (caption prototypes) and concept steering mAP / MRR
(Sec. 6.2), and monosemanticity (MS) with an external encoder's embeddings. A killed pilot resumes:
finished units are never retrained.

The budget (:class:`PilotConfig`, resolved from the store's size by :meth:`PilotConfig.resolve`):

* rows: at most ``pilot_rows`` training rows and ``pilot_eval_rows`` held-out rows (seeded draws),
  so the cost stops growing with N;
* latents: m of the shared SAE = the largest power of two <= n_train / 8, within [32, 1024] (each
  specific SAE gets m / 2, parameters matched as in Table 1). With K = 32 a specific latent then
  fires on about K n_train / (m / 2) >= 512 rows on average, enough co-firings for eq. 5's
  correlations (Table 1 on emoji sized its latents by the same argument, docs/table1-emoji);
* k: Table 1's K = 32, at most m / 8 so a small store's specific SAEs stay sparse;
* optimiser steps: ``pilot_steps`` (512) of ``pilot_batch_size`` (128) pairs: epochs =
  ceil(steps x batch / n_train) (``pilot_epochs`` wins when given); otherwise App. E.4's protocol
  (the ``real`` preset: AdamW 5e-4, 5% warm-up, cosine decay, clipping 1.0).

Training time per unit is then about steps x batch x m x d (independent of N past ``pilot_rows``);
evaluation grows with the held-out rows (retrieval and steering compare every held-out image with
every held-out caption: n_eval^2 d).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from dualsae.alignment.post_hoc import align
from dualsae.core.errors import ConfigError, DataError
from dualsae.diagnose.pilots import subsample
from dualsae.evaluation.heterogeneity import heterogeneity
from dualsae.evaluation.tasks import EvalOptions, aligned_view, evaluate, table_columns
from dualsae.files.unit_job import UnitJob
from dualsae.store.paired import PairedEmbeddings
from dualsae.training.config import TrainConfig
from dualsae.training.trainer import train

#: The head-to-head's two contenders; "specific" is measured after post-hoc alignment (eqs. 5-7).
CONTENDERS = ("shared", "specific")
#: Optional shared-SAE baselines (``--baselines``).
BASELINES = ("group-sparse", "iso-energy")
#: How a method is named in the printout.
METHOD_NAMES = {"shared": "shared SAE", "specific": "specific + post hoc", "group-sparse": "shared + group-sparse",
                "iso-energy": "shared + Iso-Energy"}
#: Label fields ``--label-field auto`` looks for, in this order.
AUTO_LABEL_FIELDS = ("category", "label", "class")
PILOT_FORMAT = "dualsae.diagnose-pilot/1"


@dataclass(frozen=True)
class PilotConfig:
    """Budget and inputs of the pilot head-to-head (a ``None`` is resolved from the store, module docstring)."""

    # Metadata ``help``: the text of each field's ``dualsae diagnose`` flag (commands/flags.py).
    seeds: int = field(default=3, metadata={"help": "seeds of each pilot training (the spread of every difference)"})
    baselines: str = field(default="", metadata={"help": "also pilot these shared-SAE baselines (comma-separated: group-sparse, iso-energy)",
                                                 "default": "none"})
    pilot_rows: int = field(default=16_384, metadata={"help": "at most this many training rows of the pilot (seeded draw)"})
    pilot_eval_rows: int = field(default=4_096, metadata={"help": "at most this many held-out rows the pilot is measured on"})
    pilot_latents: int | None = field(default=None, metadata={"help": "m of the pilot's shared SAE (specific: m/2 each)",
                                                              "default": "largest power of 2 <= training rows / 8, in [32, 1024]"})
    pilot_k: int | None = field(default=None, metadata={"help": "TopK K of the pilot", "default": "32, at most m/8"})
    pilot_steps: int = field(default=512, metadata={"help": "target optimiser steps of each pilot training"})
    pilot_epochs: int | None = field(default=None, metadata={"help": "epochs of each pilot training", "default": "from --pilot-steps"})
    pilot_batch_size: int = field(default=128, metadata={"help": "pairs per pilot step"})
    label_field: str = field(default="auto", metadata={"help": "meta field of the class labels for zero-shot and steering; "
                                                       "'auto' = the first of category, label, class that every row has; 'none' = no labels"})
    spread: float = field(default=1.0, metadata={"help": "a difference is clear when it exceeds this many times the sum of "
                                                 "the two methods' standard deviations over seeds"})

    def methods(self) -> tuple[str, ...]:
        names = tuple(b.strip() for b in self.baselines.split(",") if b.strip())
        bad = [b for b in names if b not in BASELINES]
        if bad:
            raise ConfigError(f"--baselines: unknown method(s) {bad}; expected a comma-separated subset of {', '.join(BASELINES)}")
        return CONTENDERS + tuple(b for b in BASELINES if b in names)

    def validate(self) -> None:
        for name in ("seeds", "pilot_rows", "pilot_eval_rows", "pilot_steps", "pilot_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"diagnose field '{name}' must be an integer >= 1, found {v!r}")
        if self.seeds < 2:
            raise ConfigError(f"--seeds must be >= 2 (the spread of a difference needs two seeds), found {self.seeds}")
        for name in ("pilot_latents", "pilot_k", "pilot_epochs"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"diagnose field '{name}' must be an integer >= 1, found {v!r}")
        if not self.spread >= 0:
            raise ConfigError(f"--spread must be >= 0, found {self.spread}")
        self.methods()

    def resolve(self, n_train: int, n_eval: int) -> "PilotConfig":
        """Concrete sizes for ``n_train`` training and ``n_eval`` held-out rows (module docstring)."""
        self.validate()
        rows, eval_rows = min(self.pilot_rows, n_train), min(self.pilot_eval_rows, n_eval)
        if rows < 64 or eval_rows < 16:
            raise DataError(f"the pilot needs >= 64 training and >= 16 held-out rows, the store has {n_train:,} and {n_eval:,}")
        m = self.pilot_latents if self.pilot_latents is not None else min(1024, max(32, 2 ** int(math.log2(rows / 8))))
        k = self.pilot_k if self.pilot_k is not None else max(1, min(32, m // 8))
        if m // 2 < k:
            raise ConfigError(f"diagnose: --pilot-latents {m} gives specific SAEs of m/2 = {m // 2} < k = {k}; raise it or lower --pilot-k")
        epochs = self.pilot_epochs if self.pilot_epochs is not None else max(1, math.ceil(self.pilot_steps * self.pilot_batch_size / rows))
        return replace(self, pilot_rows=rows, pilot_eval_rows=eval_rows, pilot_latents=m, pilot_k=k, pilot_epochs=epochs)

    def train_config(self, method: str, seed: int) -> TrainConfig:
        """One pilot training (call on a :meth:`resolve`-d config)."""
        return TrainConfig.from_preset("real", method=method, latents=self.pilot_latents, k=self.pilot_k,
                                       epochs=self.pilot_epochs, batch_size=self.pilot_batch_size, seed=seed)


def resolve_label_field(store: PairedEmbeddings, wanted: str) -> str | None:
    """The meta field used as labels: ``wanted`` itself (it must be on every row), ``'auto'`` (the first of
    :data:`AUTO_LABEL_FIELDS` on every row with >= 2 values), or None for ``'none'`` / no such field."""
    if wanted == "none":
        return None
    rows = store.meta_rows()
    on_all = lambda f: bool(rows) and all(f in r and r[f] is not None for r in rows)  # noqa: E731
    if wanted == "auto":
        return next((f for f in AUTO_LABEL_FIELDS if on_all(f) and len({str(r[f]) for r in rows}) >= 2), None)
    if not on_all(wanted):
        present = sorted({k for r in rows[:1000] for k in r})
        where = f"{store.root}/meta.jsonl" if store.root is not None else "the store's meta rows"
        raise ConfigError(f"--label-field: {where} has no field '{wanted}' on every row; fields found: "
                          f"{', '.join(present) or 'none'} (or --label-field none)")
    return wanted


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block (None: left as they are)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class PilotUnit:
    """One pilot training: ``method`` at ``seed``."""

    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}_seed{self.seed}"


def _metrics(doc: dict) -> dict[str, float | None]:
    """The flat metrics of one :func:`evaluate` result: Table 1's columns plus explained variance and
    zero-shot mean-per-class accuracy."""
    out = table_columns(doc)
    t = doc["tasks"]
    out["recon_ev"] = t["recon"]["mean"]["explained_variance"] if "recon" in t else None
    out["zs_mean_per_class"] = t["zeroshot"].get("mean_per_class") if "zeroshot" in t else None
    return {k: (None if v is None or not math.isfinite(float(v)) else float(v)) for k, v in out.items()}


def _descriptors(pair: Any, result: Any) -> dict:
    """What the model is: the shared SAE's App. F.2 collapse rate, or the specific pair's Fig. 2
    heterogeneity (median cosine distance 1 - cos(phi_i, psi_P(i)) of all matched pairs and of the
    best-correlated 10%)."""
    mt = result.matching
    if pair.shared:
        return {"collapse_rate": result.report["collapse_rate"], "matched": int(len(mt.image)),
                "mean_matched_correlation": mt.mean_corr}
    if len(mt.image) == 0:
        raise DataError("the pilot's specific SAEs have no live latents to match; raise --pilot-steps")
    het = heterogeneity(pair.decoder_columns("image").cpu(), pair.decoder_columns("text").cpu(), result.correlation,
                        mt.live_image, mt.live_text, matched=(mt.image, mt.text))
    top = np.argsort(-mt.corr, kind="stable")[: max(1, int(round(0.1 * len(mt.corr))))]
    het_top = heterogeneity(pair.decoder_columns("image").cpu(), pair.decoder_columns("text").cpu(), result.correlation,
                            mt.live_image, mt.live_text, matched=(mt.image[top], mt.text[top]))
    return {"heterogeneity": het.matched["median"], "heterogeneity_top10": het_top.matched["median"],
            "matched": int(len(mt.image)), "mean_matched_correlation": mt.mean_corr}


def measure_unit(unit: PilotUnit, cfg: PilotConfig, train_rows: PairedEmbeddings, eval_rows: PairedEmbeddings,
                 options: EvalOptions, external: Any = None, device: str = "cpu") -> dict:
    """Train, align and evaluate one pilot unit (module docstring); returns its unit document."""
    tc = cfg.train_config(unit.method, unit.seed)
    t0 = time.perf_counter()
    pair = train(train_rows, tc, None, device=device, progress=False)
    t_train = time.perf_counter() - t0
    result = align(pair, train_rows, device=device, progress=False)
    model = pair if pair.shared else result.pair
    doc = evaluate(model, eval_rows, options, train_store=train_rows, external=external)
    return {"method": unit.method, "seed": unit.seed, "train_seconds": round(t_train, 1),
            "seconds": round(time.perf_counter() - t0, 1), **_descriptors(pair, result),
            "metrics": _metrics(doc), "skipped": doc["skipped"], "train_config": tc.to_dict()}


def run_pilot(store: PairedEmbeddings, cfg: PilotConfig, work: str | Path, *, test_fraction: float = 0.2, split_seed: int = 0,
              external: PairedEmbeddings | None = None, device: str = "cpu", workers: int = 1, threads: int | None = None,
              log: Callable[[str], None] = lambda s: None) -> dict:
    """The pilot head-to-head on ``store`` (its 'train' rows train, its 'test' rows measure; a store
    without a meta 'split' field is split by ``test_fraction`` / ``split_seed``), resumable in ``work``.

    external: a store with the same rows as ``store`` (an external encoder's embeddings; MS).
    workers / threads: trainings run at once (processes) and torch threads of each training (in this
    process when ``workers`` = 1; None: torch's default, or the usable cores split evenly over workers).
    Returns ``{"format", "config" (resolved), "label_field", "rows", "units": [unit documents]}``."""
    train_all = store.split("train", test_fraction=test_fraction, seed=split_seed)
    eval_all = store.split("test", test_fraction=test_fraction, seed=split_seed)
    q = cfg.resolve(train_all.n, eval_all.n)
    train_rows = subsample(train_all, q.pilot_rows, 0)
    eval_rows = subsample(eval_all, q.pilot_eval_rows, 0)
    label = resolve_label_field(store, cfg.label_field)
    tasks = ("recon", "retrieval") + (("zeroshot", "steering") if label else ()) + (("monosemanticity",) if external is not None else ())
    options = EvalOptions(tasks=tasks, label_field=label, concept_field=label, progress=False, device=device)
    ext = aligned_view(external, eval_rows, "--external store") if external is not None else None
    plan = {"format": PILOT_FORMAT, "config": asdict(q), "label_field": label, "tasks": list(tasks),
            "rows": {"train": train_rows.n, "eval": eval_rows.n}, "external": str(external.root) if external is not None else None}
    job = UnitJob.open(work, plan, what="diagnose pilot")
    units = [PilotUnit(method, seed) for seed in range(q.seeds) for method in q.methods()]
    done = len(units) - len(job.pending(units, keys=lambda u: [u.key]))
    log(f"pilot: {len(units)} trainings ({', '.join(q.methods())} x {q.seeds} seeds; {done} already done), "
        f"m = {q.pilot_latents}, k = {q.pilot_k}, {q.pilot_epochs} epochs of {train_rows.n:,} training rows, "
        f"measured on {eval_rows.n:,} held-out rows")
    work_fn = _UnitWork(q, train_rows, eval_rows, options, ext, device)
    with torch_threads(threads if workers == 1 else None):
        for unit, docs in job.run(units, work_fn, keys=lambda u: [u.key], workers=workers, threads_per_worker=threads):
            d = docs[unit.key]
            log(f"pilot {METHOD_NAMES[unit.method]} seed {unit.seed}: MSE {d['metrics']['recon_mse']:.4f}, "
                f"I->T R@1 {d['metrics']['i2t_R@1']:.3f} ({d['seconds']:.0f} s)")
    finished = job.finished()
    return {**plan, "units": [finished[u.key] for u in units]}


@dataclass(frozen=True)
class _UnitWork:
    """:func:`measure_unit` with the pilot's fixed inputs (a picklable callable for worker processes)."""

    cfg: PilotConfig
    train_rows: PairedEmbeddings
    eval_rows: PairedEmbeddings
    options: EvalOptions
    external: Any
    device: str

    def __call__(self, unit: PilotUnit) -> dict[str, dict]:
        return {unit.key: measure_unit(unit, self.cfg, self.train_rows, self.eval_rows, self.options, self.external, self.device)}


__all__ = ["AUTO_LABEL_FIELDS", "BASELINES", "CONTENDERS", "METHOD_NAMES", "PILOT_FORMAT", "PilotConfig", "PilotUnit",
           "measure_unit", "resolve_label_field", "run_pilot", "torch_threads"]
