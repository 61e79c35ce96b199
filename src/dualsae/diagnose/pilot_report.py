"""What ``dualsae diagnose`` prints and writes: the pilot's table (mean ± std over seeds, every metric
measured on the store's held-out rows), the recommendation per objective with its numbers, and the
synthetic Fig. 5 placement below it, labelled as synthetic context (:mod:`.regime_report`)."""

from __future__ import annotations

from dualsae.diagnose.head_to_head import METHOD_NAMES
from dualsae.diagnose.regime_report import format_report as format_placement
from dualsae.diagnose.verdicts import CONTEXT_METRICS, OBJECTIVES, compare

SYNTHETIC_HEADING = "synthetic reference, not your data (the Fig. 5 regime curve, measured on App. E.2 stores of known distance)"
SYNTHETIC_NOTE = ("context only: the quick SAEs below are trained on this store only to place it on the curve; the regime "
                  "curve and the Fig. 5 errors come from synthetic stores; the recommendation above is measured on this store "
                  "and counts where the synthetic curve suggests otherwise")


def _cell(stats: dict | None, key: str) -> str:
    if stats is None:
        return "-"
    spec = ".4f" if key.startswith(("recon", "steer")) else ".3f"
    return f"{format(stats['mean'], spec)} ± {format(stats['std'], spec)}"


def _rows(rep: dict, methods: list[str]) -> list[tuple[str, list[str]]]:
    """(label, cells per method) of every metric measured, a '*' on a clear winner's cell."""
    rec = rep["recommendation"]
    summary, spread = rec["summary"], rec["spread"]
    rows = []
    for key, label, higher in [m for metrics in OBJECTIVES.values() for m in metrics] + list(CONTEXT_METRICS):
        if not any(key in summary.get(m, {}) for m in methods):
            continue
        c = compare(summary, key, higher, spread)
        rows.append((label, [_cell(summary.get(m, {}).get(key), key) + (" *" if c and c["clear"] and c["best"] == m else "")
                             for m in methods]))
    desc = rec["descriptors"]
    for key, label, method in (("collapse_rate", "collapse rate (App. F.2)", "shared"),
                               ("heterogeneity", "heterogeneity (Fig. 2, all matches)", "specific"),
                               ("heterogeneity_top10", "heterogeneity (top 10% by c)", "specific")):
        if key in desc:
            rows.append((label, [_cell(desc[key], key) if m == method else "-" for m in methods]))
    return rows


def _methods(rep: dict) -> list[str]:
    return list(dict.fromkeys(u["method"] for u in rep["pilot"]["units"]))


def _header(rep: dict) -> list[str]:
    p, cfg = rep["pilot"], rep["pilot"]["config"]
    label = p["label_field"] or "none (no zero-shot, no steering)"
    return [
        f"dualsae diagnose: {rep['store']}  ({rep['pairs']:,} pairs, d = {rep['d']})",
        f"pilot head-to-head on this store: {cfg['seeds']} seeds; shared m = {cfg['pilot_latents']}, specific m = "
        f"{cfg['pilot_latents'] // 2} each, k = {cfg['pilot_k']}, {cfg['pilot_epochs']} epochs of batch {cfg['pilot_batch_size']} "
        f"on {p['rows']['train']:,} training rows; measured on {p['rows']['eval']:,} held-out rows; labels: {label}",
    ]


def format_pilot(rep: dict) -> list[str]:
    """The pilot table and the verdicts, as terminal lines."""
    methods = _methods(rep)
    rows = _rows(rep, methods)
    w = max(len(label) for label, _ in rows) + 2
    cw = max(22, *(len(METHOD_NAMES.get(m, m)) + 3 for m in methods), *(len(c) + 2 for _, cells in rows for c in cells))
    lines = ["", f"  {'held-out rows, mean ± std over seeds':<{w}}" + "".join(f"{METHOD_NAMES.get(m, m):>{cw}}" for m in methods)]
    lines += [f"  {label:<{w}}" + "".join(f"{c:>{cw}}" for c in cells) for label, cells in rows]
    rec = rep["recommendation"]
    lines += [f"  * ahead beyond the spread: its lead over every other method exceeds {rec['spread']:g} x (std + std)", "",
              "recommendation per objective (measured on this store)"]
    for name, v in rec["objectives"].items():
        lines.append(f"  {name}: {v['verdict']}")
        lines += [f"      {c['text']}" for c in v["metrics"]]
    lines += [f"  context: {t}" for t in rec["context"]]
    if rec.get("what"):
        lines.append(f"  what the models are: {rec['what']}")
    if rec.get("disagreement"):
        lines.append(f"  {rec['disagreement']}")
    lines.append(f"recommendation: {rec['overall']}")
    return lines


def format_report(rep: dict) -> str:
    """The whole printout: pilot, verdicts, then the synthetic placement (labelled as such)."""
    if "pilot" not in rep:  # a report of the format before the pilot: the placement alone
        return SYNTHETIC_HEADING + "\n" + format_placement(rep["synthetic_reference"])
    lines = _header(rep) + format_pilot(rep)
    lines += ["", SYNTHETIC_HEADING, "  " + SYNTHETIC_NOTE] + ["  " + line for line in format_placement(rep["synthetic_reference"]).splitlines()]
    if rep.get("seconds") is not None:
        lines += ["", f"time: {rep['seconds']:.0f} s wall clock, {rep['cpu_seconds']:.0f} s CPU (this call; a resumed run counts what it ran)"]
    return "\n".join(lines)


def format_markdown(rep: dict) -> str:
    """diagnose.md: the same content as the printout, as markdown tables."""
    if "pilot" not in rep:
        return "# dualsae diagnose\n\n## " + SYNTHETIC_HEADING + "\n\n```\n" + format_placement(rep["synthetic_reference"]) + "\n```\n"
    methods = _methods(rep)
    rows = _rows(rep, methods)
    head = _header(rep)
    rec = rep["recommendation"]
    out = [f"# {head[0]}", "", head[1], "",
           "| held-out rows, mean ± std over seeds | " + " | ".join(METHOD_NAMES.get(m, m) for m in methods) + " |",
           "|---|" + "---|" * len(methods)]
    out += [f"| {label} | " + " | ".join(c.replace(" *", " **\\***") for c in cells) + " |" for label, cells in rows]
    out += ["", f"\\* ahead beyond the spread: its lead over every other method exceeds {rec['spread']:g} × (std + std) over seeds.",
            "", "## Recommendation per objective (measured on this store)", ""]
    for name, v in rec["objectives"].items():
        out.append(f"- **{name}**: {v['verdict']}")
        out += [f"  - {c['text']}" for c in v["metrics"]]
    out += [f"- context: {t}" for t in rec["context"]]
    if rec.get("what"):
        out += ["", "What the models are: " + rec["what"] + "."]
    if rec.get("disagreement"):
        out += ["", rec["disagreement"][0].upper() + rec["disagreement"][1:] + "."]
    out += ["", f"**Recommendation: {rec['overall']}.**"]
    out += ["", "## " + SYNTHETIC_HEADING, "", SYNTHETIC_NOTE[0].upper() + SYNTHETIC_NOTE[1:] + ".", "", "```", format_placement(rep["synthetic_reference"]), "```"]
    if rep.get("seconds") is not None:
        out += ["", f"Time: {rep['seconds']:.0f} s wall clock, {rep['cpu_seconds']:.0f} s CPU."]
    return "\n".join(out) + "\n"


__all__ = ["SYNTHETIC_HEADING", "SYNTHETIC_NOTE", "format_markdown", "format_pilot", "format_report"]
