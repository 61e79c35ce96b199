"""Post-hoc alignment of modality-specific SAEs (paper Sec. 5, eqs. 5-7) and the collapse diagnostic
of a shared SAE (App. F.2).

Three steps, each a function here:

1. **Coactivation correlation** (eq. 5). ``C[i, j]`` is the Pearson correlation, over paired rows,
   of image latent i and text latent j. It is streamed from sparse TopK codes
   (:class:`CoactivationStats`): per-latent sums and sums of squares, and the cross-product matrix
   ``S[i, j] = sum_rows z_I,i * z_T,j`` accumulated by scattering the ``k_I x k_T`` active-pair
   products of every row into an ``[m_I, m_T]`` float64 matrix. Memory is O(m_I m_T) whatever the
   number of rows; no dense ``[N, m]`` code matrix is ever built. Then
   ``C = (S/N - mu_i mu_j) / (sd_i sd_j)``. Latents that never fire (or fire with a constant value)
   have ``sd = 0``: C is undefined there and they are *dead*, excluded from everything below.
2. **Assignment** (eq. 6 + footnote 2). ``max tr(CP)`` over permutations, solved on the live x live
   block only (a rectangular assignment when the live counts differ; the surplus live latents of
   the larger side stay unmatched and are reported as modality-only).
3. **Permutation** (eq. 7). The text SAE's rows (encoder rows, encoder bias, decoder columns, dead
   counters) are permuted so that the text latent matched to image latent i gets index i. The
   permuted text SAE then encodes straight into the shared index space; its decoder directions are
   the same set as before (eq. 7 re-indexes, it does not change directions).

For a shared-SAE model (one SAE for both modalities) the same C and assignment give the App. F.2
collapse rate: the share of live latents matched to themselves, ``P(i) = i``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualsae.files.atomic import save_tensors, write_json
from dualsae.core.codes import SparseCodes
from dualsae.store.paired import PairedEmbeddings
from dualsae.core.distributed import Distributed
from dualsae.core.errors import CheckpointError, ConfigError, DataError
from dualsae.models.pair import SAEPair
from dualsae.models.sae import SAE
from dualsae.core.progress import tqdm
from dualsae.alignment.confidence import arrays_json
from dualsae.alignment.confidence import assess_matching
from dualsae.models.aligned import ALIGNMENT_FORMAT
from dualsae.models.aligned import AlignedPair
from safetensors import SafetensorError
from safetensors.torch import load_file
import torch.distributed as dist
from scipy.optimize import linear_sum_assignment

COLLAPSE_FORMAT = "dualsae.collapse/1"
CORRELATION_FORMAT = "dualsae.correlation/1"
SOLVERS = ("auto", "scipy", "lapjv")

# Cross-product scatter is done in row chunks so the [rows, k_I, k_T] temporaries stay ~2M entries.
_PAIRS_PER_CHUNK = 2_000_000


# ====================================================================== eq. 5: correlation
def _coalesce(codes: SparseCodes) -> tuple[torch.Tensor, torch.Tensor]:
    """Values (float64) and indices of ``codes`` with repeated indices in a row summed.

    TopK codes never repeat an index, but padded / concatenated codes may repeat one with a
    non-zero value; sums and cross products are bilinear and need no care, sums of *squares* do.
    Returns ``(values [batch, w], indices [batch, w])``; freed slots are (0.0, 0).
    """
    vals = codes.values.detach().to(torch.float64)
    idx = codes.indices
    if idx.shape[1] < 2:
        return vals, idx
    idx_sorted, order = idx.sort(dim=1)
    repeated = idx_sorted[:, 1:] == idx_sorted[:, :-1]
    if not bool(repeated.any()):
        return vals, idx
    vals_sorted = vals.gather(1, order)
    new_group = torch.ones_like(idx_sorted, dtype=torch.bool)
    new_group[:, 1:] = ~repeated
    pos = new_group.long().cumsum(1) - 1
    out_v = torch.zeros_like(vals_sorted).scatter_add_(1, pos, vals_sorted)
    out_i = torch.zeros_like(idx_sorted).scatter_(1, pos, idx_sorted)
    return out_v, out_i


class CoactivationStats:
    """Streaming sufficient statistics of the coactivation correlation C (eq. 5).

    All state is float64 / int64 and additive over rows, so shards computed on different processes
    combine exactly with :meth:`merge` (or :meth:`all_reduce` under ``torch.distributed``).

    n:        paired rows seen
    sum_i, sumsq_i, fired_i: [m_I] sum of z_I,i, of z_I,i^2, and rows where z_I,i != 0
    sum_t, sumsq_t, fired_t: [m_T] same for text latents
    cross:    [m_I, m_T] S_ij = sum over rows of z_I,i z_T,j
    """

    def __init__(self, m_image: int, m_text: int, device: str | torch.device = "cpu") -> None:
        self.m_image = int(m_image)
        self.m_text = int(m_text)
        self.device = torch.device(device)
        f64 = dict(dtype=torch.float64, device=self.device)
        self.n = 0
        self.sum_i = torch.zeros(self.m_image, **f64)
        self.sumsq_i = torch.zeros(self.m_image, **f64)
        self.fired_i = torch.zeros(self.m_image, dtype=torch.long, device=self.device)
        self.sum_t = torch.zeros(self.m_text, **f64)
        self.sumsq_t = torch.zeros(self.m_text, **f64)
        self.fired_t = torch.zeros(self.m_text, dtype=torch.long, device=self.device)
        self.cross = torch.zeros(self.m_image, self.m_text, **f64)

    # ------------------------------------------------------------------ accumulation
    @torch.no_grad()
    def update(self, codes_i: SparseCodes, codes_t: SparseCodes) -> None:
        """Add one batch of paired codes. codes_i: [batch, k_I] (m_I latents), codes_t: [batch, k_T]."""
        if codes_i.batch != codes_t.batch:
            raise DataError(f"paired codes must have the same rows: image batch {codes_i.batch}, text batch {codes_t.batch}")
        if codes_i.m != self.m_image or codes_t.m != self.m_text:
            raise ConfigError(
                f"codes have m_image={codes_i.m}, m_text={codes_t.m}; these statistics were made for "
                f"m_image={self.m_image}, m_text={self.m_text}"
            )
        vi, ii = _coalesce(codes_i.to(self.device))
        vt, it = _coalesce(codes_t.to(self.device))
        self.n += codes_i.batch
        self._add_marginals(vi, ii, self.sum_i, self.sumsq_i, self.fired_i)
        self._add_marginals(vt, it, self.sum_t, self.sumsq_t, self.fired_t)
        # S_ij += z_I,i z_T,j over the k_I x k_T active pairs of each row: one flat scatter-add
        # into the [m_I * m_T] view (exact in float64; inactive entries add 0).
        flat_cross = self.cross.view(-1)
        rows_per_chunk = max(1, _PAIRS_PER_CHUNK // max(1, vi.shape[1] * vt.shape[1]))
        for s in range(0, vi.shape[0], rows_per_chunk):
            a_v, a_i = vi[s : s + rows_per_chunk], ii[s : s + rows_per_chunk]
            b_v, b_i = vt[s : s + rows_per_chunk], it[s : s + rows_per_chunk]
            prod = (a_v.unsqueeze(2) * b_v.unsqueeze(1)).reshape(-1)
            flat = (a_i.unsqueeze(2) * self.m_text + b_i.unsqueeze(1)).reshape(-1)
            flat_cross.index_add_(0, flat, prod)

    @staticmethod
    def _add_marginals(v: torch.Tensor, i: torch.Tensor, s: torch.Tensor, sq: torch.Tensor, fired: torch.Tensor) -> None:
        fi, fv = i.reshape(-1), v.reshape(-1)
        s.index_add_(0, fi, fv)
        sq.index_add_(0, fi, fv * fv)
        fired.index_add_(0, fi, (fv != 0).long())

    def merge(self, other: "CoactivationStats") -> "CoactivationStats":
        """Add another shard's statistics into this one (in place); returns self."""
        if (other.m_image, other.m_text) != (self.m_image, self.m_text):
            raise ConfigError(
                f"cannot merge statistics of m_image={other.m_image}, m_text={other.m_text} into "
                f"m_image={self.m_image}, m_text={self.m_text}"
            )
        self.n += other.n
        for name in ("sum_i", "sumsq_i", "fired_i", "sum_t", "sumsq_t", "fired_t", "cross"):
            getattr(self, name).add_(getattr(other, name).to(self.device))
        return self

    def all_reduce(self, group: Any = None) -> "CoactivationStats":
        """Sum the statistics over all processes of ``torch.distributed`` (no-op when not initialised)."""

        if not (dist.is_available() and dist.is_initialized()):
            return self
        n = torch.tensor([float(self.n)], dtype=torch.float64, device=self.device)
        for t in (n, self.sum_i, self.sumsq_i, self.fired_i, self.sum_t, self.sumsq_t, self.fired_t, self.cross):
            dist.all_reduce(t, group=group)
        self.n = int(round(n.item()))
        return self

    # ------------------------------------------------------------------ results
    def _moments(self, s: torch.Tensor, sq: torch.Tensor, fired: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = max(self.n, 1)
        mu = s / n
        ez2 = sq / n
        var = ez2 - mu * mu
        # Live: fired at least once and not constant. The relative tolerance absorbs the float64
        # cancellation of E[z^2] - mu^2 for a latent that fires with one value on every row.
        live = (fired > 0) & (var > 1e-12 * ez2)
        sd = var.clamp_min(0).sqrt()
        return mu, sd, live

    def live(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted indices of the live image latents [n_I] and live text latents [n_T]."""
        _, _, li = self._moments(self.sum_i, self.sumsq_i, self.fired_i)
        _, _, lt = self._moments(self.sum_t, self.sumsq_t, self.fired_t)
        return li.nonzero().flatten(), lt.nonzero().flatten()

    @torch.no_grad()
    def correlation(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The live block of C (eq. 5).

        Returns ``(C [n_I, n_T] float64, live_i [n_I], live_t [n_T])``: ``C[a, b]`` is the correlation
        of image latent ``live_i[a]`` with text latent ``live_t[b]``. Dead latents (sd = 0, C undefined)
        are left out rather than given a made-up value.
        """
        if self.n < 2:
            raise DataError(f"the coactivation correlation needs at least 2 paired rows, found {self.n}")
        mu_i, sd_i, live_i = self._moments(self.sum_i, self.sumsq_i, self.fired_i)
        mu_t, sd_t, live_t = self._moments(self.sum_t, self.sumsq_t, self.fired_t)
        li, lt = live_i.nonzero().flatten(), live_t.nonzero().flatten()
        # C_ij = S_ij u_i u_j - v_i v_j with u = 1 / (sd sqrt(N)), v = mu / sd: one copy of the live
        # block, then in-place scalings and a rank-1 update (no further [m_I, m_T] temporaries).
        c = self.cross.index_select(0, li)
        if len(lt) != self.m_text:
            c = c.index_select(1, lt)
        root_n = float(self.n) ** 0.5
        c.mul_((1.0 / (sd_i[li] * root_n)).unsqueeze(1))
        c.mul_((1.0 / (sd_t[lt] * root_n)).unsqueeze(0))
        c.addr_(mu_i[li] / sd_i[li], mu_t[lt] / sd_t[lt], alpha=-1.0)
        return c, li, lt


@torch.no_grad()
def coactivation_correlation(
    pair_or_saes: SAEPair | tuple[SAE, SAE],
    store: PairedEmbeddings,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    progress: bool = True,
    dist: Distributed | None = None,
) -> CoactivationStats:
    """Stream the store's paired rows through each modality's SAE and accumulate eq. 5's statistics.

    Under torchrun (``dist``) rank r encodes batches r, r + world, ... and the statistics are
    summed over ranks (they are additive), so every rank returns those of all N rows.

    pair_or_saes: an :class:`SAEPair` (its ``sae_for('image')`` / ``sae_for('text')``; the same SAE
    twice for a shared model) or a tuple ``(image_sae, text_sae)``.
    store: paired rows ([N, d] image and text). Returns the :class:`CoactivationStats` of all N rows.
    """

    if isinstance(pair_or_saes, SAEPair):
        sae_i, sae_t = pair_or_saes.sae_for("image"), pair_or_saes.sae_for("text")
    else:
        sae_i, sae_t = pair_or_saes
    store.require_pairs("the coactivation correlation (eq. 5)")
    for name, sae in (("image", sae_i), ("text", sae_t)):
        store.require_width(sae.d, f"the {name} SAE")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, found {batch_size}")
    sae_i, sae_t = sae_i.to(device).eval(), sae_t.to(device).eval()
    stats = CoactivationStats(sae_i.m, sae_t.m, device=device)
    n = store.n
    starts = range(0, n, batch_size)
    if dist is not None:
        starts = [starts[i] for i in dist.shards(len(starts))]
    mine = sum(min(batch_size, n - s) for s in starts)
    with tqdm(total=mine, desc="coactivation", unit="pair", disable=not progress, leave=False) as bar:
        for start in starts:
            pos = np.arange(start, min(start + batch_size, n))
            ci = sae_i.encode(store.read("image", pos).to(device))
            ct = sae_t.encode(store.read("text", pos).to(device))
            stats.update(ci, ct)
            bar.update(len(pos))
    if dist is not None and dist.enabled:
        stats.all_reduce()
    return stats


# ====================================================================== eq. 6: assignment
def _lap_available() -> bool:
    try:
        import lap  # noqa: F401
    except ImportError:
        return False
    return hasattr(lap, "lapjvr")


def solve_assignment(score: np.ndarray, solver: str = "auto") -> tuple[np.ndarray, np.ndarray, float]:
    """Maximum-total assignment (eq. 6) on a dense score matrix ``score: [a, b]``.

    Returns ``(rows [K], cols [K], total)`` with K = min(a, b), rows increasing, every row and
    column used at most once, and ``total = score[rows, cols].sum()`` maximal.
    solver: ``lapjv`` (lapx's Jonker-Volgenant ``lapjvr``, rectangular without padding), ``scipy``
    (``linear_sum_assignment``) or ``auto`` (lapjv if lapx is installed, else scipy). Both are exact;
    with ties they may return different assignments of the same total.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"solver must be one of {', '.join(SOLVERS)}, found {solver!r}")
    score = np.asarray(score, dtype=np.float64)
    if score.ndim != 2:
        raise ConfigError(f"assignment needs a 2-D score matrix, found shape {list(score.shape)}")
    if not np.isfinite(score).all():
        raise DataError("assignment score matrix contains NaN or inf; dead latents must be removed first")
    if min(score.shape) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, 0.0
    use_lap = solver == "lapjv" or (solver == "auto" and _lap_available())
    if solver == "lapjv" and not _lap_available():
        raise ConfigError("solver 'lapjv' needs lapx >= 0.6 with lapjvr (pip install 'lapx>=0.6'); or use solver 'scipy'")
    if use_lap:
        import lap

        cost = np.ascontiguousarray(-score)
        _, rows, cols = lap.lapjvr(cost, extend_cost=score.shape[0] != score.shape[1], precision="float64")
    else:

        rows, cols = linear_sum_assignment(score, maximize=True)
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    rows, cols = rows[order], cols[order]
    return rows, cols, float(score[rows, cols].sum())


@dataclass
class Matching:
    """Result of eq. 6 on the live block, in original latent indices.

    image, text: [K] matched latents (image[a] <-> text[a]); corr: [K] their c_ij.
    live_image, live_text: live latents of each side; image_only / text_only: live but unmatched.
    """

    image: np.ndarray
    text: np.ndarray
    corr: np.ndarray
    live_image: np.ndarray
    live_text: np.ndarray
    image_only: np.ndarray
    text_only: np.ndarray
    total: float
    solver: str

    @property
    def mean_corr(self) -> float | None:
        """Mean c_ij of the matched pairs (None when nothing matched: JSON has no NaN)."""
        return float(self.corr.mean()) if len(self.corr) else None


def match_latents(c: torch.Tensor | np.ndarray, live_i: Any, live_t: Any, solver: str = "auto") -> Matching:
    """Eq. 6 on the live block ``c: [n_I, n_T]`` whose rows/columns are latents ``live_i`` / ``live_t``."""
    c_np = c.detach().cpu().numpy() if isinstance(c, torch.Tensor) else np.asarray(c)
    li = np.asarray(live_i.cpu() if isinstance(live_i, torch.Tensor) else live_i, dtype=np.int64)
    lt = np.asarray(live_t.cpu() if isinstance(live_t, torch.Tensor) else live_t, dtype=np.int64)
    if c_np.shape != (len(li), len(lt)):
        raise ConfigError(f"correlation block has shape {list(c_np.shape)}, expected [{len(li)}, {len(lt)}] from the live lists")
    used = solver if solver != "auto" else ("lapjv" if _lap_available() else "scipy")
    rows, cols, total = solve_assignment(c_np, used)
    matched_i, matched_t = li[rows], lt[cols]
    return Matching(
        image=matched_i,
        text=matched_t,
        corr=c_np[rows, cols].astype(np.float64),
        live_image=li,
        live_text=lt,
        image_only=np.setdiff1d(li, matched_i),
        text_only=np.setdiff1d(lt, matched_t),
        total=total,
        solver=used,
    )


# ====================================================================== eq. 7: permutation
def build_permutation(matching: Matching, m_image: int, m_text: int) -> np.ndarray:
    """Text original index -> shared index, a permutation of [0, m_T) (eq. 7).

    Matched text latent j gets the index of its image partner i. The other text latents (live but
    unmatched first, then dead, each in increasing original index) take the indices no matched
    image latent uses, in increasing order, so the result is deterministic.
    """
    if m_image != m_text:
        raise ConfigError(
            f"post-hoc alignment permutes the text SAE into the image SAE's index space and needs equal "
            f"latent counts; found m_image={m_image}, m_text={m_text}"
        )
    perm = np.full(m_text, -1, dtype=np.int64)
    perm[matching.text] = matching.image
    taken = np.zeros(m_text, dtype=bool)
    taken[matching.image] = True
    free = np.flatnonzero(~taken)
    unmatched = np.flatnonzero(perm < 0)
    live_unmatched = np.isin(unmatched, matching.text_only)
    rest = np.concatenate([unmatched[live_unmatched], unmatched[~live_unmatched]])
    perm[rest] = free
    return perm


@torch.no_grad()
def permute_sae(sae: SAE, perm: np.ndarray | torch.Tensor) -> SAE:
    """A copy of ``sae`` whose latent j is moved to index ``perm[j]`` (eq. 7).

    Encoder rows, encoder bias, decoder columns and the dead-latent counter move together, so
    ``permute_sae(sae, p).encode(x)`` equals ``sae.encode(x).permute(p)`` and decoding is unchanged.
    """
    p = torch.as_tensor(np.asarray(perm), dtype=torch.long, device=sae.W_enc.device)
    if p.shape != (sae.m,) or not torch.equal(p.sort().values, torch.arange(sae.m, device=p.device)):
        raise ConfigError(f"permutation must be a rearrangement of [0, {sae.m}), found {p.numel()} entries that are not")
    out = SAE(sae.config).to(sae.W_enc.device)
    out.load_state_dict(sae.state_dict())
    for name in ("W_enc", "W_dec"):
        getattr(out, name).data[p] = getattr(sae, name).data
    out.b_enc.data[p] = sae.b_enc.data
    out.samples_since_fired[p] = sae.samples_since_fired
    return out.train(sae.training)


# ====================================================================== top level
@dataclass
class AlignmentResult:
    """What :func:`align` returns.

    kind: ``aligned`` (specific SAEs -> :attr:`pair`) or ``collapse`` (shared SAE, App. F.2 report).
    report: the JSON written beside the model (``alignment.json`` or ``collapse.json``).
    correlation: live block of C [n_I, n_T] (float64); live_image / live_text: original indices.
    """

    kind: str
    report: dict
    matching: Matching
    correlation: torch.Tensor
    pair: AlignedPair | None = None

    def save(self, folder: str | Path, save_correlation: bool = True) -> Path:
        """Write the aligned pair (``image/``, ``text/``, ``alignment.json``) or ``collapse.json``, and
        ``correlation.safetensors``: the live block of C (float32) with ``live_image`` (shared index
        = image index) and ``live_text`` (text latents in the *shared* index space, i.e. after eq. 7)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.pair is not None:
            self.pair.save(folder)
            perm = torch.as_tensor(self.pair.permutation)
        else:
            write_json(folder / "collapse.json", self.report)
            perm = None
        if save_correlation:
            live_t = torch.as_tensor(self.matching.live_text)
            save_tensors(
                folder / "correlation.safetensors",
                {
                    "C": self.correlation.to(torch.float32),
                    "live_image": torch.as_tensor(self.matching.live_image),
                    "live_text": perm[live_t] if perm is not None else live_t.clone(),
                    "live_text_original": live_t,
                },
                metadata={"format": CORRELATION_FORMAT},
            )
        return folder


def load_correlation(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read ``correlation.safetensors`` of an aligned folder: ``(C [n_I, n_T], live_image, live_text)``
    with ``live_text`` in the shared index space."""

    path = Path(folder) / "correlation.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; run 'dualsae align' without --no-correlation, or pass --data to recompute C")
    try:
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    missing = sorted({"C", "live_image", "live_text"} - set(t))
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {missing}")
    c, li, lt = t["C"], t["live_image"].long(), t["live_text"].long()
    if tuple(c.shape) != (len(li), len(lt)):
        raise CheckpointError(f"{path}: tensor 'C' has shape {list(c.shape)}, expected [{len(li)}, {len(lt)}] from live_image/live_text")
    return c, li, lt


def _matching_json(mt: Matching, confidence: Any = None) -> dict:
    out = {
        "image": mt.image.tolist(),
        "text": mt.text.tolist(),
        "correlation": [round(float(x), 6) for x in mt.corr],
    }
    if confidence is not None:

        out.update(arrays_json(confidence))
    return out


def collapse_report(matching: Matching, m: int, confidence: Any = None) -> dict:
    """App. F.2: for a shared SAE, the share of live latents the Hungarian matching sends to themselves.

    The rate's denominator m~ is the number of *live* latents, a latent being dead when it never
    fires on any input of either modality (Sec. 4's definition); ``collapse_rate_of_matched`` divides
    by the number of matched pairs instead (the two agree when both modalities use the same latents).
    """
    collapsed = matching.image[matching.image == matching.text]
    live_either = np.union1d(matching.live_image, matching.live_text)
    live_both = np.intersect1d(matching.live_image, matching.live_text)
    corr_self = matching.corr[matching.image == matching.text]
    return {
        "format": COLLAPSE_FORMAT,
        "m": m,
        "live": {"image": len(matching.live_image), "text": len(matching.live_text),
                 "either": len(live_either), "both": len(live_both)},
        "matched": len(matching.image),
        "collapsed": len(collapsed),
        "collapse_rate": len(collapsed) / len(live_either) if len(live_either) else None,
        "collapse_rate_of_matched": len(collapsed) / len(matching.image) if len(matching.image) else None,
        "collapsed_latents": collapsed.tolist(),
        "collapsed_correlation": [round(float(x), 6) for x in corr_self],
        "mean_matched_correlation": matching.mean_corr,
        "mean_collapsed_correlation": float(corr_self.mean()) if len(corr_self) else None,
        "solver": matching.solver,
        "matching": _matching_json(matching, confidence),
    }


def align(
    pair: SAEPair,
    store: PairedEmbeddings | None = None,
    *,
    stats: CoactivationStats | None = None,
    batch_size: int = 4096,
    solver: str = "auto",
    device: str | torch.device = "cpu",
    source: str | None = None,
    progress: bool = True,
    confidence: Any = None,
) -> AlignmentResult:
    """Align a trained pair post hoc (eqs. 5-7), or, for a shared SAE, measure its collapse (App. F.2).

    pair: specific SAEs (-> :class:`AlignedPair`) or a shared SAE (``pair.shared`` -> collapse report).
    store: paired rows to compute C on (the training split in the paper), unless ``stats`` is given.
    source: path of the run, recorded in the report.
    confidence: :class:`dualsae.alignment.confidence.ConfidenceOptions` (support, permutation-null
    threshold and the thresholds that leave weak matches unmatched; needs ``store``), or None (the
    report then has no support / null_threshold; experiments that align many runs skip the cost).
    ``dualsae align`` always passes one.
    """
    t0 = time.perf_counter()
    if stats is None:
        if store is None:
            raise ConfigError("align needs a store of paired rows or precomputed CoactivationStats")
        stats = coactivation_correlation(pair, store, batch_size=batch_size, device=device, progress=progress)
    t_corr = time.perf_counter()
    c, li, lt = stats.correlation()
    matching = match_latents(c, li, lt, solver=solver)
    t_assign = time.perf_counter()
    timing = {"correlation_s": round(t_corr - t0, 3), "assignment_s": round(t_assign - t_corr, 3)}
    common = {"source_run": source, "source_method": pair.method, "rows": stats.n}
    conf, conf_section = None, {}
    if confidence is not None:
        if store is None:
            raise ConfigError("match confidence needs the store of paired rows, not only CoactivationStats")

        matching, conf, section = assess_matching(pair, store, matching, confidence, batch_size=batch_size, device=device)
        conf_section = {"confidence": section}
        timing["confidence_s"] = round(time.perf_counter() - t_assign, 3)
    if pair.shared:
        report = {**collapse_report(matching, stats.m_image, conf), **conf_section, **common, "timing": timing}
        return AlignmentResult("collapse", report, matching, c.cpu())
    sae_i, sae_t = pair.sae_for("image"), pair.sae_for("text")
    perm = build_permutation(matching, sae_i.m, sae_t.m)
    text_aligned = permute_sae(sae_t, perm)
    report = {
        "format": ALIGNMENT_FORMAT,
        **common,
        "m_image": sae_i.m,
        "m_text": sae_t.m,
        "solver": matching.solver,
        "permutation": perm.tolist(),
        "live": {"image": len(matching.live_image), "text": len(matching.live_text)},
        "dead": {"image": sae_i.m - len(matching.live_image), "text": sae_t.m - len(matching.live_text)},
        "matched_count": len(matching.image),
        "mean_matched_correlation": matching.mean_corr,
        "total_matched_correlation": matching.total,
        "matched": _matching_json(matching, conf),
        **conf_section,
        "unmatched": {
            "image_only": matching.image_only.tolist(),
            "text_only": matching.text_only.tolist(),
            "text_only_shared": perm[matching.text_only].tolist(),
        },
        "timing": {**timing, "total_s": round(time.perf_counter() - t0, 3)},
    }
    aligned = AlignedPair("aligned", sae_i, text_aligned, report)
    return AlignmentResult("aligned", report, matching, c.cpu(), aligned)


__all__ = [
    "CoactivationStats",
    "coactivation_correlation",
    "solve_assignment",
    "Matching",
    "match_latents",
    "build_permutation",
    "permute_sae",
    "AlignedPair",
    "AlignmentResult",
    "align",
    "collapse_report",
    "load_correlation",
]
