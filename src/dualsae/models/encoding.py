"""Encoding many rows in chunks: the one place that turns a store, an array or a tensor of
embeddings into :class:`~dualsae.core.codes.SparseCodes`.

Every consumer that needs the codes of more rows than fit one dense ``[chunk, m]`` pre-activation
(alignment's eq. 5 statistics and match confidence, the metrics, the report, ``dualsae steer``, the
group-sparse scale of Prop. 3) calls :func:`iter_codes` (streaming) or :func:`encode_rows` (all rows
at once). BatchTopK and ReLU codes vary in width from chunk to chunk; :func:`encode_rows` pads the
narrower chunks with inactive (value 0) entries, as :meth:`SparseCodes.cat` does.

The encoder is an :class:`~dualsae.models.sae.SAE` (codes in its own ``m`` latents) or an
:class:`~dualsae.models.pair.SAEPair` with a ``modality`` (codes in the pair's shared index space,
``m = pair.m``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch

from dualsae.core.codes import SparseCodes
from dualsae.core.errors import DataError
from dualsae.core.progress import tqdm
from dualsae.models.pair import SAEPair
from dualsae.models.sae import SAE
from dualsae.store.paired import PairedEmbeddings

#: Rows per chunk unless the caller says otherwise.
DEFAULT_BATCH = 4096

Encoder = SAE | SAEPair


def _reader(source: Any, modality: str | None, rows: Any) -> tuple[int, Callable[[int, int], torch.Tensor]]:
    """(n, read(start, stop) -> float32 [stop - start, d]) over a store view (one modality), an array
    or a tensor [N, d]; with ``rows`` (positions in ``source``), over those rows in their order."""
    if isinstance(source, PairedEmbeddings):
        if modality is None:
            raise DataError("encoding rows of a store needs a modality (image or text)")
        source.require(modality, "encoding")
        n = source.n
        take = lambda pos: source.read(modality, pos)  # noqa: E731
        run = lambda a, b: take(np.arange(a, b))  # noqa: E731
    elif isinstance(source, torch.Tensor):
        n = int(source.shape[0])
        take = lambda pos: source[torch.as_tensor(pos, dtype=torch.long, device=source.device)].float()  # noqa: E731
        run = lambda a, b: source[a:b].float()  # noqa: E731
    else:  # a numpy array, possibly memory-mapped: slices read only their rows
        n = len(source)
        take = lambda pos: torch.from_numpy(np.asarray(np.asarray(source)[pos], dtype=np.float32))  # noqa: E731
        run = lambda a, b: torch.from_numpy(np.asarray(source[a:b], dtype=np.float32))  # noqa: E731
    if rows is None:
        return n, run
    pos_all = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(pos_all) and (pos_all.min() < 0 or pos_all.max() >= n):
        where = getattr(source, "root", None) or "embeddings"
        raise DataError(f"{where}: rows must be in [0, {n}), found {pos_all.min()}..{pos_all.max()}")
    return len(pos_all), lambda a, b: take(pos_all[a:b])


def _encode_fn(encoder: Encoder, modality: str | None) -> tuple[Callable[[torch.Tensor], SparseCodes], int, torch.device]:
    """(encode x -> codes, m of the codes, device of the weights)."""
    if isinstance(encoder, SAEPair):
        if modality is None:
            raise DataError("encoding with a pair needs a modality (image or text)")
        sae = encoder.sae_for(modality)
        return (lambda x: encoder.encode(modality, x)), encoder.m, sae.W_dec.device
    return encoder.encode, encoder.m, encoder.W_dec.device


@torch.no_grad()
def iter_codes(
    encoder: Encoder,
    source: Any,
    modality: str | None = None,
    *,
    rows: Any = None,
    batch_size: int = DEFAULT_BATCH,
    device: str | torch.device | None = None,
    out_device: str | torch.device | None = "cpu",
    dtype: torch.dtype | None = torch.float32,
    progress: bool = False,
    chunks: Any = None,
) -> Iterator[tuple[np.ndarray, SparseCodes]]:
    """Yield ``(positions [b], codes [b, width])`` for consecutive chunks of ``batch_size`` rows;
    positions index the encoded sequence (the source's rows, or ``rows`` when given).

    source: a :class:`PairedEmbeddings` view (its ``modality`` array), an array or a tensor [N, d].
    rows: positions in ``source`` to encode (default all). device: where the chunk is encoded
    (default: the encoder's device); out_device: where the codes are returned (None: left there).
    dtype: of the returned values (None: the encoder's). chunks: chunk numbers to encode (a shard of
    ``range(ceil(n / batch_size))``, e.g. one rank's under torchrun; default all).
    """
    n, read = _reader(source, modality, rows)
    encode, m, weights_device = _encode_fn(encoder, modality)
    device = weights_device if device is None else torch.device(device)
    starts = range(0, n, batch_size)
    if chunks is not None:
        starts = [starts[i] for i in chunks]
    desc = f"encode {modality}" if modality else "encode"
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        stop = min(start + batch_size, n)
        codes = encode(read(start, stop).to(device))
        values, indices = codes.values, codes.indices
        if dtype is not None:
            values = values.to(dtype)
        if out_device is not None:
            values, indices = values.to(out_device), indices.to(out_device)
        yield np.arange(start, stop), SparseCodes(values, indices, m)


@torch.no_grad()
def encode_rows(
    encoder: Encoder,
    source: Any,
    modality: str | None = None,
    *,
    rows: Any = None,
    batch_size: int = DEFAULT_BATCH,
    device: str | torch.device | None = None,
    out_device: str | torch.device | None = "cpu",
    dtype: torch.dtype | None = torch.float32,
    progress: bool = False,
) -> SparseCodes:
    """Codes of every row (or of ``rows``) of ``source``: SparseCodes [N, width] (see :func:`iter_codes`).

    Chunks narrower than the widest (BatchTopK / ReLU) are padded with inactive entries. No rows:
    SparseCodes [0, 1].
    """
    parts = [c for _, c in iter_codes(encoder, source, modality, rows=rows, batch_size=batch_size, device=device,
                                      out_device=out_device, dtype=dtype, progress=progress)]
    if not parts:
        m = encoder.m
        return SparseCodes(torch.zeros(0, 1), torch.zeros(0, 1, dtype=torch.long), m)
    return SparseCodes.cat(parts)


__all__ = ["DEFAULT_BATCH", "Encoder", "encode_rows", "iter_codes"]
