"""fig5.png, fig6.png and curves.png of the synthetic job (the paper's Figs. 5 and 6, and every
training's loss curve with the plateau statistic's window shaded). matplotlib is imported when a
figure is drawn."""

from __future__ import annotations

from pathlib import Path

from dualsae.experiments.synthetic.plan import (
    FIG5_METHODS,
    FIG6_BASELINES,
    PAPER_EPOCHS,
)


def plot_figures(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"shared": "tab:green", "specific": "tab:orange", "specific+posthoc": "tab:red",
              "group-sparse": "tab:blue", "iso-energy": "teal"}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(axes, ("collapse_rate", "reconstruction_error", "feature_recovery_error"),
                              ("(a) feature collapse rate", "(b) reconstruction error", "(c) feature recovery error")):
        budgets = report["plan"]["epochs"]
        for epochs, style in zip(budgets, ("-", "--", ":", "-.") * 4):
            for method in FIG5_METHODS:
                rs = [r for r in report["fig5"] if r["method"] == method and key in r and r.get("epochs", PAPER_EPOCHS) == epochs]
                if not rs:
                    continue
                x = [r["distance"] for r in rs]
                y = [r[key] for r in rs]
                e = [r.get(f"{key}_std", 0.0) for r in rs]
                label = "shared SAE" if method == "shared" else "modality-specific SAEs"
                ax.errorbar(x, y, yerr=e, marker="o", linestyle=style, color=colors[method], capsize=3,
                            label=label if len(budgets) == 1 else f"{label}, {epochs} epochs")
        ax.set_xlabel("cosine distance 1 - cos(phi_i, psi_i)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
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
    ax.set_title(f"Fig. 6 at distance {report['plan']['fig6_distance']:g} ({report['plan']['epochs'][0]} epochs)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fig6.png", dpi=120)
    plt.close(fig)
    plot_curves(report, out)


def plot_curves(report: dict, out: Path) -> None:
    """curves.png: every training's reconstruction loss against its step, one panel per budget (log y),
    with the last 10% of steps shaded: the plateau statistic compares it with the 10% before."""
    import matplotlib.pyplot as plt

    budgets = sorted({r.get("epochs", PAPER_EPOCHS) for r in report["rows"] if r.get("train_curve")})
    if not budgets:
        return
    colors = {"shared": "tab:green", "specific": "tab:orange", "group-sparse": "tab:blue", "iso-energy": "teal"}
    fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4), squeeze=False)
    for ax, epochs in zip(axes[0], budgets):
        seen = set()
        for r in report["rows"]:
            if r.get("epochs", PAPER_EPOCHS) != epochs or not r.get("train_curve") or r["method"] == "specific+posthoc":
                continue
            steps, loss = zip(*r["train_curve"])
            ax.plot(steps, loss, color=colors.get(r["method"], "grey"), alpha=0.6, lw=1,
                    label=None if r["method"] in seen else r["method"])
            seen.add(r["method"])
        total = max(r["steps"] for r in report["rows"] if r.get("epochs", PAPER_EPOCHS) == epochs and r.get("steps"))
        ax.axvspan(0.9 * total, total, color="grey", alpha=0.15)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training reconstruction loss (eq. 4, per modality)")
        ax.set_title(f"{epochs} epochs: shaded = last 10% of steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


__all__ = ["plot_figures", "plot_curves"]
