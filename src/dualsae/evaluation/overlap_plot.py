"""The figure of ``dualsae compare``: histograms of the matched decoder and encoder cosines (and of the
matched activation correlations when a store was given), with the 0.7 / 0.9 thresholds marked and, on
the cosine panels, the matching of random directions of the same shapes as a grey outline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dualsae.evaluation.feature_overlap import Overlap
from dualsae.files.atomic import atomic_path


def plot_overlap(result: Overlap, path: str | Path, title: str = "") -> None:
    """Write a PNG: one panel per matching, counts of matched pairs per score bin (width 0.025)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("decoder cosine", result.decoder, "#1f6fb4"), ("encoder cosine", result.encoder, "#7b5ea7")]
    if result.activation is not None:
        panels.append(("activation correlation (live latents)", result.activation, "#ed6a5a"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    edges = np.linspace(-0.2, 1.0, 49)
    for ax, (label, match, color) in zip(axes[0], panels):
        scores = np.clip(match.score, edges[0], edges[-1])
        ax.hist(scores, bins=edges, color=color, alpha=0.8)
        if result.baseline is not None and label.endswith("cosine"):
            ax.hist(np.clip(result.baseline.score, edges[0], edges[-1]), bins=edges, histtype="step", color="#555555", lw=1.2,
                    label=f"random directions, same shapes (mean {result.baseline.score.mean():.2f})")
        small = max(min(match.n_a, match.n_b), 1)
        for t, style in zip(result.thresholds, ("--", ":", "-.")):
            ax.axvline(t, color="black", ls=style, lw=1,
                       label=f"≥ {t:g}: {match.count_ge(t):,} ({100 * match.count_ge(t) / small:.1f}%)")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel(f"matched {label}")
        ax.set_ylabel("matched pairs")
        ax.set_title(f"{label}: {len(match.a):,} pairs of {match.n_a:,} x {match.n_b:,}", fontsize=9)
        ax.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below the axes: never over a bar
    fig.suptitle(title or "Hungarian matching of SAE A against SAE B", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


__all__ = ["plot_overlap"]
