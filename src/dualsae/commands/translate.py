"""``dualsae translate`` and ``dualsae steer``: use an aligned pair on a store (:mod:`dualsae.use`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from dualsae.commands.common import check_finite_flag, data_arg, prepare_out_folder, read_embeddings_file, resolve_data
from dualsae.core.errors import ConfigError, DataError
from dualsae.evaluation.top_rows import top_examples
from dualsae.files.atomic import write_json
from dualsae.models.load import load_model
from dualsae.store.paired import open_store
from dualsae.use.steering import concept_share, latent_fires, steer
from dualsae.use.steering_sweep import CALIBRATION_ALPHAS, SWEEP_ALPHAS, TARGET_SHARE, modality_warning, strength_sweep, sweep_lines
from dualsae.use.translation import latents_for, nearest_rows, translate


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "translate", help="translate embeddings to the other modality and show their nearest rows there",
        description="Encode rows (or embeddings from a .npy file) with the source modality's SAE and decode "
        "with the target modality's SAE (an aligned pair shares latent indices, eq. 7). Prints, for each "
        "query, the nearest rows of the target modality to the translated vector next to the nearest rows "
        "to the raw source embedding (plain cross-modal retrieval); '*' marks a row whose caption equals "
        "the query's or is the query's own pair.",
    )
    t.add_argument("model", help="aligned folder (dualsae align) or shared-SAE run folder")
    data_arg(t)
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--rows", type=int, nargs="+", help="store rows to translate (absolute row numbers)")
    src.add_argument("--embeddings", help=".npy file of [q, d] source-modality embeddings to translate")
    t.add_argument("--source", choices=("text", "image"), default="text", help="modality of the queries (default: text)")
    t.add_argument("--split", default="all", help="rows of --data searched for neighbours (default: all)")
    t.add_argument("-n", type=int, default=5, help="neighbours per query (default: 5)")
    t.add_argument("--out", default=None, help="folder to also write translate.json into (default: print only)")
    t.set_defaults(func=run_translate)

    s = sub.add_parser(
        "steer", help="steer images along a latent's decoder direction and show how their neighbours move",
        description="x' = x + alpha * |x| * phi_J (phi_J: unit image decoder direction of latent J). For source "
        "images on which latent J is inactive, prints the nearest images before and after steering and the "
        "share of neighbours on which latent J fires (the concept), before -> after. The default strength "
        "(--alpha auto) is the smallest alpha at which half the neighbours of 32 steered rows hold the concept "
        "(dualsae.use.steering_sweep); --sweep prints that share and the cosine kept to the source over alphas. "
        "A latent matched in one modality only (or firing on no row of the other) is warned about.",
    )
    s.add_argument("model", help="aligned folder, or any run folder")
    data_arg(s)
    s.add_argument("--latent", type=int, required=True, help="latent index J (shared index of an aligned model)")
    s.add_argument("--alpha", type=_alpha_arg, default=None,
                   help="steering strength relative to each embedding's norm, or 'auto': the smallest alpha at which half "
                        "the neighbours of steered rows hold the concept (default: auto)")
    s.add_argument("--target-share", type=float, default=TARGET_SHARE,
                   help=f"--alpha auto: the share of the steered rows' neighbours that must hold the concept (default: {TARGET_SHARE})")
    s.add_argument("--sweep", action="store_true", help="also print the concept share and cosine to the source over alphas "
                   f"{', '.join(f'{a:g}' for a in SWEEP_ALPHAS)} and the auto alpha")
    s.add_argument("--rows", type=int, nargs="+", default=None, help="source images (absolute rows; default: --sources random rows where J is inactive)")
    s.add_argument("--sources", type=int, default=5, help="random source images when --rows is not given (default: 5)")
    s.add_argument("--seed", type=int, default=0, help="seed of the source draw (default: 0)")
    s.add_argument("--modality", choices=("image", "text"), default="image", help="modality steered and searched (default: image)")
    s.add_argument("--split", default="all", help="rows of --data used as sources and neighbours (default: all)")
    s.add_argument("-n", type=int, default=5, help="neighbours per source (default: 5)")
    s.add_argument("--out", default=None, help="folder to also write steer.json into (default: print only)")
    s.set_defaults(func=run_steer)


def _alpha_arg(text: str) -> float | None:
    """--alpha: a number, or 'auto' (None: chosen from the data)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', found {text!r}") from None


#: --alpha auto on a latent whose concept never reaches half the neighbours: the strength used instead.
FALLBACK_ALPHA = 4.0


def _caption(store, row: int) -> str:
    if store.meta is None:
        return ""
    return str(store.meta[row].get("caption", "") or "")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run_translate(args: argparse.Namespace) -> int:

    if args.n < 1:
        raise ConfigError(f"-n must be >= 1, found {args.n}")
    prepare_out_folder(args.out)
    target = "image" if args.source == "text" else "text"
    pair = load_model(args.model)
    data = resolve_data(args, args.model)
    store = open_store(data)
    store.require_model_width(pair, f"{args.model}'s")
    gallery = store.split(args.split)
    if args.embeddings:
        path = Path(args.embeddings)
        x = read_embeddings_file(path, pair.sae_for(args.source).d)

        queries = torch.from_numpy(x)
        labels = [f"{path.name}[{i}]" for i in range(len(x))]
        captions = ["" for _ in labels]
        own = [-1 for _ in labels]
    else:
        store.require(args.source, "translate --rows")
        bad = [r for r in args.rows if not 0 <= r < store.n_total]
        if bad:
            raise DataError(f"{data}: --rows {bad[0]} is out of range; the store has {store.n_total:,} rows")
        queries = store.read(args.source, np.array(args.rows, dtype=np.int64))  # unsplit store: positions are rows
        labels = [f"row {r}" for r in args.rows]
        captions = [_caption(store, r) for r in args.rows]
        own = list(args.rows)
    translated = translate(pair, queries, source=args.source, target=target)
    t_s, t_r = nearest_rows(translated, gallery, target, n=args.n, exclude=None)
    r_s, r_r = nearest_rows(queries, gallery, target, n=args.n, exclude=None)
    print(f"{args.model}: {args.source} -> {target}, neighbours among {gallery.n:,} {target} rows of {data} [{args.split}]")
    doc = {"model": str(args.model), "data": str(data), "source": args.source, "target": target, "split": args.split, "queries": []}
    hits = {"translated": 0, "raw": 0}
    for q, (label, cap) in enumerate(zip(labels, captions)):
        print(f"\n{label}  {cap!r}" if cap else f"\n{label}")
        print(f"  {'translated (encode ' + args.source + ', decode ' + target + ')':<52} | raw {args.source} embedding")
        entry = {"query": label, "caption": cap, "translated": [], "raw": []}
        for k in range(t_r.shape[1]):
            cells = []
            for name, sc, rr in (("translated", t_s, t_r), ("raw", r_s, r_r)):
                row = int(rr[q, k])
                c = _caption(store, row)
                hit = row == own[q] or (bool(cap) and c == cap)
                hits[name] += hit and k == 0
                entry[name].append({"row": row, "cosine": round(float(sc[q, k]), 6), "caption": c, "hit": hit})
                cells.append(f"{float(sc[q, k]):6.3f} {'*' if hit else ' '} row {row:>6} {_short(c, 28):<28}")
            print(f"  {cells[0]:<52} | {cells[1]}")
        doc["queries"].append(entry)
    if not args.embeddings:
        nq = len(labels)
        print(f"\ntop-1 neighbour is the query's pair or has its caption: translated {hits['translated']}/{nq}, raw {hits['raw']}/{nq}")
        doc["top1_hits"] = hits
    if args.out:
        out = Path(args.out)
        write_json(out / "translate.json", doc)
        print(f"-> {out / 'translate.json'}")
    return 0


def run_steer(args: argparse.Namespace) -> int:

    if args.n < 1 or args.sources < 1:
        raise ConfigError(f"-n and --sources must be >= 1, found {args.n} and {args.sources}")
    if not 0 < args.target_share <= 1:
        raise ConfigError(f"--target-share must be in (0, 1], found {args.target_share}")
    if args.alpha is not None:  # None: auto
        check_finite_flag(args.alpha, "--alpha")
    prepare_out_folder(args.out)
    pair = load_model(args.model)
    data = resolve_data(args, args.model)
    store = open_store(data)
    store.require_model_width(pair, f"{args.model}'s")
    gallery = store.split(args.split)
    mod = args.modality
    gallery.require(mod, "steer")
    if not 0 <= args.latent < pair.sae_for(mod).m:
        raise ConfigError(f"--latent must be in [0, {pair.sae_for(mod).m}) for the {mod} SAE, found {args.latent}")
    codes = latents_for(pair, gallery, mod)
    # The concept: rows of the gallery on which latent J fires in the steered modality.
    fires = latent_fires(codes, args.latent)  # [gallery.n], by position
    other = "text" if mod == "image" else "image"
    fired_other = int(latent_fires(latents_for(pair, gallery, other), args.latent).sum()) if gallery.has(other) and pair.sae_for(other) is not None else None
    warning = modality_warning(pair, args.latent, mod, fired_other, int(fires.sum()))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    sweep = None
    if (args.alpha is None or args.sweep) and fires.any() and not fires.all():
        sweep = strength_sweep(pair, gallery, args.latent, mod, alphas=SWEEP_ALPHAS if args.sweep else (), seed=args.seed,
                               n=args.n, codes=codes, target=args.target_share)
    alpha = args.alpha
    if alpha is None:
        alpha = sweep.auto if sweep is not None and sweep.auto is not None else FALLBACK_ALPHA
    concept = np.zeros(store.n_total, dtype=bool)  # by absolute row, as nearest_rows returns them
    concept[gallery.rows_of(np.flatnonzero(fires))] = True
    n_concept = int(concept.sum())
    if args.rows:
        pos = gallery.positions_of(args.rows, "--rows")
    else:
        candidates = np.flatnonzero(~fires)
        rng = np.random.default_rng(args.seed)
        pos = np.sort(rng.choice(candidates, size=min(args.sources, len(candidates)), replace=False))
    if len(pos) == 0:
        raise DataError(f"{data}: latent {args.latent} fires on every {mod} row of split {args.split!r}; no source without the concept")
    src_rows = gallery.rows_of(pos)
    x = gallery.read(mod, pos)
    steered = steer(pair, x, args.latent, alpha, mod)
    b_s, b_r = nearest_rows(x, gallery, mod, n=args.n, exclude=src_rows)
    a_s, a_r = nearest_rows(steered, gallery, mod, n=args.n, exclude=src_rows)
    share_b, share_a = concept_share(b_r, concept), concept_share(a_r, concept)

    top = top_examples(pair, args.latent, gallery, n=3, modality=mod)[mod]
    print(f"{args.model}: latent {args.latent} ({mod}) fires on {n_concept:,} of {gallery.n:,} rows of {data} [{args.split}]")
    print("  concept (top rows): " + "; ".join(repr(_short(r["caption"] or "", 40)) for r in top))
    if args.alpha is None:
        if sweep is None:
            how = f"auto: the latent fires on {'no' if not fires.any() else 'every'} row, nothing to calibrate on; fallback {FALLBACK_ALPHA:g}"
        elif sweep.auto is None:
            how = f"auto found no alpha up to {CALIBRATION_ALPHAS[-1]:g} reaching half the neighbours; fallback {FALLBACK_ALPHA:g}"
        else:
            how = f"auto: {args.target_share:.0%} of the neighbours of {len(sweep.sources)} steered rows hold the concept"
        print(f"  alpha {alpha:.3g} ({how})")
    if sweep is not None and args.sweep:
        print("  alpha sweep (concept share of the neighbours, mean cosine of steered to source, share of steered rows on which the SAE fires J):")
        for line in sweep_lines(sweep, "    "):
            print(line)
    print(f"  steering x' = x + {alpha:.3g} |x| phi_{args.latent}; '+' marks a neighbour on which latent {args.latent} fires")
    doc = {"model": str(args.model), "data": str(data), "latent": args.latent, "alpha": alpha, "alpha_given": args.alpha,
           "modality": mod, "split": args.split, "concept_rows": n_concept, "warning": warning,
           "sweep": sweep.to_json() if sweep is not None else None, "sources": []}
    for q, row in enumerate(src_rows.tolist()):
        before = [int(r) for r in b_r[q]]
        after = [int(r) for r in a_r[q]]
        sb, sa = share_b.per_source[q], share_a.per_source[q]
        print(f"\nsource row {row}  {_caption(store, row)!r}   concept share of neighbours {sb:.2f} -> {sa:.2f}")
        print(f"  {'before':<46} | after")
        for k in range(len(before)):
            cells = [f"{float(sc[q, k]):6.3f} {'+' if concept[rr] else ' '} row {rr:>6} {_short(_caption(store, rr), 26):<26}"
                     for sc, rr in ((b_s, before[k]), (a_s, after[k]))]
            print(f"  {cells[0]:<46} | {cells[1]}")
        doc["sources"].append({"row": row, "before": before, "after": after, "share_before": float(sb), "share_after": float(sa)})
    # The mean over sources of each source's share (the report's hit rate is the share of all neighbours).
    doc["mean_share_before"] = float(np.mean(share_b.per_source))
    doc["mean_share_after"] = float(np.mean(share_a.per_source))
    print(f"\nmean concept share of the {args.n} nearest {mod} rows: {doc['mean_share_before']:.2f} before -> "
          f"{doc['mean_share_after']:.2f} after steering ({len(src_rows)} sources)")
    if args.out:
        out = Path(args.out)
        write_json(out / "steer.json", doc)
        print(f"-> {out / 'steer.json'}")
    return 0
