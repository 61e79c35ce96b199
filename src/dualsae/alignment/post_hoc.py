"""Post-hoc alignment of modality-specific SAEs (paper Sec. 5): the pipeline of eqs. 5-7, and for a
shared SAE the collapse diagnostic (App. F.2).

1. coactivation correlation C (eq. 5, :mod:`dualsae.alignment.correlation`);
2. assignment on the live block (eq. 6, :mod:`dualsae.alignment.assignment`), optionally
   followed by the match confidence and its thresholds (:mod:`dualsae.alignment.confidence`);
3. the text SAE permuted into the image SAE's index space (eq. 7, :mod:`dualsae.alignment.permutation`),
   or, for a shared SAE, the collapse report (:mod:`dualsae.alignment.collapse`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dualsae.alignment.assignment import Matching, match_latents, match_pruned, match_sparse, matching_json, pick_solver
from dualsae.alignment.coactivation import coactivation_correlation, cofiring_products, encode_store, resolve_stats_mode, stats_from_codes
from dualsae.alignment.collapse import collapse_report
from dualsae.alignment.confidence import assess_matching
from dualsae.alignment.correlation import CoactivationStats
from dualsae.alignment.correlation import save_correlation as write_correlation
from dualsae.alignment.permutation import build_permutation, permute_sae
from dualsae.alignment.pruning import PruneOptions, pruned_correlation
from dualsae.alignment.sparse_assignment import SparseSolveOptions
from dualsae.alignment.sparse_correlation import SparseCorrelation, save_sparse_correlation
from dualsae.core.codes import SparseCodes
from dualsae.core.errors import ConfigError
from dualsae.files.atomic import write_json
from dualsae.models.aligned import ALIGNMENT_FORMAT, AlignedPair
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings


@dataclass
class AlignmentResult:
    """What :func:`align` returns.

    kind: ``aligned`` (specific SAEs -> :attr:`pair`) or ``collapse`` (shared SAE, App. F.2 report).
    report: the JSON written beside the model (``alignment.json`` or ``collapse.json``).
    correlation: live block of C [n_I, n_T] (float64), or its :class:`SparseCorrelation` when the
    statistics were sparse (never densified); live_image / live_text: original indices.
    """

    kind: str
    report: dict
    matching: Matching
    correlation: torch.Tensor | SparseCorrelation
    pair: AlignedPair | None = None

    def save(self, folder: str | Path, save_correlation: bool = True) -> Path:
        """Write the aligned pair (``image/``, ``text/``, ``alignment.json``) or ``collapse.json``, and
        ``correlation.safetensors``: the live block of C (float32, format /1; format /2 for a sparse C) with
        ``live_image`` (shared index = image index) and ``live_text`` (text latents in the *shared* index
        space, i.e. after eq. 7)."""
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
            shared = perm[live_t] if perm is not None else live_t.clone()
            if isinstance(self.correlation, SparseCorrelation):
                save_sparse_correlation(folder, self.correlation, shared)
            else:
                write_correlation(folder, self.correlation, self.matching.live_image, shared, live_t)
        return folder


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
    stats_mode: str = "auto",
    tiles: int = 1,
    sparse_options: SparseSolveOptions = SparseSolveOptions(),
    release_stats: bool = False,
    prune_options: PruneOptions = PruneOptions(),
    codes: tuple[SparseCodes, SparseCodes] | None = None,
) -> AlignmentResult:
    """Align a trained pair post hoc (eqs. 5-7), or, for a shared SAE, measure its collapse (App. F.2).

    pair: specific SAEs (-> :class:`AlignedPair`) or a shared SAE (``pair.shared`` -> collapse report).
    store: paired rows to compute C on (the training split in the paper), unless ``stats`` is given.
    source: path of the run, recorded in the report.
    confidence: :class:`dualsae.alignment.confidence.ConfidenceOptions` (support, permutation-null
    threshold and the thresholds that leave weak matches unmatched; needs ``store``), or None (the
    report then has no support / null_threshold; experiments that align many runs skip the cost).
    ``dualsae align`` always passes one.
    stats_mode / tiles: dense, sparse or pruned statistics of eq. 5 (see
    :func:`dualsae.alignment.coactivation.coactivation_correlation` and :mod:`dualsae.alignment.pruning`; auto:
    dense up to 4,096 x 4,096 latents, else pruned when the store's co-firing products would make full sparse
    statistics pass 4 GiB, else sparse); prune_options: the pruned statistics' keep and tile size; solver: ``auto`` (dense up to
    :data:`dualsae.alignment.assignment.DENSE_SOLVE_ENTRIES` live pairs, else sparse), ``dense``, ``sparse``
    (certified optimum of eq. 6 over all pairs, ``sparse_options``), ``scipy`` or ``lapjv``.
    release_stats: build the sparse C in the co-firing run's own buffers (:meth:`CoactivationStats.sparse_correlation`
    with ``consume``: 28 bytes a pair at the peak instead of 48, 2 GB less at 10^8 pairs); ``stats`` cannot build
    another C afterwards. Statistics computed here are always consumed so.
    codes: the store's codes already computed (:func:`dualsae.alignment.coactivation.encode_store`, e.g. gathered
    from torchrun ranks: (image [N, k_I], text [N, k_T]), row r of each the store's row r); used for the
    statistics and the match confidence instead of encoding the store again.
    """
    t0 = time.perf_counter()
    release, pruned, t_enc = release_stats or stats is None, None, None
    if codes is not None:
        if store is None or codes[0].batch != store.n or codes[1].batch != store.n:
            raise ConfigError(f"codes must be those of the store's {'?' if store is None else store.n} rows, "
                              f"found {codes[0].batch} image and {codes[1].batch} text rows")
        if stats is not None:
            raise ConfigError("give align either the codes or precomputed CoactivationStats, not both")
    if stats is None:
        if store is None:
            raise ConfigError("align needs a store of paired rows or precomputed CoactivationStats")
        m_i, m_t = pair.sae_for("image").m, pair.sae_for("text").m
        if codes is not None or confidence is not None or (stats_mode in ("auto", "pruned") and resolve_stats_mode(stats_mode, m_i, m_t) != "dense"):
            # One encoding of the store for the statistics and the match confidence; held codes also tell auto how
            # many co-firing pairs there can be, and pruned statistics re-read them (tiles, resolved pairs).
            if codes is None:
                codes = encode_store(pair, store, batch_size=batch_size, device=device, progress=progress)
                t_enc = time.perf_counter()
            mode = resolve_stats_mode(stats_mode, m_i, m_t, products=cofiring_products(*codes))
            if mode == "pruned":
                if tiles != 1:
                    raise ConfigError("pruned statistics choose their own tiles (prune_options.tile_pairs); leave tiles at 1")
                pruned = pruned_correlation(*codes, keep=prune_options.keep, tile_pairs=prune_options.tile_pairs,
                                            batch_size=batch_size, progress=progress)
            else:
                stats = stats_from_codes(*codes, batch_size=batch_size, sparse=mode == "sparse", tiles=tiles, progress=progress, device=device)
        else:
            stats = coactivation_correlation(pair, store, batch_size=batch_size, device=device, progress=progress,
                                             stats=stats_mode, tiles=tiles)
    t_corr = time.perf_counter()
    c: torch.Tensor | SparseCorrelation
    if pruned is not None:
        if solver not in ("auto", "sparse"):
            raise ConfigError(f"pruned statistics list only each latent's strongest pairs: they need the sparse solver, not {solver!r}")
        matching, c = match_pruned(pruned.correlation, pruned.resolver, sparse_options)
        matching.info["pruning"] = {**pruned.info, "resolver_calls": pruned.resolver.calls}
        n_rows, kind, n_pairs = pruned.n, "pruned", pruned.info["cofiring_pairs"]
    else:
        li, lt = stats.live()
        used = pick_solver(solver, len(li), len(lt))
        n_pairs = len(stats.pairs) if stats.pairs is not None else None
        n_rows, kind = stats.n, "sparse" if stats.sparse else "dense"
        if used == "sparse":
            c = stats.sparse_correlation(consume=release)  # release: C is built in the co-firing run's buffers
            matching = match_sparse(c, sparse_options)
        else:
            c, li, lt = stats.correlation()
            matching = match_latents(c, li, lt, solver=used)
            c = c.cpu()
    t_assign = time.perf_counter()
    timing = {"correlation_s": round(t_corr - t0, 3), "assignment_s": round(t_assign - t_corr, 3)}
    if t_enc is not None:  # the part of correlation_s spent encoding the store through both SAEs
        timing["encoding_s"] = round(t_enc - t0, 3)
    common = {"source_run": source, "source_method": pair.method, "rows": n_rows,
              "statistics": kind, "solver_details": _solver_details(matching, n_pairs)}
    conf, conf_section = None, {}
    if confidence is not None:
        if store is None:
            raise ConfigError("match confidence needs the store of paired rows, not only CoactivationStats")
        matching, conf, section = assess_matching(pair, store, matching, confidence, batch_size=batch_size, device=device, codes=codes)
        conf_section = {"confidence": section}
        timing["confidence_s"] = round(time.perf_counter() - t_assign, 3)
    if pair.shared:
        report = {**collapse_report(matching, pair.sae_for("image").m, conf), **conf_section, **common, "timing": timing}
        return AlignmentResult("collapse", report, matching, c)
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
        "matched": matching_json(matching, conf),
        **conf_section,
        "unmatched": {
            "image_only": matching.image_only.tolist(),
            "text_only": matching.text_only.tolist(),
            "text_only_shared": perm[matching.text_only].tolist(),
        },
        "timing": {**timing, "total_s": round(time.perf_counter() - t0, 3)},
    }
    aligned = AlignedPair("aligned", sae_i, text_aligned, report)
    return AlignmentResult("aligned", report, matching, c, aligned)


def _solver_details(matching: Matching, cofiring_pairs: int | None) -> dict:
    """alignment.json's record of how eq. 6 was solved: the solver, the co-firing pairs of sparse statistics,
    and for the sparse solver its candidate counts, rounds and certificate (largest dual violation <= tolerance)."""
    out: dict = {"solver": matching.solver}
    if cofiring_pairs is not None:
        out["cofiring_pairs"] = cofiring_pairs
    if matching.info is not None:
        out.update(matching.info)
    else:
        out["certificate"] = None  # a dense exact solver (scipy / lapjv): optimal by the solver's own proof
    return out


__all__ = ["AlignmentResult", "align"]
