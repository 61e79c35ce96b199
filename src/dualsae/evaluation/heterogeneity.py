"""Cross-modal feature heterogeneity (paper Sec. 3, App. E.1, Fig. 2) and top-activating examples.

Heterogeneity: for every live image latent i and live text latent j, the cosine distance
``1 - cos(phi_i, psi_j)`` between their decoder columns, grouped by the coactivation correlation
``c_ij`` of eq. 5 into the bins [0, 0.2), [0.2, 0.4), [0.4, 0.6), [0.6, 0.8), [0.8, 1.0]. Pairs with
``c_ij < 0`` belong to no bin and are only counted. Under perfectly shared directions the distances
of high-c pairs would sit at 0; Fig. 2 finds them centred on a positive value.

Scale: at m = 8192 there are up to 67M pairs. Distances are computed in row blocks of the live
image latents (``[block, n_T]`` at a time), never as one ``[n_I, n_T]`` distance matrix on top of
C. Per bin we keep the count, the float64 sum (exact mean), a fine histogram on [0, 2] with bin
width 1e-4 (for the figure, and for quantiles when the values are too many), and the values
themselves while a bin holds at most ``max_exact`` of them (default 100M float32 = 400 MB, which
covers the whole low-c bin at m = 8192, since most pairs with no coactivation have c slightly below
0). Quartiles are exact (``numpy.quantile``, linear interpolation) when the values were kept, else
read from the histogram (error at most 1e-4); ``quantiles_exact`` in the summary says which.

Sparse C (:class:`dualsae.alignment.sparse_correlation.SparseCorrelation`, any m): a pair that never
co-fires has c_ij = -a_i b_j, which is < 0 whenever both latents' means are positive (non-negative
codes), so it falls in no bin and is only counted; distances are then computed for the co-firing
pairs with c >= 0 alone (float32 unit columns gathered in chunks of ``2^24 / d`` pairs; the
distances then agree with the dense path's to ~1e-7), and the rank-one remainder is
enumerated only for the rows where a sign makes -a_i b_j >= 0 possible (never for TopK codes).
The counts are the same as the dense path's.

Where C comes from: ``dualsae align`` writes the live block of C to ``correlation.safetensors`` in
the aligned folder (text latents in the shared index space), and :func:`heterogeneity_from_folder`
reads it; with a store it recomputes C instead (needed for a folder aligned with
``--no-correlation`` or for a plain run folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dualsae.alignment.coactivation import coactivation_correlation
from dualsae.alignment.correlation import load_stored_correlation
from dualsae.alignment.sparse_correlation import SparseCorrelation
from dualsae.core.errors import ConfigError
from dualsae.evaluation.top_rows import top_examples_many
from dualsae.files.atomic import atomic_path
from dualsae.models.aligned import AlignedPair
from dualsae.models.load import load_model
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings

BIN_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BIN_LABELS = ("[0.0, 0.2)", "[0.2, 0.4)", "[0.4, 0.6)", "[0.6, 0.8)", "[0.8, 1.0]")
HETEROGENEITY_FORMAT = "dualsae.heterogeneity/1"
HIST_RANGE = (0.0, 2.0)  # cosine distance lies in [0, 2]
HIST_BINS = 20_000  # bin width 1e-4


@dataclass
class _BinAccumulator:
    max_exact: int
    count: int = 0
    total: float = 0.0
    vmin: float = float("inf")
    vmax: float = float("-inf")
    hist: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    parts: list = field(default_factory=list)
    exact: bool = True

    def add(self, v: np.ndarray) -> None:
        if v.size == 0:
            return
        self.count += int(v.size)
        self.total += float(v.sum(dtype=np.float64))
        self.vmin = min(self.vmin, float(v.min()))
        self.vmax = max(self.vmax, float(v.max()))
        pos = ((v - HIST_RANGE[0]) * (HIST_BINS / (HIST_RANGE[1] - HIST_RANGE[0]))).astype(np.int64)
        self.hist += np.bincount(np.clip(pos, 0, HIST_BINS - 1), minlength=HIST_BINS)
        if self.exact:
            if self.count > self.max_exact:
                self.exact, self.parts = False, []
            else:
                self.parts.append(v.astype(np.float32, copy=True))

    def quantiles(self, qs: tuple[float, ...]) -> list[float | None]:
        if self.count == 0:
            return [None for _ in qs]
        if self.exact:
            return [float(x) for x in np.quantile(np.concatenate(self.parts), qs)]
        # Histogram quantile: centre of the histogram bin holding the (q * (n - 1))-th value.
        width = (HIST_RANGE[1] - HIST_RANGE[0]) / HIST_BINS
        cum = np.cumsum(self.hist)
        out = []
        for q in qs:
            b = int(np.searchsorted(cum, q * (self.count - 1), side="right"))
            out.append(HIST_RANGE[0] + (b + 0.5) * width)
        return out

    def summary(self, label: str, lo: float, hi: float) -> dict:
        q1, med, q3 = self.quantiles((0.25, 0.5, 0.75))
        return {
            "bin": label, "c_low": lo, "c_high": hi, "count": self.count,
            "mean": self.total / self.count if self.count else None,
            "q1": q1, "median": med, "q3": q3,
            "min": self.vmin if self.count else None, "max": self.vmax if self.count else None,
            "quantiles_exact": self.exact,
        }


@dataclass
class Heterogeneity:
    """Cosine distances by correlation bin.

    bins: one summary dict per bin (count, mean, q1, median, q3, min, max, quantiles_exact);
    hists: [5, HIST_BINS] counts of distances per bin on HIST_RANGE; negative_count: pairs with c < 0;
    matched: summary of the Hungarian-matched pairs (when known); pairs: live pairs considered.
    """

    bins: list[dict]
    hists: np.ndarray
    negative_count: int
    pairs: int
    live_image: int
    live_text: int
    matched: dict | None = None

    def to_json(self) -> dict:
        return {
            "format": HETEROGENEITY_FORMAT,
            "bin_edges": list(BIN_EDGES),
            "live": {"image": self.live_image, "text": self.live_text},
            "pairs": self.pairs,
            "negative_correlation_pairs": self.negative_count,
            "bins": self.bins,
            "matched": self.matched,
        }


def bin_index(c: np.ndarray) -> np.ndarray:
    """Bin of each correlation: 0..4 for [0,0.2) ... [0.8,1.0] (c >= 0.8 incl. rounding above 1), -1 for c < 0."""
    idx = np.searchsorted(np.asarray(BIN_EDGES[1:-1]), c, side="right")
    return np.where(c < 0, -1, idx)


@torch.no_grad()
def heterogeneity(
    image_dec: torch.Tensor,
    text_dec: torch.Tensor,
    c: torch.Tensor | np.ndarray,
    live_i: Any,
    live_t: Any,
    *,
    block_rows: int = 1024,
    max_exact: int = 100_000_000,
    matched: tuple[np.ndarray, np.ndarray] | None = None,
) -> Heterogeneity:
    """Cosine distance of decoder columns by coactivation bin (Fig. 2).

    image_dec: [m_I, d] decoder columns (row i = phi_i); text_dec: [m_T, d] (row j = psi_j);
    c: [n_I, n_T] live block of C, row a <-> image latent live_i[a], column b <-> text latent live_t[b];
    or a :class:`SparseCorrelation` (then live_i / live_t may be None: its own live lists are used);
    matched: optional (image indices, text indices) of matched pairs, summarised separately.
    """
    if isinstance(c, SparseCorrelation):
        return _heterogeneity_sparse(image_dec, text_dec, c, max_exact=max_exact, matched=matched)
    c_np = c.detach().cpu().numpy() if isinstance(c, torch.Tensor) else np.asarray(c)
    li = torch.as_tensor(np.asarray(live_i), dtype=torch.long)
    lt = torch.as_tensor(np.asarray(live_t), dtype=torch.long)
    if c_np.shape != (len(li), len(lt)):
        raise ConfigError(f"correlation block has shape {list(c_np.shape)}, expected [{len(li)}, {len(lt)}] from the live lists")
    if image_dec.shape[1] != text_dec.shape[1]:
        raise ConfigError(f"image decoder has d={image_dec.shape[1]}, text decoder d={text_dec.shape[1]}")
    phi = F.normalize(image_dec.detach().double(), dim=1)[li]
    psi_t = F.normalize(text_dec.detach().double(), dim=1)[lt].T.contiguous()
    acc = [_BinAccumulator(max_exact) for _ in BIN_LABELS]
    negative = 0
    for s in range(0, len(li), block_rows):
        dist = (1.0 - phi[s : s + block_rows] @ psi_t).to(torch.float32).numpy()  # [block, n_T]
        bins = bin_index(c_np[s : s + block_rows])
        negative += int((bins < 0).sum())
        for b, a in enumerate(acc):
            a.add(dist[bins == b])
    return _finish(acc, negative, len(li), len(lt), image_dec, text_dec, matched)


def _finish(acc: list[_BinAccumulator], negative: int, n_i: int, n_t: int, image_dec: torch.Tensor, text_dec: torch.Tensor,
            matched: tuple[np.ndarray, np.ndarray] | None) -> Heterogeneity:
    summaries = [a.summary(BIN_LABELS[b], BIN_EDGES[b], BIN_EDGES[b + 1]) for b, a in enumerate(acc)]
    matched_summary = None
    if matched is not None and len(matched[0]):
        mi, mt = (torch.as_tensor(np.asarray(x), dtype=torch.long) for x in matched)
        d = (1.0 - (F.normalize(image_dec.detach().double(), dim=1)[mi] * F.normalize(text_dec.detach().double(), dim=1)[mt]).sum(1)).numpy()
        q1, med, q3 = np.quantile(d, (0.25, 0.5, 0.75))
        matched_summary = {"count": int(len(d)), "mean": float(d.mean()), "q1": float(q1), "median": float(med), "q3": float(q3)}
    return Heterogeneity(summaries, np.stack([a.hist for a in acc]), negative, int(n_i * n_t), n_i, n_t, matched_summary)


@torch.no_grad()
def _heterogeneity_sparse(image_dec: torch.Tensor, text_dec: torch.Tensor, sc: SparseCorrelation, *, max_exact: int,
                          matched: tuple[np.ndarray, np.ndarray] | None) -> Heterogeneity:
    """Fig. 2 from a sparse C (module docstring): only pairs with c >= 0 are visited."""
    if image_dec.shape[1] != text_dec.shape[1]:
        raise ConfigError(f"image decoder has d={image_dec.shape[1]}, text decoder d={text_dec.shape[1]}")
    # float32 unit columns: the gathers are the cost (P x d); distances keep ~1e-7, far below the 1e-4 histogram bins.
    phi = F.normalize(image_dec.detach().double(), dim=1)[torch.from_numpy(sc.live_image)].float()
    psi = F.normalize(text_dec.detach().double(), dim=1)[torch.from_numpy(sc.live_text)].float()
    acc = [_BinAccumulator(max_exact) for _ in BIN_LABELS]
    chunk = max(1, (1 << 24) // max(1, phi.shape[1]))
    visited = 0

    def add(rows: np.ndarray, cols: np.ndarray, c: np.ndarray) -> int:
        """Distances of the pairs with c >= 0 among these, into the bins; returns how many."""
        keep = c >= 0
        r, k = torch.from_numpy(rows[keep]), torch.from_numpy(cols[keep])
        dist = (1.0 - torch.bmm(phi[r].unsqueeze(1), psi[k].unsqueeze(2)).view(-1)).numpy()
        bins = bin_index(c[keep])
        for b, a in enumerate(acc):
            a.add(dist[bins == b])
        return len(r)

    for s in range(0, sc.nnz, chunk):  # chunk by chunk: no full-length copies of the entries
        visited += add(sc.rows[s : s + chunk], sc.cols[s : s + chunk], sc.values[s : s + chunk])
    # Rank-one pairs with -a_i b_j >= 0 exist only where a sign allows it (not for non-negative codes).
    mixed = np.flatnonzero(((sc.a <= 0) & (sc.b >= 0).any()) | ((sc.a >= 0) & (sc.b <= 0).any())) if sc.shape[1] else np.zeros(0, np.int64)
    starts = sc.row_starts()
    for i in mixed:
        c_row = -sc.a[i] * sc.b
        c_row[sc.cols[starts[i] : starts[i + 1]]] = -np.inf  # co-firing pairs were visited above
        for s in range(0, len(c_row), chunk):
            visited += add(np.full(min(chunk, len(c_row) - s), i), np.arange(s, min(s + chunk, len(c_row))), c_row[s : s + chunk])
    n_i, n_t = sc.shape
    out = _finish(acc, n_i * n_t - visited, n_i, n_t, image_dec, text_dec, matched)
    if sc.pruned:  # dropped co-firing pairs have c <= their bound: the bins starting at or below the largest miss them
        bounds = np.concatenate([sc.row_bound, sc.col_bound])
        cap = float(bounds[np.isfinite(bounds)].max(initial=-np.inf))
        for b, summ in enumerate(out.bins):
            summ["complete"] = not BIN_EDGES[b] <= cap
            if not summ["complete"]:
                summ["note"] = (f"pruned C: co-firing pairs with c <= {cap:.4f} beyond each latent's kept ones are not listed, "
                                "so this bin counts the listed pairs only (the unlisted ones are counted as c < 0)")
    return out


def heterogeneity_from_folder(
    folder: str | Path,
    store: PairedEmbeddings | None = None,
    *,
    batch_size: int = 4096,
    device: str = "cpu",
    progress: bool = True,
    max_exact: int = 100_000_000,
) -> tuple[Heterogeneity, str]:
    """Heterogeneity of an aligned folder (``correlation.safetensors``) or, with ``store``, of any
    model folder with C recomputed on the store's rows. Returns the result and where C came from."""

    folder = Path(folder)
    pair = load_model(folder, device=device)
    c: Any
    li = lt = None
    if store is not None:
        stats = coactivation_correlation(pair, store, batch_size=batch_size, device=device, progress=progress)
        if stats.sparse:
            c = stats.sparse_correlation()
        else:
            c, li, lt = stats.correlation()
        source = f"recomputed on {store.n:,} rows of {store.root}"
    else:
        if not isinstance(pair, AlignedPair):
            raise ConfigError(f"{folder}: not an aligned folder (no alignment.json), so no stored correlation; pass --data to compute C")
        stored = load_stored_correlation(folder)
        c, li, lt = (stored, None, None) if isinstance(stored, SparseCorrelation) else stored
        source = str(folder / "correlation.safetensors")
    matched = None
    if isinstance(pair, AlignedPair) and "matched" in pair.alignment:
        shared = np.asarray(pair.alignment["matched"]["image"], dtype=np.int64)
        matched = (shared, shared)  # after eq. 7 a matched pair shares its index
    result = heterogeneity(pair.decoder_columns("image").cpu(), pair.decoder_columns("text").cpu(), c, li, lt,
                           max_exact=max_exact, matched=matched)
    return result, source


def plot_heterogeneity(result: Heterogeneity, path: str | Path, title: str = "") -> None:
    """Fig. 2-style figure: density of cosine distance per correlation bin, overlaid. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    colors = ["#c7c7c7", "#f2b134", "#ed6a5a", "#7b5ea7", "#1f6fb4"]  # high c in blue, as in Fig. 2
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    upper = 0.0
    for b, summary in enumerate(result.bins):
        if summary["count"] == 0:
            continue
        # Plot bin width by the Freedman-Diaconis rule (2 IQR n^-1/3), at least 0.01, so the small
        # high-c bins are not drawn as spikes; the factor must divide the fine histogram evenly.
        fd = 2 * (summary["q3"] - summary["q1"]) * summary["count"] ** (-1 / 3)
        fine = (HIST_RANGE[1] - HIST_RANGE[0]) / HIST_BINS
        coarse = next((f for f in (100, 200, 250, 400, 500, 800, 1000) if f * fine >= fd), 1000)
        edges = np.linspace(*HIST_RANGE, HIST_BINS // coarse + 1)
        centers = (edges[:-1] + edges[1:]) / 2
        width = edges[1] - edges[0]
        h = result.hists[b].reshape(-1, coarse).sum(1).astype(np.float64)
        dens = h / (h.sum() * width)
        ax.fill_between(centers, dens, step="mid", alpha=0.35, color=colors[b])
        ax.step(centers, dens, where="mid", color=colors[b], lw=1.2, label=f"c in {summary['bin']} (n={summary['count']:,})")
        upper = max(upper, summary["max"])
    ax.set_xlim(0, min(2.0, max(upper + 0.05, 0.5)))
    ax.set_xlabel(r"cosine distance $1 - \cos(\hat\phi_i, \hat\psi_j)$")
    ax.set_ylabel("density")
    ax.set_title(title or "Cross-modal feature heterogeneity")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)


@torch.no_grad()
def top_activating(
    pair: SAEPair,
    store: PairedEmbeddings,
    latent: int,
    modality: str,
    n: int = 10,
    batch_size: int = 4096,
    device: str = "cpu",
    progress: bool = False,
) -> list[dict]:
    """The ``n`` rows of ``store`` on which ``latent`` (shared index) is most active in ``modality``.

    Returns dicts ``{row, activation, caption, meta}`` by decreasing activation; ``row`` is the
    absolute row number in the store, ``caption`` the meta ``caption`` field (None without meta).
    Rows where the latent is inactive are never returned. Streams the store; memory O(n + batch).
    """

    ex = top_examples_many(pair, store, [latent], modality, n=n, collapse=False, batch_size=batch_size, device=device)[0]
    return [{k: r[k] for k in ("row", "activation", "caption", "meta")} for r in ex.rows]


__all__ = [
    "BIN_EDGES",
    "BIN_LABELS",
    "Heterogeneity",
    "bin_index",
    "heterogeneity",
    "heterogeneity_from_folder",
    "plot_heterogeneity",
    "top_activating",
]
