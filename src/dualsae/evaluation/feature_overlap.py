"""How many latents of two SAEs of one modality are the same feature (``dualsae compare``).

Following Paulo & Belrose (2025, "Sparse Autoencoders Trained on the Same Data Learn Different
Features"): unit-normalise the decoder directions of SAE A ``[m_A, d]`` and SAE B ``[m_B, d]``, take
their cosine matrix ``S = U_A U_B^T`` ``[m_A, m_B]`` and find the one-to-one matching of maximal total
cosine (the Hungarian step of eq. 6, :func:`dualsae.alignment.assignment.match_latents`, the same exact
solver ``align`` uses). A latent counts as *shared* at threshold t when its matched cosine is >= t
(P&B use 0.7; 0.9 is the strict reading). The same is done on the encoder rows, and P&B's own criterion
("shared" when the encoder and the decoder matchings pick the same counterpart and both cosines are
>= 0.7) is reported beside the decoder-only share.

With rows of a store (``rows`` and ``modality``), the two SAEs' codes of the *same* rows give a second
matching: the Pearson correlation of latent a of A with latent b of B over the rows (eq. 5's statistics,
:class:`dualsae.alignment.correlation.CoactivationStats`, streamed from the sparse codes), matched on
the live x live block. A latent that never fires on the rows is dead and takes no part.

Widths may differ: the matching is rectangular, K = min(m_A, m_B) pairs (live counts for the
correlation). Shares are taken over the smaller side (``share``: count / min(n_A, n_B)); ``share_of_a``
and ``share_of_b`` give the count over each side's own latents.

Scale: up to ``OverlapOptions.max_dense`` entries (``solver`` auto or dense) the score matrices are
dense, [m_A, m_B] float64, built in row blocks (:func:`cosine_matrix`) and solved by
:func:`match_scores`. Above it (or with ``solver`` sparse) both matchings use ``align``'s certified
sparse solver (:func:`dualsae.alignment.assignment.match_sparse`) over all pairs: the activation
correlation exactly as ``align`` does (sparse co-firing statistics, rank-one rest), the cosines on an
upper-bound problem (each latent's ``candidates`` largest cosines exact, every other pair bounded by
its row's k-th largest, re-solved until the matching uses exact pairs only:
:mod:`dualsae.evaluation.sparse_cosine`). Both are exact; each sparse matching's certificate is in
``compare.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import betainc

from dualsae.alignment.assignment import ALIGN_SOLVERS, match_latents, match_sparse
from dualsae.alignment.correlation import CoactivationStats
from dualsae.alignment.sparse_assignment import SparseSolveOptions
from dualsae.core.errors import ConfigError
from dualsae.evaluation.sparse_cosine import match_cosine_sparse
from dualsae.models.encoding import iter_codes
from dualsae.models.sae import SAE
from dualsae.store.paired import PairedEmbeddings

OVERLAP_FORMAT = "dualsae.compare/1"
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
HIST_EDGES = tuple(np.round(np.linspace(-1.0, 1.0, 81), 4).tolist())


@dataclass(frozen=True)
class OverlapOptions:
    """thresholds: matched cosine (or correlation) a shared latent reaches (P&B: 0.7); block: rows of the
    score matrix computed at once; max_dense: the most entries of a dense score matrix (the exact
    solver's input; 2^26 float64 = 512 MiB, an 8,192 x 8,192 matching); solver: ``auto`` (dense up to
    max_dense entries, sparse above), ``dense``, ``sparse`` (certified, any size), or a dense one of
    :func:`dualsae.alignment.assignment.solve_assignment` (``scipy``, ``lapjv``); candidates: exact
    cosines listed per latent (each side) by the sparse cosine matching; batch_size: rows encoded per step;
    baseline: also match two sets of random directions of the same shapes ([m_A, d], [m_B, d], drawn with
    ``baseline_seed``), the cosine two unrelated SAEs reach in d dims by Hungarian matching alone."""

    thresholds: tuple[float, ...] = field(default=(0.7, 0.9), metadata={
        "help": "comma-separated cosine (and correlation) thresholds of a shared latent", "type": str, "default": "0.7,0.9"})
    block: int = field(default=4096, metadata={"cli": False})
    max_dense: int = field(default=1 << 26, metadata={"help": "most entries of a dense score matrix the exact solver takes",
                                                      "default": f"{1 << 26:,}"})
    solver: str = field(default="auto", metadata={
        "help": "assignment solver: auto (dense up to --max-dense entries, certified sparse above), dense (lapjv when lapx is installed, "
                "else scipy), sparse, scipy or lapjv", "choices": ALIGN_SOLVERS})
    candidates: int = field(default=32, metadata={"help": "sparse solver: exact cosines listed per latent of each SAE (more: fewer re-solves)"})
    batch_size: int = field(default=4096, metadata={"help": "rows encoded per step for --data"})
    baseline: bool = field(default=True, metadata={
        "help": "skip the reference matching of random directions of the same shapes (one more assignment of the same size)"})
    baseline_seed: int = field(default=0, metadata={"cli": False})

    def __post_init__(self) -> None:
        if not self.thresholds or any(not -1.0 <= t <= 1.0 for t in self.thresholds):
            raise ConfigError(f"thresholds must be values in [-1, 1], found {list(self.thresholds)}")
        if self.solver not in ALIGN_SOLVERS:
            raise ConfigError(f"solver must be one of {', '.join(ALIGN_SOLVERS)}, found {self.solver!r}")
        for name in ("block", "max_dense", "batch_size", "candidates"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, found {getattr(self, name)}")


def is_sparse(n_a: int, n_b: int, opt: OverlapOptions) -> bool:
    """Whether an ``n_a x n_b`` matching takes the sparse path (``solver`` sparse, or auto above max_dense)."""
    return opt.solver == "sparse" or (opt.solver == "auto" and n_a * n_b > opt.max_dense)


def dense_solver(solver: str) -> str:
    """The dense solver name :func:`match_latents` takes (auto / dense: the best installed)."""
    return "auto" if solver in ("auto", "dense") else solver


def check_dense(n_a: int, n_b: int, what: str, max_dense: int) -> None:
    """One line when the dense ``[n_a, n_b]`` score matrix of ``what`` exceeds ``max_dense`` entries."""
    if n_a * n_b > max_dense:
        raise ConfigError(f"{what}: the {n_a:,} x {n_b:,} score matrix has {n_a * n_b:,} entries, above the dense exact "
                          f"solver's limit of {max_dense:,} (--max-dense); compare narrower SAEs or raise the limit "
                          f"(memory {8 * n_a * n_b / 2**30:.1f} GiB), or use --solver auto or sparse")


def cosine_matrix(w_a: torch.Tensor, w_b: torch.Tensor, block: int = 4096) -> np.ndarray:
    """Cosines of the rows of ``w_a: [m_A, d]`` with those of ``w_b: [m_B, d]``: float64 [m_A, m_B].

    Rows are unit-normalised in float64 (a zero row has cosine 0 with everything); the product is
    formed ``block`` rows of A at a time, so the temporaries stay [block, m_B]."""
    u_a = F.normalize(w_a.detach().to("cpu", torch.float64), dim=1)
    u_b = F.normalize(w_b.detach().to("cpu", torch.float64), dim=1)
    out = np.empty((u_a.shape[0], u_b.shape[0]), dtype=np.float64)
    for s in range(0, u_a.shape[0], block):
        out[s : s + block] = (u_a[s : s + block] @ u_b.T).clamp_(-1.0, 1.0).numpy()
    return out


def chance_share(d: int, p_count: int, t: float) -> float:
    """Chance level: the probability that the best of ``p_count`` random unit directions in ``d`` dims has
    cosine >= t with a given direction, ``1 - (1 - P(cos >= t))^p_count``, with ``P(cos >= t) =
    I_{1-t^2}((d-1)/2, 1/2) / 2`` for t >= 0 (the cap of the sphere). It bounds the share a matching of
    A against ``p_count`` random directions reaches (a matched cosine is at most the best one)."""
    if t < 0:
        raise ConfigError(f"chance_share needs a threshold >= 0, found {t}")
    p = 0.5 * float(betainc((d - 1) / 2.0, 0.5, 1.0 - t * t)) if d > 1 else 0.5  # d = 1: the direction or its opposite
    return float(-np.expm1(p_count * np.log1p(-p)))


@dataclass
class OverlapMatch:
    """One maximal matching. a, b: [K] matched latents (A's increasing); score: [K] their cosine or
    correlation; n_a, n_b: latents that took part (all, or the live ones); total: sum of score."""

    kind: str
    a: np.ndarray
    b: np.ndarray
    score: np.ndarray
    n_a: int
    n_b: int
    total: float
    solver: str
    certificate: dict | None = None  # the sparse solver's info (listed pairs, rounds, certificate); None when dense

    def count_ge(self, t: float) -> int:
        return int((self.score >= t).sum())

    def summary(self, thresholds: tuple[float, ...]) -> dict[str, Any]:
        """The JSON block of ``compare.json`` (without the pair lists)."""
        small = min(self.n_a, self.n_b)
        out: dict[str, Any] = {"kind": self.kind, "matched": len(self.a), "n_a": self.n_a, "n_b": self.n_b,
                               "shares_over": "the smaller side (min(n_a, n_b) latents)", "total": round(self.total, 6),
                               "mean": round(float(self.score.mean()), 6) if len(self.score) else None, "solver": self.solver}
        if self.certificate is not None:
            out["sparse_solver"] = self.certificate
        out["thresholds"] = {str(t): {"count": self.count_ge(t), "share": _ratio(self.count_ge(t), small),
                                      "share_of_a": _ratio(self.count_ge(t), self.n_a), "share_of_b": _ratio(self.count_ge(t), self.n_b)}
                             for t in thresholds}
        q = np.quantile(self.score, QUANTILES) if len(self.score) else [None] * len(QUANTILES)
        out["quantiles"] = {f"q{int(100 * p)}": (round(float(v), 6) if v is not None else None) for p, v in zip(QUANTILES, q)}
        out["histogram"] = {"edges": list(HIST_EDGES), "counts": np.histogram(np.clip(self.score, -1, 1), bins=HIST_EDGES)[0].tolist()}
        return out

    def pairs(self) -> dict[str, list]:
        return {"a": self.a.tolist(), "b": self.b.tolist(), "score": [round(float(x), 6) for x in self.score]}


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 6) if den else None


def match_scores(score: np.ndarray, rows: Any, cols: Any, kind: str, solver: str = "auto") -> OverlapMatch:
    """Maximal-total one-to-one matching (eq. 6's solver) of ``score: [n_a, n_b]`` whose rows / columns
    are latents ``rows`` / ``cols`` of A / B."""
    mt = match_latents(score, rows, cols, solver=solver)
    return OverlapMatch(kind, mt.image, mt.text, mt.corr, len(mt.live_image), len(mt.live_text), mt.total, mt.solver)


def weight_matching(w_a: torch.Tensor, w_b: torch.Tensor, kind: str, opt: OverlapOptions) -> tuple[OverlapMatch, np.ndarray]:
    """Match the rows of ``w_a: [m_A, d]`` and ``w_b: [m_B, d]`` by cosine. Returns the matching and
    ``best_cos: [m_A]``, each A row's largest cosine with any B row (not one-to-one)."""
    if w_a.shape[1] != w_b.shape[1]:
        raise ConfigError(f"{kind}: A has d={w_a.shape[1]}, B has d={w_b.shape[1]}; only SAEs of one embedding space compare")
    m_a, m_b = w_a.shape[0], w_b.shape[0]
    if is_sparse(m_a, m_b, opt):
        a, b, cos, total, best, info = match_cosine_sparse(w_a, w_b, opt.candidates, opt.block, SparseSolveOptions())
        return OverlapMatch(kind, a, b, cos, m_a, m_b, total, "sparse", info), best
    check_dense(m_a, m_b, kind, opt.max_dense)
    cos = cosine_matrix(w_a, w_b, opt.block)
    best = cos.max(axis=1) if m_b else np.full(m_a, -1.0)
    return match_scores(cos, np.arange(m_a), np.arange(m_b), kind, dense_solver(opt.solver)), best


@torch.no_grad()
def activation_stats(sae_a: SAE, sae_b: SAE, rows: PairedEmbeddings, modality: str, opt: OverlapOptions,
                     device: str | torch.device = "cpu", progress: bool = False) -> CoactivationStats:
    """Eq. 5's sufficient statistics of A's codes (as the "image" side) against B's codes (the "text"
    side), both on the ``modality`` rows of ``rows``; sparse, streamed in ``opt.batch_size`` chunks."""
    rows.require(modality, "comparing activations")
    rows.require_width(sae_a.d, "SAE A")
    sparse = is_sparse(sae_a.m, sae_b.m, opt)
    if not sparse:
        check_dense(sae_a.m, sae_b.m, "activation correlation", opt.max_dense)
    stats = CoactivationStats(sae_a.m, sae_b.m, device=device, sparse=sparse)
    kw = dict(batch_size=opt.batch_size, device=device, out_device=None, dtype=None)
    for (_, ca), (_, cb) in zip(iter_codes(sae_a.to(device).eval(), rows, modality, progress=progress, **kw),
                                iter_codes(sae_b.to(device).eval(), rows, modality, **kw)):
        stats.update(ca, cb)
    return stats


def activation_matching(stats: CoactivationStats, opt: OverlapOptions) -> OverlapMatch:
    """Match the live latents of A and B by the correlation of their activations (eq. 5, then eq. 6):
    densely, or with sparse statistics by ``align``'s certified sparse solver."""
    kind = "activation correlation"
    if stats.sparse:
        mt = match_sparse(stats.sparse_correlation(), SparseSolveOptions())
        return OverlapMatch(kind, mt.image, mt.text, mt.corr, len(mt.live_image), len(mt.live_text), mt.total, mt.solver, mt.info)
    c, live_a, live_b = stats.correlation()
    return match_scores(c.cpu().numpy(), live_a.cpu().numpy(), live_b.cpu().numpy(), kind, dense_solver(opt.solver))


@dataclass
class Overlap:
    """The result of :func:`compare_saes`. decoder / encoder: matchings by cosine; best_cos: [m_A] each
    A latent's largest decoder cosine with any B latent (not one-to-one); activation: the correlation
    matching (None without rows); baseline: the matching of random directions of the same shapes (None
    when not asked for); fired_a / fired_b: [m] rows each latent fired on (None without rows)."""

    d: int
    m_a: int
    m_b: int
    thresholds: tuple[float, ...]
    decoder: OverlapMatch
    encoder: OverlapMatch
    best_cos: np.ndarray
    activation: OverlapMatch | None = None
    baseline: OverlapMatch | None = None
    decoder_cos_of_activation: np.ndarray | None = None
    fired_a: np.ndarray | None = None
    fired_b: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def pb_shared(self, t: float) -> int:
        """P&B's criterion: latents of A that the encoder and the decoder matchings pair with the same B
        latent, with both cosines >= t."""
        enc = dict(zip(self.encoder.a.tolist(), zip(self.encoder.b.tolist(), self.encoder.score.tolist())))
        return sum(1 for a, b, s in zip(self.decoder.a.tolist(), self.decoder.b.tolist(), self.decoder.score.tolist())
                   if s >= t and a in enc and enc[a][0] == b and enc[a][1] >= t)

    def counterparts(self) -> dict[str, list]:
        """Per A latent ([m_A]): its decoder-matched B latent (-1: unmatched) and their cosine (None)."""
        b = np.full(self.m_a, -1, dtype=np.int64)
        cos: list[float | None] = [None] * self.m_a
        b[self.decoder.a] = self.decoder.b
        for a, s in zip(self.decoder.a.tolist(), self.decoder.score.tolist()):
            cos[a] = round(float(s), 6)
        return {"b": b.tolist(), "cos": cos}

    def to_json(self) -> dict[str, Any]:
        small = min(self.m_a, self.m_b)
        dec = {**self.decoder.summary(self.thresholds), "pairs": self.decoder.pairs()}
        dec["best_counterpart"] = {str(t): {"share_of_a": _ratio(int((self.best_cos >= t).sum()), self.m_a),
                                            "chance_share_of_a": round(chance_share(self.d, self.m_b, t), 6) if t >= 0 else None}
                                   for t in self.thresholds}
        dec["best_counterpart"]["mean_best_cos"] = round(float(self.best_cos.mean()), 6)
        if self.baseline is not None:
            dec["random_baseline"] = {k: v for k, v in self.baseline.summary(self.thresholds).items() if k != "histogram"}
        out: dict[str, Any] = {"format": OVERLAP_FORMAT, **self.info, "d": self.d, "m_a": self.m_a, "m_b": self.m_b,
                               "rectangular": self.m_a != self.m_b, "thresholds": list(self.thresholds),
                               "decoder": dec, "encoder": {**self.encoder.summary(self.thresholds), "pairs": self.encoder.pairs()},
                               "paulo_belrose_shared": {str(t): {"count": self.pb_shared(t), "share": _ratio(self.pb_shared(t), small)}
                                                        for t in self.thresholds},
                               "counterpart": self.counterparts()}
        if self.activation is not None:
            act = {**self.activation.summary(self.thresholds), "pairs": self.activation.pairs()}
            act["decoder_cos_of_pairs"] = {f"q{int(100 * p)}": round(float(v), 6) for p, v in
                                           zip(QUANTILES, np.quantile(self.decoder_cos_of_activation, QUANTILES))} if self.activation.a.size else {}
            dec_pairs = set(zip(self.decoder.a.tolist(), self.decoder.b.tolist()))
            same = sum(1 for p in zip(self.activation.a.tolist(), self.activation.b.tolist()) if p in dec_pairs)
            act["same_pair_as_decoder"] = {"count": same, "share": _ratio(same, len(self.activation.a))}
            act["live"] = {"a": int((self.fired_a > 0).sum()), "b": int((self.fired_b > 0).sum())}
            act["dead"] = {"a": int((self.fired_a == 0).sum()), "b": int((self.fired_b == 0).sum())}
            out["activation"] = act
        return out


def compare_saes(sae_a: SAE, sae_b: SAE, rows: PairedEmbeddings | None = None, modality: str | None = None,
                 opt: OverlapOptions | None = None, device: str | torch.device = "cpu", progress: bool = False) -> Overlap:
    """Decoder- and encoder-cosine matchings of A and B, and with ``rows`` the activation-correlation
    matching on their ``modality`` column (module docstring)."""
    opt = opt or OverlapOptions()
    if sae_a.d != sae_b.d:
        raise ConfigError(f"SAE A has d={sae_a.d}, SAE B has d={sae_b.d}; only SAEs of one embedding space compare")
    dec, best_cos = weight_matching(sae_a.W_dec, sae_b.W_dec, "decoder cosine", opt)
    enc, _ = weight_matching(sae_a.W_enc, sae_b.W_enc, "encoder cosine", opt)
    result = Overlap(sae_a.d, sae_a.m, sae_b.m, tuple(opt.thresholds), dec, enc, best_cos)
    if opt.baseline:
        g = torch.Generator().manual_seed(opt.baseline_seed)
        result.baseline = weight_matching(torch.randn(sae_a.m, sae_a.d, generator=g, dtype=torch.float64),
                                          torch.randn(sae_b.m, sae_b.d, generator=g, dtype=torch.float64), "random directions", opt)[0]
    if rows is None:
        return result
    if modality is None:
        raise ConfigError("comparing activations needs a modality (image or text)")
    stats = activation_stats(sae_a, sae_b, rows, modality, opt, device, progress)
    result.activation = activation_matching(stats, opt)
    result.fired_a, result.fired_b = stats.fired_i.cpu().numpy(), stats.fired_t.cpu().numpy()
    act = result.activation
    result.decoder_cos_of_activation = (F.normalize(sae_a.W_dec.detach().double().cpu()[act.a], dim=1)
                                        * F.normalize(sae_b.W_dec.detach().double().cpu()[act.b], dim=1)).sum(1).numpy()
    return result


__all__ = ["OVERLAP_FORMAT", "Overlap", "OverlapMatch", "OverlapOptions", "activation_matching", "activation_stats",
           "chance_share", "check_dense", "compare_saes", "cosine_matrix", "dense_solver", "is_sparse", "match_scores", "weight_matching"]
