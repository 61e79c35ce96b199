"""The paper's synthetic experiments (Sec. 6.1, App. E.2-E.3; Figs. 5 and 6) as one resumable job.

* Fig. 5: cosine distance 1 - alpha over a grid; shared SAE (m latents) against modality-specific
  SAEs (m/2 each): reconstruction error, feature-recovery error, collapse rate.
* Fig. 6: at one distance (0.5), the auxiliary-loss multiplier over a grid times each baseline's
  default (group-sparse lambda-tilde = 1; Iso-Energy beta = 4e-4), beside shared, specific and
  specific + post-hoc alignment: feature-recovery error against feature-alignment error.

Every training uses the App. E.2 protocol (``TrainConfig.from_preset('synthetic')``: AdamW, constant
lr 5e-4, batch 256 pairs, 10 epochs = 1,950 steps on 50,000 pairs; K=16). Each (figure point, seed)
is a *unit* whose result is written to ``units/<key>.json`` as soon as it finishes, so an
interrupted job resumes where it stopped. A data set (distance, seed) is generated once under
``data/`` and removed when no pending unit needs it (``keep_data`` keeps it). ``workers`` runs units in
parallel processes; a unit's result does not depend on which worker ran it or when.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import multiprocessing
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dualsae.atomic import write_json, write_text
from dualsae.errors import ConfigError, DataError
from dualsae.jsonfiles import read_json_object
from dualsae.outdir import finished_json_files

FIG5_METHODS = ("shared", "specific")
FIG6_BASELINES = ("group-sparse", "iso-energy")
METRICS = ("reconstruction_error", "feature_recovery_error", "alignment_error", "feature_alignment_error",
           "collapse_rate", "same_index_rate")


@dataclass(frozen=True)
class SyntheticPlan:
    """What to run. Defaults are the paper's (App. E.2, Sec. 6.1)."""

    distances: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    fig6_distance: float = 0.5
    multipliers: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    latents: int = 8192
    k: int = 16
    epochs: int = 10
    batch_size: int = 256
    n_train: int = 50_000
    n_eval: int = 10_000
    d: int = 256
    n_shared: int = 1024
    n_image: int = 512
    n_text: int = 512
    group_sparse_lambda: float = 1.0
    iso_energy_beta: float = 4e-4

    def validate(self) -> None:
        for dist in (*self.distances, self.fig6_distance):
            if not 0.0 <= dist <= 2.0:
                raise ConfigError(f"cosine distance must be in [0, 2], found {dist}")
        if not self.seeds:
            raise ConfigError("at least one seed is needed")
        if any(m <= 0 for m in self.multipliers):
            raise ConfigError(f"multipliers must be > 0, found {self.multipliers}")


#: ``--quick``: the demo. Fewer rows, fewer points, one seed; same model sizes and protocol.
QUICK = SyntheticPlan(
    distances=(0.1, 0.5, 1.0), multipliers=(0.1, 10.0), seeds=(0,), n_train=6_144, n_eval=2_048,
)


@dataclass(frozen=True)
class Unit:
    """One training (and its evaluation) of the job."""

    figure: str  # fig5 | fig6
    method: str
    distance: float
    seed: int
    multiplier: float | None = None

    @property
    def key(self) -> str:
        mult = "" if self.multiplier is None else f"_x{self.multiplier:g}"
        return f"{self.method}_dist{self.distance:g}_seed{self.seed}{mult}"


def plan_units(plan: SyntheticPlan) -> list[Unit]:
    """All units, ordered seed by seed so that each finished seed gives a complete picture."""
    units: list[Unit] = []
    # Order so that a partial run is informative early: Fig. 6's distance first (claims (a) and
    # (c) need it), then distances outwards from it, with the two most extreme distances after
    # Fig. 6's multipliers (which run from the default outwards, baselines alternating).
    order = sorted(set(plan.distances) | {plan.fig6_distance}, key=lambda d: (d != plan.fig6_distance, abs(d - plan.fig6_distance), d))
    late = order[-2:] if len(order) > 3 else []
    fig6 = [(base, mult) for mult in sorted(plan.multipliers, key=lambda x: (abs(math.log(x)), x)) for base in FIG6_BASELINES]
    for seed in plan.seeds:
        for dist in [d for d in order if d not in late]:
            units += [Unit("fig5", method, dist, seed) for method in FIG5_METHODS]
        units += [Unit("fig6", base, plan.fig6_distance, seed, mult) for base, mult in fig6]
        for dist in late:
            units += [Unit("fig5", method, dist, seed) for method in FIG5_METHODS]
    return units


def _data_dir(out: Path, distance: float, seed: int) -> Path:
    return out / "data" / f"dist{distance:g}_seed{seed}"


def _ensure_data(plan: SyntheticPlan, out: Path, distance: float, seed: int) -> Path:
    from dualsae.synthetic import SynthConfig, write_synthetic

    folder = _data_dir(out, distance, seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Parallel workers may want the same data set at once: one generates it, the others wait.
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "synth.json").is_file():
            return folder
        cfg = SynthConfig(alpha=1.0 - distance, d=plan.d, n_shared=plan.n_shared, n_image=plan.n_image,
                          n_text=plan.n_text, n_train=plan.n_train, n_eval=plan.n_eval, seed=seed)
        write_synthetic(cfg, folder, progress=False)
    return folder


def _train_config(plan: SyntheticPlan, unit: Unit):
    from dualsae.train import TrainConfig

    over: dict[str, Any] = dict(method=unit.method, latents=plan.latents, k=plan.k, epochs=plan.epochs,
                                batch_size=plan.batch_size, seed=unit.seed, split="train")
    if unit.method == "group-sparse":
        over["group_sparse_lambda"] = plan.group_sparse_lambda * (unit.multiplier or 1.0)
    if unit.method == "iso-energy":
        over["iso_energy_beta"] = plan.iso_energy_beta * (unit.multiplier or 1.0)
    return TrainConfig.from_preset("synthetic", **over)


def run_unit(plan: SyntheticPlan, unit: Unit, data_dir: Path, progress: bool = False) -> list[dict]:
    """Train, evaluate (App. E.3) and, for specific SAEs, align post hoc and evaluate again."""
    from dualsae.align import align
    from dualsae.data import PairedEmbeddings
    from dualsae.metrics.synthetic import synthetic_metrics
    from dualsae.synthetic import load_ground_truth
    from dualsae.train import train

    store = PairedEmbeddings.open(data_dir)
    truth = load_ground_truth(data_dir)
    train_rows = store.split("train")
    cfg = _train_config(plan, unit)
    t0 = time.time()
    pair = train(train_rows, cfg, None, progress=progress)
    base = {"figure": unit.figure, "distance": unit.distance, "seed": unit.seed, "multiplier": unit.multiplier,
            "train_seconds": round(time.time() - t0, 1)}
    rows = [{**base, "method": unit.method, **synthetic_metrics(pair, store, truth)}]
    if unit.method == "specific":
        t1 = time.time()
        result = align(pair, train_rows, progress=False)
        aligned = result.pair
        rows.append({**base, "method": "specific+posthoc", "align_seconds": round(time.time() - t1, 1),
                     "matched": result.report.get("matched_count"),
                     "mean_matched_correlation": result.report.get("mean_matched_correlation"),
                     **synthetic_metrics(aligned, store, truth)})
    if unit.method == "shared":
        # App. F.2's diagnostic on the same model: Hungarian self-matches among live latents.
        result = align(pair, train_rows, progress=False)
        rows[0]["hungarian_collapse_rate"] = result.report.get("collapse_rate")
    return rows


def _run_unit_in_worker(job: tuple[SyntheticPlan, Unit, str, int]) -> tuple[Unit, list[dict]]:
    """Entry point of a worker process of :func:`run_plan` (module level so that spawn can pickle it)."""
    import torch

    plan, unit, out, threads = job
    torch.set_num_threads(threads)
    return unit, run_unit(plan, unit, _ensure_data(plan, Path(out), unit.distance, unit.seed))


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _finished_units(plan: SyntheticPlan, pending: list[Unit], out: Path, workers: int,
                    threads_per_worker: int | None) -> Iterator[tuple[Unit, list[dict]]]:
    """Yield (unit, rows) as units finish: in order in this process, or in any order from workers."""
    if workers == 1:
        for unit in pending:
            yield unit, run_unit(plan, unit, _ensure_data(plan, out, unit.distance, unit.seed))
        return
    threads = threads_per_worker or max(1, _usable_cores() // workers)
    # spawn, not fork: a forked copy of a process whose OpenMP pool has started can deadlock.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        jobs = [(plan, unit, str(out), threads) for unit in pending]
        yield from pool.imap_unordered(_run_unit_in_worker, jobs, chunksize=1)


def run_plan(plan: SyntheticPlan, out: str | Path, keep_data: bool = False, progress: bool = True,
             max_units: int | None = None, workers: int = 1, threads_per_worker: int | None = None) -> dict:
    """Run (or resume) every unit of ``plan`` into ``out`` and write the report. Returns it.

    ``workers`` > 1 trains that many units at once in separate processes, each with
    ``threads_per_worker`` torch threads (default: the usable cores split evenly). On a small CPU this
    pays because one SAE of this size does not keep several cores busy: on 2 cores, two 1-thread
    workers finish 1.3x more units per hour than one 2-thread process (benchmarks/parallel_units.py).
    Results do not depend on the schedule; each unit is seeded by itself (float sums may differ in the
    last bits with the thread count).
    """
    from dualsae.progress import tqdm

    plan.validate()
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, found {workers}")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise ConfigError(f"threads per worker must be >= 1, found {threads_per_worker}")
    out = Path(out)
    (out / "units").mkdir(parents=True, exist_ok=True)
    plan_path = out / "plan.json"
    if plan_path.is_file():
        saved = read_json_object(plan_path, "delete it to start the job afresh", ConfigError)
        if saved != json.loads(json.dumps(asdict(plan))):
            diff = sorted(k for k in saved if saved.get(k) != json.loads(json.dumps(asdict(plan))).get(k))
            raise ConfigError(f"{plan_path}: this folder holds a job with different settings ({', '.join(diff)}); use another --out")
    else:
        write_json(plan_path, asdict(plan))
    units = plan_units(plan)
    pending = [u for u in units if not (out / "units" / f"{u.key}.json").is_file()]
    if max_units is not None:
        pending = pending[:max_units]
    # A data set is removed once every pending unit that reads it has finished.
    readers = Counter((u.distance, u.seed) for u in pending)
    t0 = time.time()
    bar = tqdm(total=len(units), initial=len(units) - len(pending), desc="synthetic units", unit="run", disable=not progress)
    for unit, rows in _finished_units(plan, pending, out, min(workers, max(1, len(pending))), threads_per_worker):
        write_json(out / "units" / f"{unit.key}.json", rows)
        bar.set_postfix_str(unit.key)
        bar.update(1)
        readers[(unit.distance, unit.seed)] -= 1
        if not keep_data and readers[(unit.distance, unit.seed)] == 0:
            data_dir = _data_dir(out, unit.distance, unit.seed)
            shutil.rmtree(data_dir, ignore_errors=True)
            data_dir.parent.joinpath(f"{data_dir.name}.lock").unlink(missing_ok=True)
    bar.close()
    report = build_report(plan, out)
    report["wall_seconds_this_call"] = round(time.time() - t0, 1)
    write_report(report, out)
    return report


# ---------------------------------------------------------------------- aggregation


def load_rows(out: Path, plan: SyntheticPlan | None = None) -> list[dict]:
    """Rows of the finished unit files (of ``plan``'s units when given); temporaries never count."""
    units = finished_json_files(out / "units", DataError)
    keys = sorted(units) if plan is None else [u.key for u in plan_units(plan) if u.key in units]
    rows: list[dict] = []
    for key in keys:
        rows.extend(units[key])
    return rows


def _agg(rows: list[dict], **match: Any) -> dict[str, tuple[float, float, int]]:
    sel = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    out = {}
    for key in (*METRICS, "hungarian_collapse_rate", "train_seconds"):
        vals = [r[key] for r in sel if r.get(key) is not None]
        if vals:
            out[key] = (float(np.mean(vals)), float(np.std(vals)), len(vals))
    return out


def aggregate(plan: SyntheticPlan, rows: list[dict]) -> dict:
    fig5 = []
    for dist in sorted({r["distance"] for r in rows if r["figure"] == "fig5"}):
        for method in (*FIG5_METHODS, "specific+posthoc"):
            a = _agg(rows, figure="fig5", distance=dist, method=method)
            if a:
                fig5.append({"distance": dist, "method": method, **{k: v[0] for k, v in a.items()},
                             **{f"{k}_std": v[1] for k, v in a.items()}, "seeds": max(v[2] for v in a.values())})
    fig6 = []
    d6 = plan.fig6_distance
    for method in (*FIG5_METHODS, "specific+posthoc"):
        a = _agg(rows, figure="fig5", distance=d6, method=method)
        if a:
            fig6.append({"method": method, "multiplier": None, **{k: v[0] for k, v in a.items()},
                         **{f"{k}_std": v[1] for k, v in a.items()}, "seeds": max(v[2] for v in a.values())})
    for base in FIG6_BASELINES:
        for mult in plan.multipliers:
            a = _agg(rows, figure="fig6", method=base, multiplier=mult)
            if a:
                fig6.append({"method": base, "multiplier": mult, **{k: v[0] for k, v in a.items()},
                             **{f"{k}_std": v[1] for k, v in a.items()}, "seeds": max(v[2] for v in a.values())})
    return {"fig5": fig5, "fig6": fig6}


def _crossing(xs: list[float], diff: list[float]) -> float | None:
    """First x where diff changes sign from > 0 to <= 0 (linear interpolation)."""
    for (x0, d0), (x1, d1) in zip(zip(xs, diff), zip(xs[1:], diff[1:])):
        if d0 > 0 >= d1:
            return x0 + (x1 - x0) * d0 / (d0 - d1)
        if d0 <= 0 and x0 == xs[0]:
            return x0
    return None


def check_claims(plan: SyntheticPlan, agg: dict) -> list[dict]:
    """Each qualitative claim of Sec. 6.1 as holds / does not hold, with the numbers behind it."""
    claims = []
    f5 = {(r["distance"], r["method"]): r for r in agg["fig5"]}
    dists = sorted({d for d, _ in f5 if (d, "shared") in f5 and (d, "specific") in f5})
    # (a) at heterogeneity >= 0.3, specific beats shared on reconstruction and feature recovery.
    far = [d for d in dists if d >= 0.3 - 1e-9]
    if far:
        detail = {d: {m: {"rec": round(f5[(d, m)]["reconstruction_error"], 5), "fre": round(f5[(d, m)]["feature_recovery_error"], 5)}
                      for m in FIG5_METHODS} for d in far}
        holds = all(f5[(d, "specific")]["reconstruction_error"] < f5[(d, "shared")]["reconstruction_error"]
                    and f5[(d, "specific")]["feature_recovery_error"] < f5[(d, "shared")]["feature_recovery_error"] for d in far)
        cross_rec = _crossing(dists, [f5[(d, "specific")]["reconstruction_error"] - f5[(d, "shared")]["reconstruction_error"] for d in dists])
        cross_fre = _crossing(dists, [f5[(d, "specific")]["feature_recovery_error"] - f5[(d, "shared")]["feature_recovery_error"] for d in dists])
        claims.append({
            "claim": "a", "holds": bool(holds),
            "text": "at distance >= 0.3, modality-specific SAEs have lower reconstruction and feature-recovery error than the shared SAE",
            "crossing_distance_reconstruction": cross_rec, "crossing_distance_feature_recovery": cross_fre, "numbers": detail,
        })
    # (b) shared collapse is high at small non-zero distance and falls as the distance grows.
    nz = [d for d in dists if d > 0]
    if len(nz) >= 2:
        coll = [f5[(d, "shared")]["collapse_rate"] for d in nz]
        rho = _spearman(nz, coll)
        holds = coll[0] > coll[-1] and rho <= -0.7 and max(coll[: max(1, len(coll) // 2)]) >= 0.2
        claims.append({
            "claim": "b", "holds": bool(holds),
            "text": "the shared SAE's collapse rate is high at small non-zero distances and falls as the distance grows "
                    "(checked: first > last, Spearman(distance, collapse) <= -0.7, and >= 0.2 somewhere in the smaller half)",
            "collapse_by_distance": {d: round(c, 4) for d, c in zip(nz, coll)}, "spearman": rho,
        })
    # (c) post hoc keeps specific's feature recovery and is not dominated by any multiplier.
    f6 = agg["fig6"]
    ours = next((r for r in f6 if r["method"] == "specific+posthoc"), None)
    spec = next((r for r in f6 if r["method"] == "specific"), None)
    bases = [r for r in f6 if r["method"] in FIG6_BASELINES]
    if ours and spec and bases:
        keeps = abs(ours["feature_recovery_error"] - spec["feature_recovery_error"]) <= 1e-6 + 1e-3 * spec["feature_recovery_error"]
        dominators = [
            {"method": r["method"], "multiplier": r["multiplier"], "fre": r["feature_recovery_error"], "fae": r["feature_alignment_error"]}
            for r in bases
            if r["feature_recovery_error"] <= ours["feature_recovery_error"] and r["feature_alignment_error"] <= ours["feature_alignment_error"]
        ]
        claims.append({
            "claim": "c", "holds": bool(keeps and not dominators),
            "text": "specific + post-hoc alignment keeps the feature-recovery error of the specific SAEs, and no multiplier of "
                    "either baseline is at least as good on both feature-recovery and feature-alignment error",
            "posthoc": {"fre": ours["feature_recovery_error"], "fae": ours["feature_alignment_error"]},
            "specific": {"fre": spec["feature_recovery_error"], "fae": spec["feature_alignment_error"]},
            "keeps_feature_recovery": bool(keeps), "dominated_by": dominators,
        })
    return claims


def _spearman(x: list[float], y: list[float]) -> float:
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def build_report(plan: SyntheticPlan, out: Path) -> dict:
    rows = load_rows(out, plan)
    agg = aggregate(plan, rows)
    total = len(plan_units(plan))
    finished = finished_json_files(out / "units", DataError)
    done = sum(u.key in finished for u in plan_units(plan))
    return {"plan": asdict(plan), "units_done": done, "units_total": total, "rows": rows, **agg,
            "claims": check_claims(plan, agg)}


# ---------------------------------------------------------------------- output


def _fmt(v: Any, std: Any = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if std:
        return f"{v:.4f} ± {std:.4f}"
    return f"{v:.4f}"


def markdown_table(report: dict) -> str:
    lines = ["### Fig. 5: shared vs modality-specific SAEs across cosine distance", "",
             "| distance | method | reconstruction | feature recovery | collapse rate | same-index rate | alignment | feature alignment | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["fig5"]:
        lines.append(f"| {r['distance']:g} | {r['method']} | {_fmt(r.get('reconstruction_error'), r.get('reconstruction_error_std'))} | "
                     f"{_fmt(r.get('feature_recovery_error'), r.get('feature_recovery_error_std'))} | {_fmt(r.get('collapse_rate'))} | "
                     f"{_fmt(r.get('same_index_rate'))} | {_fmt(r.get('alignment_error'))} | {_fmt(r.get('feature_alignment_error'))} | {r['seeds']} |")
    lines += ["", f"### Fig. 6: feature recovery vs feature alignment at distance {report['plan']['fig6_distance']:g}", "",
              "| method | multiplier | feature recovery | feature alignment | reconstruction | alignment | seeds |", "|---|---|---|---|---|---|---|"]
    for r in report["fig6"]:
        mult = "-" if r["multiplier"] is None else f"{r['multiplier']:g}×"
        lines.append(f"| {r['method']} | {mult} | {_fmt(r.get('feature_recovery_error'), r.get('feature_recovery_error_std'))} | "
                     f"{_fmt(r.get('feature_alignment_error'), r.get('feature_alignment_error_std'))} | {_fmt(r.get('reconstruction_error'))} | "
                     f"{_fmt(r.get('alignment_error'))} | {r['seeds']} |")
    lines += ["", "### Claims of Sec. 6.1", ""]
    lines += [claim_line(c) for c in report["claims"]]
    return "\n".join(lines) + "\n"


def claim_line(c: dict) -> str:
    verdict = "HOLDS" if c["holds"] else "DOES NOT HOLD"
    extra = ""
    if c["claim"] == "a":
        extra = (f" Crossing distance (specific better beyond): reconstruction {_fmt(c['crossing_distance_reconstruction'])}, "
                 f"feature recovery {_fmt(c['crossing_distance_feature_recovery'])}. Numbers: {json.dumps(c['numbers'])}")
    elif c["claim"] == "b":
        extra = f" Collapse by distance: {json.dumps(c['collapse_by_distance'])}; Spearman {c['spearman']:.2f}."
    elif c["claim"] == "c":
        extra = (f" Post hoc FRE {c['posthoc']['fre']:.5f} / FAE {c['posthoc']['fae']:.4f}; specific FRE {c['specific']['fre']:.5f}; "
                 f"dominated by: {c['dominated_by'] or 'none'}.")
    return f"- ({c['claim']}) {verdict}: {c['text']}.{extra}"


def write_csv(rows: list[dict], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    write_text(path, buf.getvalue())


def write_report(report: dict, out: Path) -> None:
    write_json(out / "results.json", report)
    write_csv(report["rows"], out / "results.csv")
    write_text(out / "results.md", markdown_table(report))
    plot_figures(report, out)


def plot_figures(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"shared": "tab:green", "specific": "tab:orange", "specific+posthoc": "tab:red",
              "group-sparse": "tab:blue", "iso-energy": "teal"}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(axes, ("collapse_rate", "reconstruction_error", "feature_recovery_error"),
                              ("(a) feature collapse rate", "(b) reconstruction error", "(c) feature recovery error")):
        for method in FIG5_METHODS:
            rs = [r for r in report["fig5"] if r["method"] == method and key in r]
            if not rs:
                continue
            x = [r["distance"] for r in rs]
            y = [r[key] for r in rs]
            e = [r.get(f"{key}_std", 0.0) for r in rs]
            ax.errorbar(x, y, yerr=e, marker="o", label="shared SAE" if method == "shared" else "modality-specific SAEs",
                        color=colors[method], capsize=3)
        ax.set_xlabel("cosine distance 1 - cos(phi_i, psi_i)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "fig5.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for base in FIG6_BASELINES:
        rs = sorted([r for r in report["fig6"] if r["method"] == base], key=lambda r: r["multiplier"])
        if rs:
            ax.plot([r["feature_alignment_error"] for r in rs], [r["feature_recovery_error"] for r in rs], marker="o",
                    color=colors[base], label=f"{base} (x multiplier)")
            for r in rs:
                ax.annotate(f"{r['multiplier']:g}x", (r["feature_alignment_error"], r["feature_recovery_error"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    for method, marker in (("shared", "s"), ("specific", "^"), ("specific+posthoc", "*")):
        r = next((r for r in report["fig6"] if r["method"] == method), None)
        if r:
            ax.scatter([r["feature_alignment_error"]], [r["feature_recovery_error"]], marker=marker, s=120 if marker == "*" else 60,
                       color=colors[method], label=method, zorder=3)
    ax.set_xlabel("feature alignment error")
    ax.set_ylabel("feature recovery error")
    ax.set_title(f"Fig. 6 at distance {report['plan']['fig6_distance']:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fig6.png", dpi=120)
    plt.close(fig)


__all__ = ["SyntheticPlan", "QUICK", "Unit", "plan_units", "run_unit", "run_plan", "build_report", "check_claims",
           "markdown_table"]
