"""Reconstruction quality on real embeddings (paper Table 1, "Recon. MSE").

Per modality, over the N rows of a store (each modality through its own encoder and decoder of
the pair, biases included):

    mse          = 1/N sum_n ||x_n - x^_n||^2           the reconstruction loss of eq. (4); summed over
                                                      the d dimensions, averaged over rows. On
                                                      unit-norm CLIP embeddings this is the ~0.09 of
                                                      Table 1 (a per-element mean would be ~2e-4).
    mse_per_dim  = mse / d
    explained_variance = 1 - sum_n ||x_n - x^_n||^2 / sum_n ||x_n - mean(x)||^2
    mean_l0      = mean number of active latents (value > 0) per row
    dead_fraction = fraction of the modality SAE's latents that fire on no row of this data

and the mean of mse / mse_per_dim / explained_variance over the modalities present. Sums are
accumulated in float64 in one streaming pass (batches of rows).
"""

from __future__ import annotations

import numpy as np
import torch

from dualsae.core.modalities import MODALITIES
from dualsae.core.progress import tqdm
from dualsae.evaluation.task_table import TableRow, Task, TaskContext, fmt
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings

AVERAGED = ("mse", "mse_per_dim", "explained_variance")


@torch.no_grad()
def modality_reconstruction(
    pair: SAEPair,
    store: PairedEmbeddings,
    modality: str,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict:
    """Reconstruction metrics of one modality (see module docstring) -> dict."""

    store.require(modality, "reconstruction")
    sae = pair.sae_for(modality)
    n, d = store.n, store.d
    sse = 0.0
    sum_x = torch.zeros(d, dtype=torch.float64)
    sum_sq = 0.0
    l0 = 0
    fired = torch.zeros(pair.m, dtype=torch.bool)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc=f"recon {modality}", unit="batch", disable=not progress, leave=False):
        x = store.read(modality, np.arange(start, min(start + batch_size, n))).to(device)
        codes = pair.encode(modality, x)
        x_hat = pair.decode(modality, codes)
        xd = x.double()
        sse += float((xd - x_hat.double()).pow(2).sum())
        sum_x += xd.sum(0).cpu()
        sum_sq += float(xd.pow(2).sum())
        active = codes.values > 0
        l0 += int(active.sum())
        fired[codes.indices[active].cpu()] = True
    # sum ||x - mean||^2 = sum ||x||^2 - N ||mean||^2
    sst = sum_sq - float(sum_x.pow(2).sum()) / max(n, 1)
    mse = sse / max(n, 1)
    return {
        "mse": mse,
        "mse_per_dim": mse / d,
        "explained_variance": 1.0 - sse / sst if sst > 0 else float("nan"),
        "mean_l0": l0 / max(n, 1),
        "dead_fraction": float((~fired[: sae.m]).float().mean()),
        "live_latents": int(fired[: sae.m].sum()),
        "n_rows": n,
        "d": d,
    }


def reconstruction_metrics(
    pair: SAEPair,
    store: PairedEmbeddings,
    modalities: tuple[str, ...] = MODALITIES,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict:
    """{"image": {...}, "text": {...}, "mean": {mse, mse_per_dim, explained_variance}} for the
    modalities the store holds (and the pair can encode)."""
    out: dict = {}
    for mod in modalities:
        if store.has(mod) and getattr(pair, mod, None) is not None:
            out[mod] = modality_reconstruction(pair, store, mod, batch_size, device, progress)
    present = [out[m] for m in modalities if m in out]
    if present:
        out["mean"] = {key: float(np.mean([r[key] for r in present])) for key in AVERAGED}
    return out


# ---------------------------------------------------------------------------- the eval task
def _task(ctx: TaskContext) -> dict:
    return reconstruction_metrics(ctx.pair, ctx.store, **ctx.kw)


def _lines(r: dict) -> list[str]:
    lines = [f"{'recon':<16}{'':<10}{'mse':>9}{'mse/dim':>11}{'EV':>8}{'L0':>8}{'dead':>7}"]
    for mod in (*MODALITIES, "mean"):
        if mod in r:
            v = r[mod]
            lines.append(f"{'':<16}{mod:<10}{fmt(v['mse']):>9}{fmt(v['mse_per_dim'], '.2e'):>11}{fmt(v['explained_variance'], '.3f'):>8}"
                         + (f"{fmt(v['mean_l0'], '.1f'):>8}{fmt(v['dead_fraction'], '.3f'):>7}" if "mean_l0" in v else ""))
    return lines


def _table(r: dict) -> list[TableRow]:
    """MSE and explained variance per modality; the baseline reconstructs every row as the mean embedding
    (MSE = the total variance mse / (1 - EV), EV = 0). The raw embeddings reconstruct themselves (no row)."""
    rows = []
    for mod in MODALITIES:
        if mod in r:
            v = r[mod]
            ev = v["explained_variance"]
            var = v["mse"] / (1.0 - ev) if ev is not None and np.isfinite(ev) and ev < 1 else None
            rows.append(TableRow("recon", f"MSE ({mod})", v["mse"], None, var, "mean embedding", False))
            rows.append(TableRow("recon", f"explained variance ({mod})", ev, None, 0.0, "mean embedding"))
    return rows


#: ``recon``: reconstruction MSE (eq. 4), explained variance, L0, dead latents per modality.
TASK = Task("recon", _task, (("recon_mse", "Recon. MSE ↓", False),),
            lambda r: {"recon_mse": r["mean"]["mse"]} if "mean" in r else {}, _lines, _table)


__all__ = ["TASK", "modality_reconstruction", "reconstruction_metrics"]
