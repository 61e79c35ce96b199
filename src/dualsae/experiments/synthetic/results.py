"""The synthetic job's written results: results.json / results.csv / results.md (the Fig. 5 and
Fig. 6 tables and the Sec. 6.1 claim lines that ``make demo`` prints) and the figures."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from dualsae.experiments.synthetic.claims import PLATEAU_TOLERANCE
from dualsae.experiments.synthetic.figures import plot_figures
from dualsae.experiments.synthetic.plan import PAPER_EPOCHS
from dualsae.files.atomic import write_json, write_text


def _fmt(v: Any, std: Any = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if std:
        return f"{v:.4f} ± {std:.4f}"
    return f"{v:.4f}"


def _fmt_pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def markdown_table(report: dict) -> str:
    budgets = report["plan"]["epochs"]
    lines = []
    for epochs in budgets:
        rows = [r for r in report["fig5"] if r.get("epochs", PAPER_EPOCHS) == epochs]
        if not rows:
            continue
        lines += [f"### Fig. 5: shared vs modality-specific SAEs across cosine distance ({epochs} epochs)", "",
                  "| distance | method | reconstruction | feature recovery | collapse rate | same-index rate | alignment | "
                  "feature alignment | last-10% loss change | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['distance']:g} | {r['method']} | {_fmt(r.get('reconstruction_error'), r.get('reconstruction_error_std'))} | "
                         f"{_fmt(r.get('feature_recovery_error'), r.get('feature_recovery_error_std'))} | {_fmt(r.get('collapse_rate'))} | "
                         f"{_fmt(r.get('same_index_rate'))} | {_fmt(r.get('alignment_error'))} | {_fmt(r.get('feature_alignment_error'))} | "
                         f"{_fmt_pct(r.get('plateau_change_max'))} | {r['seeds']} |")
        lines.append("")
    lines += [f"### Fig. 6: feature recovery vs feature alignment at distance {report['plan']['fig6_distance']:g} "
              f"({budgets[0]} epochs)", "",
              "| method | multiplier | feature recovery | feature alignment | reconstruction | alignment | last-10% loss change | seeds |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["fig6"]:
        mult = "-" if r["multiplier"] is None else f"{r['multiplier']:g}×"
        lines.append(f"| {r['method']} | {mult} | {_fmt(r.get('feature_recovery_error'), r.get('feature_recovery_error_std'))} | "
                     f"{_fmt(r.get('feature_alignment_error'), r.get('feature_alignment_error_std'))} | {_fmt(r.get('reconstruction_error'))} | "
                     f"{_fmt(r.get('alignment_error'))} | {_fmt_pct(r.get('plateau_change_max'))} | {r['seeds']} |")
    lines += ["", "### Claims of Sec. 6.1", ""]
    lines += [claim_line(c) for c in report["claims"]]
    if report.get("budget_changes"):
        lines += ["", "### What changes with the training budget", ""]
        lines += [f"- {line}" for line in report["budget_changes"]]
    lines += ["", f"{report['units_done']}/{report['units_total']} trainings of the plan are done."]
    return "\n".join(lines) + "\n"


def _convergence_note(c: dict) -> str:
    if c.get("plateau_change_max") is None:
        return " Convergence: not measured (units from before the plateau statistic)."
    state = "every training reached its plateau" if c["converged"] else "NOT every training reached its plateau"
    return (f" Convergence: {state} (largest change of the training loss over the last 10% of steps "
            f"{_fmt_pct(c['plateau_change_max'])}; tolerance {_fmt_pct(PLATEAU_TOLERANCE)}).")


def claim_line(c: dict) -> str:
    verdict = "HOLDS" if c["holds"] else "DOES NOT HOLD"
    grid = c.get("grid", {"complete": True})
    if not grid["complete"]:
        verdict = (f"PARTIAL, {grid['done']} of {grid['planned']} {grid['what']} done (so far "
                   f"{'it holds' if c['holds'] else 'it does not hold'}; missing: {', '.join(grid['missing'])})")
    extra = ""
    if c["claim"] == "a":
        frm = c["holds_from_distance"]
        extra = (f" Holds from distance {_fmt(frm) if frm is not None else '- (not at the largest distance)'} on; "
                 f"curves cross at (specific better beyond): reconstruction {_fmt(c['crossing_distance_reconstruction'])}, "
                 f"feature recovery {_fmt(c['crossing_distance_feature_recovery'])}. "
                 "Reconstruction / feature recovery, shared vs specific: "
                 + "; ".join(f"{d:g}: {v['shared']['rec']:.4g} vs {v['specific']['rec']:.4g} / {v['shared']['fre']:.4g} vs {v['specific']['fre']:.4g}"
                             for d, v in c["numbers"].items()) + ".")
    elif c["claim"] == "b":
        extra = (" Collapse by distance: " + ", ".join(f"{d:g}: {v:.3f}" for d, v in c["collapse_by_distance"].items())
                 + f"; Spearman {c['spearman']:.2f}.")
    elif c["claim"] == "c":
        bf, ba = c["best_baseline_fre"], c["best_baseline_fae"]
        upto = ", ".join(f"{b} up to {'-' if m is None else f'{m:g}x'}" for b, m in c["holds_up_to"].items())
        extra = (f" Post hoc FRE {c['posthoc']['fre']:.4f} / FAE {c['posthoc']['fae']:.4f} (specific FRE {c['specific']['fre']:.4f}); "
                 f"best baseline FRE {bf['fre']:.4f} ({bf['method']} {bf['multiplier']:g}x), best baseline FAE {ba['fae']:.4f} "
                 f"({ba['method']} {ba['multiplier']:g}x); beaten on both: {upto}; not beaten on both: "
                 + (", ".join(f"{r['method']} {r['multiplier']:g}x (FRE {r['fre']:.4f}, FAE {r['fae']:.4f})" for r in c["not_beaten"]) or "none")
                 + "; dominated by: " + (", ".join(f"{r['method']} {r['multiplier']:g}x" for r in c["dominated_by"]) or "none") + ".")
    elif c["claim"] == "d":
        extra = " " + "; ".join(
            f"{name}: {lo['multiplier']:g}x FRE {lo['fre']:.4f} / FAE {lo['fae']:.4f} -> {hi['multiplier']:g}x FRE {hi['fre']:.4f} / FAE {hi['fae']:.4f}"
            for name, (lo, hi) in (("Iso-Energy", c["iso_energy"]), ("group-sparse", c["group_sparse"]))) + "."
    return f"- ({c['claim']}, {c['epochs']} epochs) {verdict}: {c['text']}.{extra}{_convergence_note(c)}"


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


__all__ = ["markdown_table", "claim_line", "write_csv", "write_report"]
