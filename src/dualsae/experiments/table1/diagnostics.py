"""What each Table 1 model is, measured on the model itself: training curve, plateau, dead latents,
collapse (App. F.2), heterogeneity (Fig. 2) and the matching's support.

Training curve: :class:`dualsae.training.curves.CurveRecorder` is passed to
:func:`dualsae.training.trainer.train` as ``on_step``; it keeps the logged training-batch
reconstruction MSE of every step (mean of the image and text terms of eq. 4); the unit keeps it
downsampled and reduced to one value per epoch (the mean over the epoch's batches).

Plateau statistic (issue 8 point 5, "the last 10% of steps change reconstruction by < 1%"): the one
statistic of both experiments, :func:`dualsae.training.curves.plateau_change` of the per-step loss
(mean over steps [0.8 T, 0.9 T) against the mean over [0.9 T, T)), stored as ``curve.last10_change``.
Unit files written before it was shared hold ``(E[0.9 T] - E[T]) / E[T]`` of epoch-mean MSE (``E[t]``:
the epoch ending at step t) under the same name; they still build the table. Under the paper's
cosine schedule the learning rate is already small in the last 10%, so this alone cannot tell a
plateau from a frozen optimiser; the sizing in docs/table1-emoji/README.md therefore also compares
budgets (the curve over the whole run is kept in the unit file and plotted).

Model diagnostics (:func:`model_diagnostics`), all on the training rows the model was trained and
aligned on:

* dead fraction per SAE: latents that never fire on that modality's training rows (``sd = 0`` in
  eq. 5, the live/dead split :func:`dualsae.alignment.post_hoc.align` uses); for a shared SAE per modality and for
  both together (dead = fires on neither);
* collapse rate (App. F.2, shared SAEs only): share of live latents the Hungarian matching of the
  shared encoder's C sends to themselves;
* matched count and mean matched correlation of eq. 6 (for a shared SAE: of the F.2 matching);
* heterogeneity (Fig. 2, :func:`dualsae.evaluation.heterogeneity.heterogeneity`): cosine distance of the matched
  decoder pairs and per correlation bin; for a shared SAE a collapsed pair has distance 0;
* support: median number of training rows each live latent fires on (eq. 5's correlations rest on
  these co-firings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dualsae.alignment.coactivation import coactivation_correlation
from dualsae.alignment.post_hoc import align
from dualsae.evaluation.heterogeneity import heterogeneity
from dualsae.files.atomic import atomic_path
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings


def model_diagnostics(pair: SAEPair, rows: PairedEmbeddings, progress: bool = False) -> tuple[dict, Any]:
    """Diagnostics of one trained model on its training rows (see module docstring).

    Returns ``(diagnostics dict, AlignmentResult)``; for specific SAEs the result's ``pair`` is the
    post-hoc aligned model (eq. 7), so the caller does not compute C twice.
    """

    stats = coactivation_correlation(pair, rows, progress=progress)
    res = align(pair, stats=stats, progress=False)
    mt = res.matching
    m_i, m_t = pair.sae_for("image").m, pair.sae_for("text").m
    li, lt = np.asarray(mt.live_image), np.asarray(mt.live_text)
    dead = {"image": 1 - len(li) / m_i, "text": 1 - len(lt) / m_t}
    if pair.shared:
        dead["either"] = 1 - len(np.union1d(li, lt)) / m_i  # fires on neither modality
    het = heterogeneity(pair.decoder_columns("image").cpu(), pair.decoder_columns("text").cpu(), res.correlation,
                        li, lt, matched=(mt.image, mt.text))
    fired_i, fired_t = stats.fired_i.cpu().numpy(), stats.fired_t.cpu().numpy()
    out = {
        "rows": stats.n,
        "dead_fraction": dead,
        "live": {"image": int(len(li)), "text": int(len(lt))},
        "median_firings_per_live_latent": {"image": float(np.median(fired_i[li])) if len(li) else None,
                                           "text": float(np.median(fired_t[lt])) if len(lt) else None},
        "matched": int(len(mt.image)),
        "mean_matched_correlation": mt.mean_corr,
        "collapse_rate": res.report.get("collapse_rate") if pair.shared else None,
        "heterogeneity": {
            "matched": het.matched,
            "bins": [{k: b[k] for k in ("bin", "count", "median", "mean")} for b in het.bins],
        },
    }
    return out, res


def plot_curves(units: list[dict], path: str | Path, methods: tuple[str, ...]) -> Path | None:
    """docs/table1-emoji/curves.png: epoch-mean training MSE per method (one panel each), a line per
    seed, the 90% point marked; the plateau statistic in each legend entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    have = [m for m in methods if any(u["method"] == m and u.get("curve") for u in units)]
    if not have:
        return None
    fig, axes = plt.subplots(1, len(have), figsize=(3.4 * len(have), 3.0), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], have):
        for u in sorted((u for u in units if u["method"] == method and u.get("curve")), key=lambda u: u["seed"]):
            c = u["curve"]
            y = c["epoch_mean_mse"]
            change = "-" if c.get("last10_change") is None else f"{100 * c['last10_change']:.2f}%"
            ax.plot(np.arange(1, len(y) + 1), y, lw=1.2, label=f"seed {u['seed']}: last 10% {change}")
            ax.axvline(round(0.9 * len(y)), color="0.6", lw=0.8, ls=":")
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, frameon=False)
    axes[0][0].set_ylabel("training MSE (epoch mean)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


__all__ = ["model_diagnostics", "plot_curves"]
