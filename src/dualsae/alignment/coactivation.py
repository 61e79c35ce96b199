"""Streaming paired rows into the statistics of paper eq. 5 (:class:`dualsae.alignment.correlation.CoactivationStats`).

:func:`coactivation_correlation` encodes a store through each modality's SAE batch by batch (under torchrun
each rank its share, summed over ranks); :func:`stats_from_codes` does the same from codes already held
(:func:`encode_store`), so ``align`` with match confidence encodes the store once for both. Dense or
sparse statistics by size (``stats="auto"``: :func:`resolve_stats_mode`); sparse ones may be tiled over
blocks of image latents, so only one block's co-firing pairs are held while accumulating.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from dualsae.alignment.cofiring import gather_ragged
from dualsae.alignment.correlation import CoactivationStats
from dualsae.core.codes import SparseCodes
from dualsae.core.distributed import Distributed
from dualsae.core.errors import ConfigError
from dualsae.core.progress import tqdm
from dualsae.models.encoding import encode_rows, iter_codes
from dualsae.models.pair import SAEPair
from dualsae.models.sae import SAE
from dualsae.store.paired import PairedEmbeddings

STATS_MODES = ("auto", "dense", "sparse", "pruned")
# stats="auto" keeps the dense [m_I, m_T] float64 accumulator up to this many entries (128 MiB), sparse above.
DENSE_STATS_ENTRIES = 1 << 24
# ... and pruned statistics (dualsae.alignment.pruning) when the co-firing products of the codes, at the 48
# bytes a distinct pair may cost while C is built from full sparse statistics, would pass this (4 GiB).
PRUNE_ABOVE_BYTES = 1 << 32
SPARSE_PEAK_BYTES_PER_PAIR = 48


def _saes(pair_or_saes: SAEPair | tuple[SAE, SAE], store: PairedEmbeddings, batch_size: int) -> tuple[SAE, SAE]:
    """(image SAE, text SAE) of a pair or tuple, checked against the store."""
    if isinstance(pair_or_saes, SAEPair):
        sae_i, sae_t = pair_or_saes.sae_for("image"), pair_or_saes.sae_for("text")
    else:
        sae_i, sae_t = pair_or_saes
    store.require_pairs("the coactivation correlation (eq. 5)")
    for name, sae in (("image", sae_i), ("text", sae_t)):
        store.require_width(sae.d, f"the {name} SAE")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, found {batch_size}")
    return sae_i, sae_t


@torch.no_grad()
def encode_store(pair_or_saes: SAEPair | tuple[SAE, SAE], store: PairedEmbeddings, batch_size: int = 4096,
                 device: str | torch.device = "cpu", progress: bool = False,
                 dist: Distributed | None = None) -> tuple[SparseCodes, SparseCodes]:
    """Sparse codes of every paired row: (image [N, k_I], text [N, k_T]) on the CPU, float32, each in its
    own SAE's ``m`` latents (:func:`dualsae.models.encoding.encode_rows`). N (k_I + k_T) 12 bytes:
    77 MB for 10^5 pairs at k = 32.

    Under torchrun (``dist``) rank r encodes its contiguous share of the rows (:meth:`Distributed.slice`) and
    the shares are gathered in rank order: every rank returns every row's codes, in the store's order, so
    what follows (statistics, pruning, match confidence) is the one-process computation on the same codes,
    while the encoding, the costly part at large m, is split over the ranks."""
    sae_i, sae_t = (s.to(device).eval() for s in _saes(pair_or_saes, store, batch_size))
    mine = store if dist is None or not dist.enabled else store.subset(dist.slice(np.arange(store.n)))
    codes = (encode_rows(sae_i, mine, "image", batch_size=batch_size, device=device, progress=progress),
             encode_rows(sae_t, mine, "text", batch_size=batch_size, device=device, progress=progress))
    if dist is None or not dist.enabled:
        return codes
    # Flattened, so the ragged gather of the co-firing sums serves: every rank's codes have the same k.
    return tuple(SparseCodes(gather_ragged(c.values.reshape(-1), device=device).reshape(-1, c.values.shape[1]),
                             gather_ragged(c.indices.reshape(-1), device=device).reshape(-1, c.indices.shape[1]), c.m)
                 for c in codes)


@torch.no_grad()
def coactivation_correlation(
    pair_or_saes: SAEPair | tuple[SAE, SAE],
    store: PairedEmbeddings,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    progress: bool = True,
    dist: Distributed | None = None,
    stats: str = "auto",
    tiles: int = 1,
) -> CoactivationStats:
    """Stream the store's paired rows through each modality's SAE and accumulate eq. 5's statistics.

    Under torchrun (``dist``) rank r encodes batches r, r + world, ... and the statistics are
    summed over ranks (they are additive; the sparse pairs are gathered and reduced), so every rank
    returns those of all N rows.

    stats: ``dense`` ([m_I, m_T] float64 accumulator), ``sparse`` (co-firing pairs only) or ``auto``
    (dense up to ``DENSE_STATS_ENTRIES`` entries). tiles: with sparse statistics, split the image
    latents into this many blocks so only one block's co-firing pairs are held while accumulating (for
    pair sets larger than memory; exact). The store is encoded once and its codes kept (N (k_I + k_T)
    (4 + value) bytes: 0.5 GiB for 10^6 pairs at k = 32 in float32); each tile re-reads those, so a tile
    costs its share of the co-firing sums, not another pass through the SAEs.

    pair_or_saes: an :class:`SAEPair` (its ``sae_for('image')`` / ``sae_for('text')``; the same SAE
    twice for a shared model) or a tuple ``(image_sae, text_sae)``.
    store: paired rows ([N, d] image and text). Returns the :class:`CoactivationStats` of all N rows.
    """

    sae_i, sae_t = _saes(pair_or_saes, store, batch_size)
    mode = resolve_stats_mode(stats, sae_i.m, sae_t.m)
    if mode == "pruned":
        raise ConfigError("pruned statistics are built from codes held in memory by align() (dualsae.alignment.pruning), "
                          "not streamed; use stats='sparse' (with tiles) here")
    sparse = _check_tiles(mode, tiles)
    sae_i, sae_t = sae_i.to(device).eval(), sae_t.to(device).eval()
    if tiles == 1:
        return _accumulate(_store_codes(sae_i, sae_t, store, batch_size, device, progress, dist, "coactivation"),
                           sae_i.m, sae_t.m, device, dist, sparse, None)
    # Encode once and keep the (small) codes: each tile then re-reads them, not the store through the SAEs.
    cached = [(_compact(ci), _compact(ct)) for ci, ct in _store_codes(sae_i, sae_t, store, batch_size, device, progress, dist, "coactivation (encode)")]
    return _tiled(lambda: ((_expand(a), _expand(b)) for a, b in cached), sae_i.m, sae_t.m, device, dist, tiles, progress)


def _check_tiles(mode: str, tiles: int) -> bool:
    """Whether the statistics are sparse; tiles need them."""
    sparse = mode == "sparse"
    if tiles < 1 or (tiles > 1 and not sparse):
        raise ConfigError(f"tiles must be >= 1 and needs sparse statistics when > 1, found tiles={tiles} with {mode} statistics")
    return sparse


def _tiled(batches: Callable[[], Iterable[tuple[SparseCodes, SparseCodes]]], m_image: int, m_text: int, device: Any,
           dist: Distributed | None, tiles: int, progress: bool) -> CoactivationStats:
    """Sparse statistics accumulated one block of image latents at a time (``batches()`` re-reads the codes)."""
    bounds = np.linspace(0, m_image, tiles + 1).round().astype(int)
    out = None
    for t in tqdm(range(tiles), desc="coactivation tiles", unit="tile", disable=not progress, leave=False):
        part = _accumulate(batches(), m_image, m_text, device, dist, True, (int(bounds[t]), int(bounds[t + 1])))
        out = part if out is None else out.add_tile(part)
    return out


def resolve_stats_mode(stats: str, m_image: int, m_text: int, products: int | None = None) -> str:
    """``dense``, ``sparse`` or ``pruned`` for ``stats`` in STATS_MODES. auto: dense up to DENSE_STATS_ENTRIES
    entries; above, pruned when the codes' co-firing ``products`` (:func:`cofiring_products`; None: not known,
    the store is streamed) bound the distinct pairs above PRUNE_ABOVE_BYTES of sparse statistics, else sparse."""
    if stats not in STATS_MODES:
        raise ConfigError(f"stats must be one of {', '.join(STATS_MODES)}, found {stats!r}")
    if stats == "auto":
        if m_image * m_text <= DENSE_STATS_ENTRIES:
            return "dense"
        return "pruned" if products is not None and products * SPARSE_PEAK_BYTES_PER_PAIR > PRUNE_ABOVE_BYTES else "sparse"
    return stats


def cofiring_products(codes_i: SparseCodes, codes_t: SparseCodes) -> int:
    """sum over rows of (active image codes) x (active text codes): an upper bound of the distinct co-firing pairs."""
    return int(((codes_i.values != 0).sum(1).long() * (codes_t.values != 0).sum(1).long()).sum())


def _store_codes(sae_i: SAE, sae_t: SAE, store: PairedEmbeddings, batch_size: int, device: Any, progress: bool,
                 dist: Distributed | None, desc: str) -> Iterator[tuple[SparseCodes, SparseCodes]]:
    """The codes of this rank's paired rows, batch by batch: (image [batch, k_I], text [batch, k_T])."""
    n = store.n
    chunks = range(-(-n // batch_size))
    if dist is not None:
        chunks = dist.shards(len(chunks))
    mine = sum(min(batch_size, n - i * batch_size) for i in chunks)
    kw = dict(batch_size=batch_size, device=device, out_device=None, dtype=None, chunks=chunks)
    with tqdm(total=mine, desc=desc, unit="pair", disable=not progress, leave=False) as bar:
        for (pos, ci), (_, ct) in zip(iter_codes(sae_i, store, "image", **kw), iter_codes(sae_t, store, "text", **kw)):
            yield ci, ct
            bar.update(len(pos))


def _accumulate(batches: Iterable[tuple[SparseCodes, SparseCodes]], m_image: int, m_text: int, device: Any,
                dist: Distributed | None, sparse: bool, block: tuple[int, int] | None, same_index: bool = False,
                marginals_of: CoactivationStats | None = None) -> CoactivationStats:
    """eq. 5's statistics of the batches (of one tile of image latents when ``block``), summed over ranks."""
    stats = CoactivationStats(m_image, m_text, device=device, same_index=same_index, sparse=sparse, image_block=block,
                              marginals_of=marginals_of)
    for ci, ct in batches:
        stats.update(ci, ct)
    if dist is not None and dist.enabled:
        stats.all_reduce()
    return stats


def _compact(c: SparseCodes) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Codes held between tiles: values as the SAE emits them and int32 indices, on the CPU."""
    return c.values.detach().cpu(), c.indices.to("cpu", torch.int32), c.m


def _expand(c: tuple[torch.Tensor, torch.Tensor, int]) -> SparseCodes:
    return SparseCodes(c[0], c[1].long(), c[2])


def stats_from_codes(codes_i: SparseCodes, codes_t: SparseCodes, batch_size: int = 4096, same_index: bool = False,
                     sparse: bool = False, tiles: int = 1, progress: bool = False,
                     device: str | torch.device = "cpu", image_block: tuple[int, int] | None = None,
                     marginals_of: CoactivationStats | None = None) -> CoactivationStats:
    """eq. 5's statistics from codes already computed (codes_i [N, k_I], codes_t [N, k_T], row r of
    each one pair; e.g. :func:`encode_store`), accumulated in row batches of ``batch_size`` on ``device``
    (``sparse``: co-firing pairs only, over ``tiles`` blocks of image latents, or only the pairs of the image
    latents in ``image_block = (lo, hi)``: one tile, as :mod:`dualsae.alignment.pruning` takes them; a later tile
    passes ``marginals_of`` = the first tile's statistics, whose n and marginals it shares instead of re-summing
    them). Equal to :func:`coactivation_correlation` on the store the codes came from."""
    if codes_i.batch != codes_t.batch:
        raise ConfigError(f"paired codes must have the same rows: image {codes_i.batch}, text {codes_t.batch}")
    _check_tiles("sparse" if sparse else "dense", tiles)
    if image_block is not None and (not sparse or tiles != 1):
        raise ConfigError("image_block needs sparse statistics in one tile")
    if marginals_of is not None and image_block is None:
        raise ConfigError("marginals_of is for one tile of image latents (image_block)")

    def batches() -> Iterator[tuple[SparseCodes, SparseCodes]]:
        for s in tqdm(range(0, codes_i.batch, batch_size), desc="coactivation", unit="batch", disable=not progress, leave=False):
            yield (SparseCodes(codes_i.values[s : s + batch_size], codes_i.indices[s : s + batch_size], codes_i.m),
                   SparseCodes(codes_t.values[s : s + batch_size], codes_t.indices[s : s + batch_size], codes_t.m))

    if tiles == 1:
        return _accumulate(batches(), codes_i.m, codes_t.m, device, None, sparse, image_block, same_index, marginals_of)
    return _tiled(batches, codes_i.m, codes_t.m, device, None, tiles, progress)


__all__ = ["DENSE_STATS_ENTRIES", "PRUNE_ABOVE_BYTES", "STATS_MODES", "cofiring_products", "coactivation_correlation", "encode_store", "resolve_stats_mode", "stats_from_codes"]
