"""Top-activating rows of several latents in one pass, their firing frequency, and duplicate captions
collapsed with a count (what ``dualsae analyze top`` prints).

One streaming pass over the store encodes every row once and keeps, per requested latent, the
``pool`` largest activations (a running top-k merge; memory O(latents x pool + batch)), and counts
the rows on which each latent fires. Identical captions (the same emoji drawn by two sources, COCO's
repeated phrasings) are then merged, keeping the strongest row, so ``n`` lines show ``n`` different
captions when the pool holds them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from dualsae.store.paired import PairedEmbeddings
from dualsae.core.errors import ConfigError
from dualsae.core.modalities import MODALITIES
from dualsae.use.translation import _check_modality


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


def collapse_captions(rows: list[dict], n: int, counts: dict[str, int] | None = None) -> list[dict]:
    """Merge rows with the same caption (the first, strongest, is kept); at most ``n``. ``count`` is
    ``counts[caption]`` (e.g. all firing rows with that caption) when given, else the rows merged
    here. Rows without a caption are never merged."""
    out: list[dict] = []
    seen: dict[str, dict] = {}
    for r in rows:
        cap = r.get("caption")
        if cap is not None and cap in seen:
            seen[cap]["count"] += 0 if counts else 1
            continue
        entry = {**r, "count": counts.get(cap, 1) if counts and cap is not None else 1}
        if cap is not None:
            seen[cap] = entry
        if len(out) < n:
            out.append(entry)
    return out


@torch.no_grad()
def top_examples_many(pair, store: PairedEmbeddings, latents: list[int], modality: str, n: int = 10,
                      pool: int | None = None, collapse: bool = True, batch_size: int = 4096,
                      device: str = "cpu") -> list[LatentExamples]:
    """For each latent (shared index): its firing count over the store's rows and its top rows.

    pool: activations kept per latent before collapsing duplicates (default ``10 n``).
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
    lat = torch.as_tensor(latents, dtype=torch.long)
    best_v = torch.full((len(latents), 0), 0.0)
    best_p = torch.zeros((len(latents), 0), dtype=torch.long)
    fired = torch.zeros(len(latents), dtype=torch.long)
    captions = [Counter() for _ in latents] if collapse and store.meta is not None else None
    for start in range(0, store.n, batch_size):
        pos = torch.arange(start, min(start + batch_size, store.n))
        codes = pair.encode(modality, store.read(modality, pos.numpy()).to(device))
        hit = codes.indices.cpu().unsqueeze(0) == lat.view(-1, 1, 1)  # [L, batch, k]
        act = (codes.values.cpu().float().unsqueeze(0) * hit).sum(2)  # [L, batch]
        fired += (act != 0).sum(1)
        if captions is not None:
            # How many firing rows share each caption (the "xN" of a collapsed line).
            abs_rows = store.rows_of(pos.numpy())
            for a, p_ in (act != 0).nonzero().tolist():
                captions[a][store.meta[int(abs_rows[p_])].get("caption")] += 1
        v = torch.cat([best_v, act], 1)
        p = torch.cat([best_p, pos.unsqueeze(0).expand(len(latents), -1)], 1)
        top = v.topk(min(pool, v.shape[1]), dim=1)
        best_v, best_p = top.values, p.gather(1, top.indices)
    out = []
    for a, j in enumerate(latents):
        keep = best_v[a] > 0
        rows = store.rows_of(best_p[a][keep].numpy())
        items = []
        for r, v in zip(rows.tolist(), best_v[a][keep].tolist()):
            meta = store.meta[r] if store.meta is not None else {}
            items.append({"row": r, "activation": v, "caption": meta.get("caption"), "meta": meta})
        items = collapse_captions(items, n, captions[a] if captions is not None else None) if collapse else [{**i, "count": 1} for i in items[:n]]
        out.append(LatentExamples(int(j), modality, int(fired[a]), store.n, items))
    return out


__all__ = ["LatentExamples", "collapse_captions", "top_examples_many"]


def top_examples(pair, latent: int, store: PairedEmbeddings, n: int = 10, modality: str = "both",
                 batch_size: int = 4096, device: str = "cpu") -> dict[str, list[dict]]:
    """{modality: the ``n`` rows where ``latent`` is most active, each ``{row, activation, caption, meta,
    count}`` with identical captions merged (``count``: firing rows with that caption)} for ``image``,
    ``text`` or ``both`` (modalities the store lacks are left out)."""

    mods = MODALITIES if modality == "both" else (modality,)
    for m in mods:
        _check_modality(m)
    return {m: top_examples_many(pair, store, [latent], m, n=n, batch_size=batch_size, device=device)[0].rows
            for m in mods if store.has(m)}
