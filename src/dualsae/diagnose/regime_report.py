"""What ``dualsae diagnose`` shows: the terminal report (every number the placement rests on) and
diagnose.png (the regime curves on Fig. 5's axis with the store's values and the regimes shaded).
matplotlib is imported when the figure is drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dualsae.diagnose.placement import (
    CROSSING_FEATURE_RECOVERY,
    CROSSING_RECONSTRUCTION,
)
from dualsae.files.atomic import atomic_path


def _fmt_range(r: dict) -> str:
    if r is None:
        return "-"
    if r["clipped"] is not None:
        side = {"above": "above", "below": "below"}[r["clipped"]]
        where = f"{r['low']:.2f}" if r["low"] == r["high"] else f"{r['low']:.2f}-{r['high']:.2f}"
        return f"{where} (value {side} the regime curve's range)"
    if abs(r["high"] - r["low"]) < 1e-9:
        return f"{r['estimate']:.3f}"
    return f"{r['estimate']:.3f} (interval {r['low']:.3f}-{r['high']:.3f})"


def format_report(rep: dict) -> str:
    """The terminal report: every number the placement rests on."""
    q, gap, col, het, pl, cal = (rep[k] for k in ("quick", "modality_gap", "collapse", "heterogeneity", "placement", "regime_curve"))
    lines = [
        f"quick SAEs of this store (for the placement only): {q['rows']:,} pairs (seed {q['seed']}), shared m = {q['latents']}, specific m = {q['latents'] // 2} each, "
        f"k = {q['k']}, {q['epochs']} epochs of batch {q['batch_size']}",
        "",
        "modality gap (L2-normalised rows; reported, not used for the placement)",
        f"  centroid distance ||mean(x) - mean(y)||   {gap['centroid_distance']:.4f}",
        f"  mean cosine, matched pairs               {gap['mean_pair_cosine']:.4f}",
        f"  mean cosine, random pairs                {gap['mean_random_pair_cosine']:.4f}",
        "",
        "quick shared SAE: App. F.2 collapse rate",
        f"  {col['collapsed']:,} of {col['live']:,} live latents matched to themselves: collapse rate {col['collapse_rate']:.4f}"
        f"  (mean matched c {col['mean_matched_correlation']:.3f}; {col['seconds']:.0f} s)",
        "quick specific SAEs + post-hoc alignment: Fig. 2 heterogeneity",
        f"  {het['matched']:,} matched pairs, mean c {het['mean_matched_correlation']:.3f}; top {het['top_fraction']:.0%} "
        f"({het['top_pairs']} pairs, c >= {het['top_min_correlation']:.3f}): median cosine distance {het['median_top_distance']:.4f}"
        f"  ({het['seconds']:.0f} s)",
        "  all live pairs by c bin (median distance): " + ", ".join(
            f"{b['bin']} {b['median']:.3f} (n={b['count']:,})" for b in het["bins"] if b["count"]),
        "",
        "regime curve (synthetic: the same quick diagnostic on App. E.2 stores of known distance 1 - alpha)",
        "  distance     " + " ".join(f"{d:>6.2f}" for d in cal["distances"]),
        "  collapse     " + " ".join(f"{v:>6.3f}" for v in cal["collapse_rate"]),
        "  heterog.     " + " ".join(f"{v:>6.3f}" for v in cal["median_top_distance"]),
        "",
        "placement on the Fig. 5 axis (cosine distance 1 - alpha)",
        f"  from the collapse rate:   {_fmt_range(pl['by_collapse'])}",
        f"  from the heterogeneity:   {_fmt_range(pl['by_heterogeneity'])}",
        f"  regime boundaries: specific SAEs ahead on feature recovery beyond {rep['crossings']['feature_recovery']}, "
        f"on reconstruction beyond {rep['crossings']['reconstruction']} ({rep['crossings']['source']})",
    ]
    if pl["agree"] is False:
        lines.append("  the two indicators place the store in different regimes; the placement uses the collapse rate")
    ref = pl["fig5_at_nearest_distance"]
    lines += [
        f"  regime: {pl['regime'].upper()} (estimated distance {pl['estimate']:.3f}, from the {pl['based_on']})",
        f"  synthetic Fig. 5 stores (App. E.2, d = 256; not this store) at distance {ref['distance']:g}: reconstruction "
        f"error shared {ref['shared']['reconstruction']:.4f} vs specific {ref['specific']['reconstruction']:.4f}; feature "
        f"recovery error shared {ref['shared']['feature_recovery']:.4f} vs specific {ref['specific']['feature_recovery']:.4f}",
        f"what the synthetic curve alone suggests (not measured on this store): {pl['recommendation']}",
    ]
    lines += [f"note: {n}" for n in rep["notes"]]
    return "\n".join(lines)


def plot_placement(rep: dict, path: str | Path) -> None:
    """Two panels on the Fig. 5 axis: the regime curves (collapse rate, heterogeneity) against
    distance, the store's measured values as horizontal lines, its estimated distances marked, and
    the three regimes shaded. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cal, pl = rep["regime_curve"], rep["placement"]
    d = np.asarray(cal["distances"])
    panels = (("collapse_rate", "quick shared SAE: collapse rate (App. F.2)", rep["collapse"]["collapse_rate"], pl["by_collapse"]),
              ("median_top_distance", "quick specific SAEs: heterogeneity (Fig. 2)", rep["heterogeneity"]["median_top_distance"],
               pl["by_heterogeneity"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (key, title, value, placed) in zip(axes, panels):
        for lo, hi, color, name in ((0.0, CROSSING_FEATURE_RECOVERY, "#d9ead3", "shared ahead"),
                                    (CROSSING_FEATURE_RECOVERY, CROSSING_RECONSTRUCTION, "#fff2cc", "crossover"),
                                    (CROSSING_RECONSTRUCTION, 1.0, "#fde0d0", "specific ahead")):
            ax.axvspan(lo, hi, color=color, lw=0, label=f"synthetic Fig. 5: {name}")
        ax.plot(d, cal[key], "o-", color="#444444", label="regime curve (synthetic, known distance)")
        ax.axhline(value, color="#1f6fb4", ls="--", lw=1.2, label=f"this store: {value:.3f}")
        if placed is not None:
            ax.axvspan(placed["low"], placed["high"], color="#1f6fb4", alpha=0.25, lw=0)
            ax.axvline(placed["estimate"], color="#1f6fb4", lw=1.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel(r"cosine distance $1 - \alpha$ between $\phi_i$ and $\psi_i$ (Fig. 5 axis)")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("collapse rate")
    axes[1].set_ylabel("median cosine distance, top matches")
    axes[0].legend(fontsize=7, frameon=False, loc="upper right")
    fig.suptitle(f"{rep['store']} placed on the synthetic regime curve (context, not a measurement of the store's methods): "
                 f"{pl['regime']} (estimated distance {pl['estimate']:.2f})", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


__all__ = ["format_report", "plot_placement"]
