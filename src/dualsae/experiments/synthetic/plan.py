"""What the synthetic experiments run (Sec. 6.1, App. E.2; Figs. 5 and 6): the plan and its units.

A :class:`SyntheticPlan` holds the job's axes (distances, multipliers, seeds, training budgets), the
App. E.2 generator's settings as a :class:`SynthConfig` (``data``; each data set sets its own
``alpha = 1 - distance`` and ``seed``) and every training's :class:`TrainConfig` (``train``, built by
``TrainConfig.from_preset('synthetic')``: AdamW, constant lr 5e-4, batch 256 pairs, K = 16; each unit
sets its own method, seed and epochs). Each (figure point, budget, seed) is a :class:`Unit`.

``plan.json`` of jobs written before the plan nested its configs holds one flat dict of settings;
:func:`plan_from_json` reads both layouts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dualsae.core.errors import ConfigError
from dualsae.store.generator import SynthConfig
from dualsae.training.config import TrainConfig

FIG5_METHODS = ("shared", "specific")
FIG6_BASELINES = ("group-sparse", "iso-energy")
#: Paper budget (App. E.2): unit keys of other budgets carry an ``_ep<E>`` suffix.
PAPER_EPOCHS = 10
#: Fields that are axes of the job: a rerun may add values to them (extending a finished job).
AXES = ("distances", "group_sparse_multipliers", "iso_energy_multipliers", "seeds", "epochs")
#: Training settings of the paper (App. E.2) that differ from the 'synthetic' preset's defaults.
PAPER_TRAIN = dict(latents=8192, k=16, split="train")
#: Generator fields that each data set sets itself (from the distance and seed axes).
_PER_DATA_SET = ("alpha", "seed")


def paper_training(**overrides: Any) -> TrainConfig:
    """App. E.2's training config with ``overrides`` (flat TrainConfig names; None keeps the default)."""
    return TrainConfig.from_preset("synthetic", **{**PAPER_TRAIN, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass(frozen=True)
class SyntheticPlan:
    """What to run. Defaults are the paper's (App. E.2, Sec. 6.1).

    epochs: training budgets; Fig. 5 is trained at each, Fig. 6 at ``epochs[0]``.
    data: the generator's settings (App. E.2: d, n_S / n_I / n_T, s, eps_max, pairs); a smaller
        problem keeps the expected number of active concepts per pair, n (1 - s) = 20.48, by raising
        1 - s as n shrinks.
    train: every training's config; its ``group_sparse_lambda`` / ``iso_energy_beta`` are each
        baseline's 1x (the trainer's defaults are the original papers' values), the multipliers
        scale them.
    """

    distances: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    fig6_distance: float = 0.5
    group_sparse_multipliers: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
    iso_energy_multipliers: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: tuple[int, ...] = (PAPER_EPOCHS,)
    data: SynthConfig = field(default_factory=SynthConfig)
    train: TrainConfig = field(default_factory=paper_training)

    @classmethod
    def from_settings(cls, **settings: Any) -> "SyntheticPlan":
        """A plan from flat names: the plan's axes, :class:`SynthConfig`'s fields (``d``, ``n_train``,
        ``sparsity``...) and :class:`TrainConfig`'s (``latents``, ``k``, ``lr``...); None keeps a default."""
        settings = {k: v for k, v in settings.items() if v is not None}
        own = {f.name for f in fields(cls)} - {"data", "train"}
        data_names = {f.name for f in fields(SynthConfig)} - set(_PER_DATA_SET)
        plan_kw = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in own}
        data_kw = {k: v for k, v in settings.items() if k in data_names}
        train_kw = {k: v for k, v in settings.items() if k not in own and k not in data_names}
        return cls(**plan_kw, data=SynthConfig(**data_kw), train=paper_training(**train_kw))

    def validate(self) -> None:
        for dist in (*self.distances, self.fig6_distance):
            if not 0.0 <= dist <= 2.0:
                raise ConfigError(f"cosine distance must be in [0, 2], found {dist}")
        if not self.seeds:
            raise ConfigError("at least one seed is needed")
        if not self.epochs or any(e < 1 for e in self.epochs):
            raise ConfigError(f"epochs must be one or more budgets >= 1, found {self.epochs}")
        for name in ("group_sparse_multipliers", "iso_energy_multipliers"):
            if any(m <= 0 for m in getattr(self, name)):
                raise ConfigError(f"{name} must be > 0, found {getattr(self, name)}")

    def multipliers(self, baseline: str) -> tuple[float, ...]:
        return self.group_sparse_multipliers if baseline == "group-sparse" else self.iso_energy_multipliers

    def data_config(self, distance: float, seed: int) -> SynthConfig:
        """The generator's config of the data set at cosine distance ``distance`` (alpha = 1 - distance)."""
        return SynthConfig(**{**asdict(self.data), "alpha": 1.0 - distance, "seed": seed})

    def to_json(self) -> dict:
        """plan.json: the axes, the data set's config and the training config (``TrainConfig.to_dict``)."""
        return {**asdict(self), "train": self.train.to_dict()}


def _old_layout(data: dict) -> dict:
    """Flat settings of a ``plan.json`` written before the plan nested its configs (and, older still,
    before the epochs axis: ``epochs: int`` and one ``multipliers`` list for both baselines; their units
    are 10-epoch units). Settings added later are absent there and mean their default."""
    data = dict(data)
    if isinstance(data.get("epochs"), int):
        data["epochs"] = [data["epochs"]]
    if "multipliers" in data:
        mult = data.pop("multipliers")
        data.setdefault("group_sparse_multipliers", mult)
        data.setdefault("iso_energy_multipliers", mult)
    return data


def plan_from_json(data: dict) -> SyntheticPlan:
    """A :class:`SyntheticPlan` from a saved ``plan.json`` of either layout (see the module docstring)."""
    if "train" not in data and "data" not in data:
        return SyntheticPlan.from_settings(**_old_layout(data))
    axes = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k not in ("data", "train")}
    return SyntheticPlan(**axes, data=SynthConfig(**data.get("data", {})),
                         train=TrainConfig.from_dict(data.get("train", {}), "plan.json"))


def saved_plan_layout(data: dict) -> dict:
    """A saved ``plan.json`` in the current layout (every field present), to compare with a plan."""
    return plan_from_json(data).to_json()


#: ``--quick``: the demo. App. E.2 at a quarter of the width with its ratios kept (README): d = 64,
#: n = 8 d = 512 concepts (n_S : n_I : n_T = 2 : 1 : 1), shared m = 32 d = 2,048 (specific m/2 each),
#: K = d / 16 = 4, s = 0.99 (so expected active concepts per modality / K = 0.96 as in the paper),
#: 24 training pairs per concept (12,288), batch 256. eps_max = 0.4: 0.3 cannot be met by 384
#: directions in d = 64 (the sampler finds ~245 of 256), and random directions there already reach
#: |cos| ~ 0.5. lr 2e-3 (4x App. E.2's) with the same constant schedule, so that every training
#: reaches its plateau (last 10% of steps change the loss < 1%) in 50 epochs = 2,400 steps. (At 40
#: epochs the specific SAEs sat at 0.90-1.02%: float-rounding changes to the step flipped the check.)
QUICK_SETTINGS: dict[str, Any] = dict(
    distances=(0.1, 0.3, 0.5), group_sparse_multipliers=(0.1, 1.0), iso_energy_multipliers=(1.0, 10.0),
    seeds=(0,), d=64, n_shared=256, n_image=128, n_text=128, sparsity=0.99, eps_max=0.4, k=4,
    latents=2048, epochs=(50,), n_train=12_288, n_eval=2_048, lr=2e-3,
)
QUICK = SyntheticPlan.from_settings(**QUICK_SETTINGS)


@dataclass(frozen=True)
class Unit:
    """One training (and its evaluation) of the job."""

    figure: str  # fig5 | fig6
    method: str
    distance: float
    seed: int
    multiplier: float | None = None
    epochs: int = PAPER_EPOCHS

    @property
    def key(self) -> str:
        mult = "" if self.multiplier is None else f"_x{self.multiplier:g}"
        budget = "" if self.epochs == PAPER_EPOCHS else f"_ep{self.epochs}"
        return f"{self.method}_dist{self.distance:g}_seed{self.seed}{mult}{budget}"


def unit_keys(unit: Unit) -> list[str]:
    """The unit files a unit writes (one: its rows)."""
    return [unit.key]


def plan_units(plan: SyntheticPlan) -> list[Unit]:
    """All units, budget by budget and seed by seed so that each finished seed gives a complete picture."""
    units: list[Unit] = []
    # Order so that a partial run is informative early: Fig. 6's distance first (claims (a) and
    # (c) need it), then distances outwards from it, with the two most extreme distances after
    # Fig. 6's multipliers (which run from the default outwards, baselines alternating).
    order = sorted(set(plan.distances) | {plan.fig6_distance},
                   key=lambda d: (d != plan.fig6_distance, abs(d - plan.fig6_distance), d))
    late = order[-2:] if len(order) > 3 else []
    fig6 = sorted(((base, mult) for base in FIG6_BASELINES for mult in plan.multipliers(base)),
                  key=lambda bm: (abs(math.log(bm[1])), bm[1], FIG6_BASELINES.index(bm[0])))
    for epochs in plan.epochs:
        for seed in plan.seeds:
            for dist in [d for d in order if d not in late]:
                units += [Unit("fig5", method, dist, seed, epochs=epochs) for method in FIG5_METHODS]
            if epochs == plan.epochs[0]:
                units += [Unit("fig6", base, plan.fig6_distance, seed, mult, epochs) for base, mult in fig6]
            for dist in late:
                units += [Unit("fig5", method, dist, seed, epochs=epochs) for method in FIG5_METHODS]
    return units


__all__ = ["SyntheticPlan", "QUICK", "QUICK_SETTINGS", "Unit", "plan_units", "unit_keys", "plan_from_json",
           "saved_plan_layout", "paper_training", "FIG5_METHODS", "FIG6_BASELINES", "PAPER_EPOCHS", "AXES"]
