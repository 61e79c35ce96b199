"""Top-activating rows of latents, their firing counts, and identical captions collapsed with a count
(what ``dualsae analyze top`` prints and what the report's latent pages show).

One ordering everywhere (:func:`select_top`): a latent's rows by decreasing activation, ties to the
lower row. :func:`top_examples_many` streams the store once (memory O(latents x pool + batch)),
merging each chunk's active entries of the requested latents into the kept ones with that ordering;
the report applies :func:`select_top` to the codes of all its rows and every latent at once
(:func:`dualsae.report.latents.latent_stats`). Identical captions (the same emoji drawn by two
sources, COCO's repeated phrasings) are merged by :func:`collapse_captions`, keeping the strongest
row, so ``n`` lines show ``n`` different captions when the pool holds them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
import torch

from dualsae.core.codes import SparseCodes
from dualsae.core.errors import ConfigError
from dualsae.core.modalities import MODALITIES
from dualsae.models.encoding import DEFAULT_BATCH, iter_codes
from dualsae.store.paired import PairedEmbeddings
from dualsae.use.inputs import check_modality


# ---------------------------------------------------------------------------- ordering
class Entries(NamedTuple):
    """Flat active code entries: slot [E] (a latent, or its position in a requested list), row [E]
    and value [E] (float32, > 0)."""

    slot: np.ndarray
    row: np.ndarray
    value: np.ndarray


def active_entries(codes: SparseCodes, rows: np.ndarray | None = None, slot_of: np.ndarray | None = None) -> Entries:
    """The active entries of codes [b, w]: their latent (or ``slot_of[latent]``, entries with a
    negative slot dropped) and row (``rows[i]`` for code row i; default i)."""
    val = codes.values.detach().cpu().float().numpy()
    lat = codes.indices.detach().cpu().numpy()
    b, w = val.shape
    row = np.repeat(np.arange(b) if rows is None else np.asarray(rows, dtype=np.int64), w)
    val, lat = val.ravel(), lat.ravel()
    slot = lat if slot_of is None else slot_of[lat]
    keep = (val > 0) & (slot >= 0)
    return Entries(slot[keep].astype(np.int64), row[keep].astype(np.int64), val[keep])


def select_top(entries: Entries, n_slots: int, top: int) -> tuple[Entries, np.ndarray]:
    """At most ``top`` entries per slot, sorted by (slot, -value, row): best first, ties to the lower row.

    Returns ``(kept entries, starts [n_slots + 1])``: slot s's entries are ``starts[s]:starts[s + 1]``."""
    order = np.lexsort((entries.row, -entries.value, entries.slot))
    slot = entries.slot[order]
    counts = np.bincount(slot, minlength=n_slots)
    first = np.concatenate([[0], np.cumsum(counts)])
    rank = np.arange(len(slot)) - first[slot]
    keep = order[rank < top]
    kept = Entries(entries.slot[keep], entries.row[keep], entries.value[keep])
    return kept, np.concatenate([[0], np.cumsum(np.minimum(counts, top))])


# ---------------------------------------------------------------------------- captions
class CaptionGroup(NamedTuple):
    """caption; count: rows merged; first: position (in the input order) of its first, strongest row."""

    caption: str | None
    count: int
    first: int


def collapse_captions(captions: Sequence[str | None], limit: int | None = None) -> list[CaptionGroup]:
    """Identical captions merged, in order of first occurrence (inputs by decreasing activation: the
    strongest row of each caption leads its group); the first ``limit`` groups, counts over all
    inputs. Rows without a caption (None) are never merged."""
    groups: list[list] = []
    seen: dict[str, list] = {}
    for i, cap in enumerate(captions):
        if cap is not None and cap in seen:
            seen[cap][1] += 1
            continue
        g = [cap, 1, i]
        groups.append(g)
        if cap is not None:
            seen[cap] = g
    return [CaptionGroup(*g) for g in groups[:limit]]


# ---------------------------------------------------------------------------- top examples
@dataclass
class LatentExamples:
    """latent: shared index; modality; frequency: share of rows where it fires; fired: that count;
    rows: [{row, activation, caption, meta, count}] by decreasing activation, captions collapsed."""

    latent: int
    modality: str
    fired: int
    n_rows: int
    rows: list[dict] = field(default_factory=list)

    @property
    def frequency(self) -> float:
        return self.fired / self.n_rows if self.n_rows else 0.0


@torch.no_grad()
def top_examples_many(pair, store: PairedEmbeddings, latents: list[int], modality: str, n: int = 10,
                      pool: int | None = None, collapse: bool = True, batch_size: int = DEFAULT_BATCH,
                      device: str = "cpu") -> list[LatentExamples]:
    """For each latent (shared index): its firing count over the store's rows and its top rows.

    pool: activations kept per latent before collapsing duplicates (default ``10 n``). With
    ``collapse``, a line's ``count`` is the number of *firing* rows that share its caption.
    """
    if modality not in MODALITIES:
        raise ConfigError(f"modality must be one of {MODALITIES}, found {modality!r}")
    if n < 1:
        raise ConfigError(f"n must be >= 1, found {n}")
    sae = pair.sae_for(modality).to(device)
    store.require(modality, "top-activating examples")
    store.require_width(sae.d, f"the {modality} SAE")
    bad = [j for j in latents if not 0 <= j < sae.m]
    if bad:
        raise ConfigError(f"latent must be in [0, {sae.m}) for the {modality} SAE, found {bad[0]}")
    pool = pool or (10 * n if collapse else n)
    slot_of = np.full(pair.m, -1, dtype=np.int64)
    slot_of[np.asarray(latents, dtype=np.int64)[::-1]] = np.arange(len(latents))[::-1]  # a repeated latent: its first slot
    slots = slot_of[np.asarray(latents, dtype=np.int64)]
    fired = np.zeros(len(latents), dtype=np.int64)
    captions = [Counter() for _ in latents] if collapse and store.meta is not None else None
    kept = Entries(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    for pos, codes in iter_codes(pair, store, modality, batch_size=batch_size, device=device):
        new = active_entries(codes, pos, slot_of)
        fired += np.bincount(new.slot, minlength=len(latents))
        if captions is not None:
            # How many firing rows share each caption (the "xN" of a collapsed line).
            abs_rows = store.rows_of(new.row)
            for s, r in zip(new.slot.tolist(), abs_rows.tolist()):
                captions[s][store.meta[int(r)].get("caption")] += 1
        both = Entries(*(np.concatenate([a, b]) for a, b in zip(kept, new)))
        kept, _ = select_top(both, len(latents), pool)
    starts = np.concatenate([[0], np.cumsum(np.bincount(kept.slot, minlength=len(latents)))])
    out = []
    for a, j in enumerate(latents):
        s = slots[a]
        sl = slice(starts[s], starts[s + 1])
        rows = store.rows_of(kept.row[sl])
        items = []
        for r, v in zip(rows.tolist(), kept.value[sl].tolist()):
            meta = store.meta[r] if store.meta is not None else {}
            items.append({"row": r, "activation": v, "caption": meta.get("caption"), "meta": meta})
        if collapse:
            counts = captions[s] if captions is not None else None
            items = [{**items[g.first], "count": counts.get(g.caption, 1) if counts and g.caption is not None else g.count}
                     for g in collapse_captions([i["caption"] for i in items], n)]
        else:
            items = [{**i, "count": 1} for i in items[:n]]
        out.append(LatentExamples(int(j), modality, int(fired[s]), store.n, items))
    return out


def top_examples(pair, latent: int, store: PairedEmbeddings, n: int = 10, modality: str = "both",
                 batch_size: int = DEFAULT_BATCH, device: str = "cpu") -> dict[str, list[dict]]:
    """{modality: the ``n`` rows where ``latent`` is most active, each ``{row, activation, caption, meta,
    count}`` with identical captions merged (``count``: firing rows with that caption)} for ``image``,
    ``text`` or ``both`` (modalities the store lacks are left out).

    ``row`` is the *absolute* row number in the store (the one convention of rows handed to a user);
    on a split view read it with ``store.read_row_ids(modality, [row])``, not ``read`` (positions)."""

    mods = MODALITIES if modality == "both" else (modality,)
    for m in mods:
        check_modality(m)
    return {m: top_examples_many(pair, store, [latent], m, n=n, batch_size=batch_size, device=device)[0].rows
            for m in mods if store.has(m)}


__all__ = ["CaptionGroup", "Entries", "LatentExamples", "active_entries", "collapse_captions", "select_top",
           "top_examples", "top_examples_many"]
