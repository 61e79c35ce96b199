"""Monosemanticity score (Pach et al. 2025; paper Sec. 6.2, Fig. 8).

For latent j with activations a_1..a_N on N inputs, min-max scaled ã_n = (a_n - min)/(max - min),
and s_nm the cosine similarity of inputs n and m in an external encoder's embedding space:

    MS_j = sum_{n<m} ã_n ã_m s_nm / sum_{n<m} ã_n ã_m

(high when the inputs that activate j are close to one another in the external space). The pair
sums are computed exactly in O(N e) per latent, never O(N^2): with unit-normalised external
embeddings ê_n (so s_nm = ê_n . ê_m),

    sum_{n != m} ã_n ã_m s_nm = ||sum_n ã_n ê_n||^2 - sum_n ã_n^2
    sum_{n != m} ã_n ã_m      = (sum_n ã_n)^2    - sum_n ã_n^2

(the n<m sums are half of these; the ratio is the same). All latents are accumulated at once from
the sparse codes: ``index_add`` of ã·ê into U [m, e] (float64), plus sum ã and sum ã^2 per latent.

The minimum over the N inputs is 0 for every latent inactive on at least one input (then
ã = a / max and inactive inputs contribute nothing); a latent active on every input uses its real
minimum, and the input at the minimum gets ã = 0. A latent active on fewer than two inputs, or
whose pair weight sum is 0 (e.g. constant activation), gets NaN and is left out of the curve.

Two passes over the codes (max/min, then the sums); the codes [N, k] are kept in memory between
them (12 bytes per entry: 0.4 GB for 1M rows at k = 32), the external embeddings are streamed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dualsae.core.codes import SparseCodes
from dualsae.core.errors import DataError
from dualsae.core.modalities import MODALITIES
from dualsae.core.progress import tqdm
from dualsae.evaluation.task_table import Skip, TableRow, Task, TaskContext, fmt
from dualsae.files.atomic import atomic_path, write_npy
from dualsae.models.encoding import encode_rows
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings


def _external_reader(external: Any, modality: str) -> tuple[int, Any]:
    """(N, read(a, b) -> float32 [b - a, e]) for a store (same modality, or the only one it has) or an array."""
    if isinstance(external, PairedEmbeddings):
        mod = modality if external.has(modality) else ("text" if modality == "image" else "image")
        external.require(mod, "the monosemanticity score's external embeddings")
        return external.n, lambda a, b: external.read(mod, np.arange(a, b))
    if isinstance(external, torch.Tensor):
        return int(external.shape[0]), lambda a, b: external[a:b].float()
    return len(external), lambda a, b: torch.from_numpy(np.asarray(external[a:b], dtype=np.float32))


@torch.no_grad()
def monosemanticity_from_codes(codes: SparseCodes, external: Any, modality: str = "image",
                               batch_size: int = 8192, progress: bool = False) -> np.ndarray:
    """MS_j for every latent j from codes [N, w] and external embeddings [N, e] (same rows). -> [m] float64, NaN where undefined."""

    n_ext, read = _external_reader(external, modality)
    n, m = codes.batch, codes.m
    if n_ext != n:
        raise DataError(f"external embeddings have {n_ext:,} rows, the codes {n:,}; they must be the same inputs in the same order")
    vals = codes.values.double()
    idx = codes.indices
    active = vals > 0
    flat_i, flat_v = idx[active], vals[active]
    count = torch.bincount(flat_i, minlength=m)
    vmax = torch.zeros(m, dtype=torch.float64).scatter_reduce(0, flat_i, flat_v, "amax", include_self=True)
    # min over all N inputs: 0 unless the latent is active on every input (at most once per row).
    vmin_active = torch.full((m,), float("inf"), dtype=torch.float64).scatter_reduce(0, flat_i, flat_v, "amin", include_self=True)
    vmin = torch.where(count >= n, vmin_active, torch.zeros_like(vmin_active))
    span = vmax - vmin
    safe_span = torch.where(span > 0, span, torch.ones_like(span))

    e = None
    U = s1 = s2 = None
    for a in tqdm(range(0, n, batch_size), desc=f"monosemanticity {modality}", unit="batch", disable=not progress, leave=False):
        b = min(a + batch_size, n)
        ext = F.normalize(read(a, b).double(), dim=1)
        if U is None:
            e = ext.shape[1]
            U = torch.zeros(m, e, dtype=torch.float64)
            s1 = torch.zeros(m, dtype=torch.float64)
            s2 = torch.zeros(m, dtype=torch.float64)
        act = active[a:b]
        j = idx[a:b][act]
        rows = torch.nonzero(act, as_tuple=True)[0]
        t = (vals[a:b][act] - vmin[j]) / safe_span[j]
        t = torch.where(span[j] > 0, t, torch.zeros_like(t))
        U.index_add_(0, j, t[:, None] * ext[rows])
        s1.index_add_(0, j, t)
        s2.index_add_(0, j, t * t)
    if U is None:
        return np.full(m, np.nan)
    num = U.pow(2).sum(1) - s2
    den = s1.pow(2) - s2
    ok = (count >= 2) & (den > 1e-12 * s1.pow(2).clamp_min(1e-300))
    ms = torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.full_like(num, float("nan")))
    return ms.numpy()


def monosemanticity(pair: SAEPair, store: PairedEmbeddings, external: Any, modality: str, batch_size: int = 4096,
                    device: str | torch.device = "cpu", progress: bool = False) -> np.ndarray:
    """MS_j of the ``modality`` latents on the rows of ``store``; external: store view or array [N, e] with the same rows."""
    codes = encode_rows(pair, store, modality, batch_size=batch_size, device=device, progress=progress)
    return monosemanticity_from_codes(codes, external, modality, progress=progress)


def sorted_curve(scores: np.ndarray) -> np.ndarray:
    """Fig. 8 curve: the defined scores in descending order."""
    s = np.asarray(scores, dtype=np.float64)
    return np.sort(s[~np.isnan(s)])[::-1].copy()


def summarize(scores: np.ndarray) -> dict:
    s = np.asarray(scores, dtype=np.float64)
    ok = s[~np.isnan(s)]
    return {"mean": float(ok.mean()) if ok.size else float("nan"),
            "median": float(np.median(ok)) if ok.size else float("nan"),
            "n_scored": int(ok.size), "n_latents": int(s.size)}


def plot_curves(curves: dict[str, np.ndarray], path: str | Path, title: str = "Monosemanticity") -> Path:
    """Write a PNG of sorted MS curves (Fig. 8): x = latent rank, y = MS; one line per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    path = Path(path)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, label=f"{label} ({len(curve):,} latents)")
    ax.set_xlabel("latent (sorted by score)")
    ax.set_ylabel("monosemanticity score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- the eval task
def _task(ctx: TaskContext) -> dict:
    if ctx.external is None:
        raise Skip("needs --external STORE (an external encoder's embeddings of the same rows)")
    pair, store, prefix = ctx.pair, ctx.store, ctx.artefact_prefix
    res: dict[str, Any] = {}
    curves = {}
    for mod in MODALITIES:
        if not store.has(mod) or getattr(pair, mod) is None:
            continue
        scores = monosemanticity(pair, store, ctx.external, mod, **ctx.kw)
        res[mod] = summarize(scores)
        curves[mod] = sorted_curve(scores)
        if prefix is not None:
            path = Path(f"{prefix}_monosemanticity_{mod}.npy")
            write_npy(path, curves[mod])
            res[mod]["curve_file"] = path.name
    if prefix is not None and curves:
        png = plot_curves(curves, Path(f"{prefix}_monosemanticity.png"), title=f"Monosemanticity ({pair.method})")
        res["plot_file"] = png.name
    return res


def _lines(r: dict) -> list[str]:
    return [f"{'monosemanticity':<16}{mod:<10}mean {fmt(r[mod]['mean'])}  median {fmt(r[mod]['median'])}  "
            f"({r[mod]['n_scored']:,} of {r[mod]['n_latents']:,} latents scored)" for mod in MODALITIES if mod in r]


#: ``monosemanticity``: MS score of every latent against an external encoder's embeddings of the
#: same rows, per modality; sorted curves beside metrics.json as ``.npy`` and a PNG.
TASK = Task("monosemanticity", _task, (("mono_image", "Monosemanticity (image) ↑", True), ("mono_text", "Monosemanticity (text) ↑", True)),
            lambda r: {f"mono_{mod}": r[mod]["mean"] for mod in MODALITIES if mod in r}, _lines,
            lambda r: [TableRow("monosemanticity", f"MS mean ({mod})", r[mod]["mean"]) for mod in MODALITIES if mod in r])


__all__ = ["TASK", "monosemanticity", "monosemanticity_from_codes", "plot_curves", "sorted_curve", "summarize"]
