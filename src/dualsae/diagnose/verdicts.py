"""From the pilot's per-seed numbers to a recommendation per objective, with its spread.

Objectives (:data:`OBJECTIVES`; each a list of held-out metrics, (key, label, higher is better)):

* **reconstruction**: reconstruction MSE (eq. 4, mean of the two modalities) and explained variance;
* **retrieval**: latent cross-modal Recall@1/5/10, image->text and text->image, and zero-shot top-1
  from caption prototypes (a retrieval of class captions) where the store has labels;
* **interpretability**: whether a latent *means* a concept in both modalities, measured as concept
  steering mAP (Sec. 6.2: adding the latent selected for a concept to an image moves it towards that
  concept's captions; needs labels) and, with ``--external``, the monosemanticity score MS of each
  modality's latents. Without labels and an external store the objective is not measured.

The spread rule (:func:`compare`): for one metric, the best method by mean over seeds wins *clearly*
when its lead over every other method exceeds ``spread`` x (std_best + std_other), the standard
deviations over seeds (ddof = 1); methods within that margin of the best are tied with it. An
objective (:func:`objective_verdict`) is won by a method when at least one of its metrics is a clear
win for it and none is a clear win for another method; "no clear winner" when every metric is within
the spread; "metrics disagree" when different metrics clearly favour different methods.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dualsae.diagnose.head_to_head import METHOD_NAMES

OBJECTIVES: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "reconstruction": (("recon_mse", "reconstruction MSE", False), ("recon_ev", "explained variance", True)),
    "retrieval": tuple((f"{s}_R@{k}", f"{a} R@{k}", True) for s, a in (("i2t", "I->T"), ("t2i", "T->I")) for k in (1, 5, 10))
    + (("zs_top1", "zero-shot top-1", True),),
    "interpretability": (("steer_map", "steering mAP", True), ("mono_image", "MS (image)", True), ("mono_text", "MS (text)", True)),
}
#: Shown with the objectives but deciding none (a second reading of zero-shot on imbalanced classes; MRR).
CONTEXT_METRICS = (("zs_mean_per_class", "zero-shot mean per class", True), ("steer_mrr", "steering MRR", True))


def summarise(units: list[dict]) -> dict[str, dict[str, dict]]:
    """``{method: {metric: {"mean", "std", "n", "values"}}}`` over the seeds (std: ddof = 1, 0 for one seed)."""
    by: dict[str, dict[str, list[float]]] = {}
    for u in units:
        for key, v in u["metrics"].items():
            if v is not None:
                by.setdefault(u["method"], {}).setdefault(key, []).append(float(v))
    return {m: {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v), "values": v}
                for k, v in metrics.items()} for m, metrics in by.items()}


def descriptors(units: list[dict]) -> dict[str, dict]:
    """Mean and std over seeds of the shared SAE's collapse rate and the specific pair's heterogeneity."""
    out = {}
    for key, method in (("collapse_rate", "shared"), ("heterogeneity", "specific"), ("heterogeneity_top10", "specific")):
        v = [float(u[key]) for u in units if u["method"] == method and u.get(key) is not None]
        if v:
            out[key] = {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}
    return out


def compare(summary: dict[str, dict[str, dict]], key: str, higher: bool, spread: float = 1.0) -> dict | None:
    """One metric across methods (module docstring); None when fewer than two methods measured it.

    Returns ``{"metric", "best", "clear", "tied" (methods within the margin of the best), "lead" (the
    best's lead over the runner-up), "margin" (spread x the two stds), "runner_up", "means", "stds"}``."""
    have = {m: s[key] for m, s in summary.items() if key in s}
    if len(have) < 2:
        return None
    sign = 1.0 if higher else -1.0
    order = sorted(have, key=lambda m: -sign * have[m]["mean"])
    best = order[0]
    margin = {m: spread * (have[best]["std"] + have[m]["std"]) for m in order[1:]}
    lead = {m: sign * (have[best]["mean"] - have[m]["mean"]) for m in order[1:]}
    tied = [m for m in order[1:] if not lead[m] > margin[m]]
    runner = order[1]
    return {"metric": key, "best": best, "clear": not tied, "tied": tied, "runner_up": runner,
            "lead": lead[runner], "margin": margin[runner],
            "means": {m: have[m]["mean"] for m in order}, "stds": {m: have[m]["std"] for m in order}}


def _fmt(v: float, key: str) -> str:
    return f"{v:.4f}" if key.startswith(("recon", "steer")) else f"{v:.3f}"


def describe(c: dict, label: str) -> str:
    """``steering mAP: shared SAE 0.167 ± 0.006 vs specific + post hoc 0.178 ± 0.017 (lead 0.011 < spread 0.023)``."""
    key = c["metric"]
    parts = [f"{METHOD_NAMES.get(m, m)} {_fmt(c['means'][m], key)} ± {_fmt(c['stds'][m], key)}" for m in c["means"]]
    rel = ">" if c["clear"] else "<="
    return f"{label}: {' vs '.join(parts)} (lead {_fmt(c['lead'], key)} {rel} spread {_fmt(c['margin'], key)})"


def objective_verdict(summary: dict[str, dict[str, dict]], objective: str, spread: float = 1.0) -> dict:
    """The verdict of one objective (module docstring): ``{"objective", "winner" (method or None),
    "verdict" (one line), "metrics": [per-metric comparison with its "text"], "measured" (bool)}``."""
    comps = []
    for key, label, higher in OBJECTIVES[objective]:
        c = compare(summary, key, higher, spread)
        if c is not None:
            comps.append({**c, "label": label, "text": describe(c, label)})
    if not comps:
        why = "needs labels (--label-field) for steering or --external for MS" if objective == "interpretability" else "no metric measured"
        return {"objective": objective, "winner": None, "measured": False, "metrics": [], "verdict": f"not measured ({why})"}
    wins: dict[str, list[str]] = {}
    for c in comps:
        if c["clear"]:
            wins.setdefault(c["best"], []).append(c["label"])
    if len(wins) == 1:
        (winner, labels), = wins.items()
        rest = [c["label"] for c in comps if not c["clear"]]
        verdict = (f"{METHOD_NAMES.get(winner, winner)}: ahead beyond the spread on {', '.join(labels)}"
                   + (f"; within the spread on {', '.join(rest)}" if rest else ""))
    elif not wins:
        winner = None
        verdict = "no clear winner: every difference is within the spread over seeds"
    else:
        winner = None
        verdict = "no clear winner: the metrics disagree (" + "; ".join(
            f"{METHOD_NAMES.get(m, m)} ahead on {', '.join(labels)}" for m, labels in wins.items()) + ")"
    return {"objective": objective, "winner": winner, "measured": True, "metrics": comps, "verdict": verdict}


def _what(desc: dict) -> str:
    """What the two models are, in the store's own numbers."""
    parts = []
    if "collapse_rate" in desc:
        parts.append(f"collapse {desc['collapse_rate']['mean']:.0%} (the shared SAE puts most images and their captions on one latent index)")
    if "heterogeneity" in desc:
        parts.append(f"heterogeneity {desc['heterogeneity']['mean']:.2f} (median cosine distance of the specific pair's matched "
                     "decoder directions: the directions it keeps differ between the modalities)")
    return "; ".join(parts)


def _why(desc: dict, winners: dict[str, str]) -> str:
    """Why the objectives split, in the store's own numbers: what each winner's structure buys."""
    by: dict[str, list[str]] = {}
    for objective, method in winners.items():
        by.setdefault(method, []).append(objective)
    parts = []
    for method, objectives in by.items():
        helps = " and ".join(objectives)
        if method == "specific" and "heterogeneity" in desc:
            parts.append(f"the specific pair keeps directions that differ between the modalities (heterogeneity "
                         f"{desc['heterogeneity']['mean']:.2f}), which helps {helps}")
        elif method == "shared" and "collapse_rate" in desc:
            parts.append(f"collapse {desc['collapse_rate']['mean']:.0%}: a shared SAE puts an image and its caption on one "
                         f"latent index, which helps {helps}")
        else:
            parts.append(f"{METHOD_NAMES.get(method, method)} wins {helps}")
    return "; ".join(parts)


def recommend(units: list[dict], objectives: tuple[str, ...] = tuple(OBJECTIVES), spread: float = 1.0) -> dict:
    """Per-objective verdicts of the pilot's units, whether the decided objectives disagree, and why.

    ``overall``: one line naming the method per objective (or that none is clearly ahead)."""
    summary = summarise(units)
    desc = descriptors(units)
    verdicts = {o: objective_verdict(summary, o, spread) for o in objectives}
    winners = {o: v["winner"] for o, v in verdicts.items() if v["winner"] is not None}
    disagree = len(set(winners.values())) > 1
    context = []
    for key, label, higher in CONTEXT_METRICS:
        c = compare(summary, key, higher, spread)
        if c is not None:
            context.append(describe(c, label))
    out: dict[str, Any] = {"summary": summary, "descriptors": desc, "objectives": verdicts, "context": context,
                           "spread": spread, "disagree": disagree, "what": _what(desc)}
    if disagree:
        out["disagreement"] = ("the objectives disagree (" + ", ".join(f"{o}: {METHOD_NAMES.get(w, w)}" for o, w in winners.items())
                               + "): " + _why(desc, winners))
    chosen = sorted(dict.fromkeys(winners.values()), key=lambda m: -sum(w == m for w in winners.values()))
    undecided = [o for o, v in verdicts.items() if v["winner"] is None and v["measured"]]
    if not winners:
        out["overall"] = "no method is clearly ahead on any objective asked for, at this pilot budget and spread"
    else:
        out["overall"] = "; ".join(f"{METHOD_NAMES.get(m, m)} for {' and '.join(o for o, w in winners.items() if w == m)}" for m in chosen)
        if undecided:
            out["overall"] += f"; {' and '.join(undecided)}: no clear winner"
    return out


#: Table 1 row -> pilot method (the raw specific row is not a cross-modal model; its aligned copy is).
TABLE1_METHODS = {"shared": "shared", "specific+posthoc": "specific", "group-sparse": "group-sparse", "iso-energy": "iso-energy"}


def units_from_table1(docs: list[dict]) -> list[dict]:
    """Table 1 unit files (``reproduce table1``'s ``units/*.json``: flat metric columns, ``diagnostics``)
    as pilot units, so the full trainings are judged by the same rule as the pilot."""
    keys = {key for metrics in OBJECTIVES.values() for key, _, _ in metrics} | {key for key, _, _ in CONTEXT_METRICS}
    units = []
    for doc in docs:
        method = TABLE1_METHODS.get(doc.get("method"))
        if method is None:
            continue
        diag = doc.get("diagnostics") or {}
        units.append({"method": method, "seed": doc.get("seed"), "metrics": {k: doc.get(k) for k in keys},
                      "collapse_rate": diag.get("collapse_rate"),
                      "heterogeneity": ((diag.get("heterogeneity") or {}).get("matched") or {}).get("median")})
    return units


__all__ = ["CONTEXT_METRICS", "TABLE1_METHODS", "units_from_table1", "OBJECTIVES", "compare", "describe", "descriptors", "objective_verdict", "recommend", "summarise"]
