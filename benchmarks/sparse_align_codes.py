"""Sparse alignment at research scale on synthetic TopK codes (issue 17): wall time and peak RSS of each
stage, each stage in its own process so its peak RSS is its own.

Codes: N rows, m latents per modality, k active per row. Planted structure: every row has a topic
(``topics`` blocks of m / topics latents); ``k - k_random`` of its image latents come from the topic's
block, the rest uniformly; the text side fires the planted partner ``perm[i]`` of each topic latent
(value = image value x U(0.5, 1.5)) and ``k_random`` uniform latents. No SAE is trained (that is
``benchmarks/align_scale.py``); this isolates eq. 5-7's cost at m = 65,536+.

Stages: ``stats`` (sparse statistics of eq. 5 -> correlation file /2), ``assign`` (certified sparse
eq. 6; also the rank-one check by lower envelope vs blocked scan), ``save`` (eq. 7 on two random
d x m SAEs, aligned folder written), ``heterogeneity`` (Fig. 2 from the sparse file).

    python benchmarks/sparse_align_codes.py --m 65536 --n 100000 --out /tmp/sa65k
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_s() -> float:
    """CPU seconds of this process (user + system): on a shared machine wall time mostly measures the others."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return round(r.ru_utime + r.ru_stime, 1)


def make_codes(n: int, m: int, k: int, k_random: int, topics: int, seed: int, batch: int):
    """Yields (image codes, text codes) batches; deterministic in ``seed``."""
    from dualsae.core.codes import SparseCodes

    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(m, generator=gen)
    block = m // topics
    for s in range(0, n, batch):
        b = min(batch, n - s)
        topic = torch.randint(0, topics, (b, 1), generator=gen)
        kt = k - k_random
        idx_i = torch.cat([topic * block + torch.randint(0, block, (b, kt), generator=gen), torch.randint(0, m, (b, k_random), generator=gen)], 1)
        val_i = torch.rand(b, k, generator=gen) + 0.1
        idx_t = torch.cat([perm[idx_i[:, :kt]], torch.randint(0, m, (b, k_random), generator=gen)], 1)
        val_t = torch.cat([val_i[:, :kt] * (0.5 + torch.rand(b, kt, generator=gen)), torch.rand(b, k_random, generator=gen) + 0.1], 1)
        yield SparseCodes(val_i, idx_i, m), SparseCodes(val_t, idx_t, m)


def stage_stats(a) -> dict:
    from dualsae.alignment.correlation import CoactivationStats
    from dualsae.alignment.sparse_correlation import save_sparse_correlation

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bounds = np.linspace(0, a.m, a.tiles + 1).round().astype(int)
    stats = None
    for t in range(a.tiles):
        part = CoactivationStats(a.m, a.m, sparse=True, image_block=(int(bounds[t]), int(bounds[t + 1])) if a.tiles > 1 else None)
        for ci, ct in make_codes(a.n, a.m, a.k, a.k_random, a.topics, a.seed, 4096):
            part.update(ci, ct)
        stats = part if stats is None else stats.add_tile(part)
    t_acc = time.perf_counter() - t0
    pairs = len(stats.pairs)
    sc = stats.sparse_correlation()
    save_sparse_correlation(out, sc, sc.live_text)
    return {"stage": "stats", "wall_s": round(time.perf_counter() - t0, 1), "accumulate_s": round(t_acc, 1), "peak_rss_gib": round(rss_gib(), 2), "cpu_s": cpu_s(),
            "cofiring_pairs": pairs, "run_bytes": stats.pairs.nbytes, "peak_pairs_at_merge": stats.pairs.peak_pairs,
            "live": list(sc.shape), "file_bytes": (out / "correlation.safetensors").stat().st_size, "tiles": a.tiles}


def stage_assign(a) -> dict:
    from dualsae.alignment.assignment import match_sparse
    from dualsae.alignment.certificate import blocked_rank_one_min, lower_envelope
    from dualsae.alignment.correlation import load_sparse_correlation

    out = Path(a.out)
    t0 = time.perf_counter()
    sc = load_sparse_correlation(out)
    t_load = time.perf_counter() - t0
    mt = match_sparse(sc)
    wall = time.perf_counter() - t0
    np.save(out / "matched_image.npy", mt.image)
    np.save(out / "matched_text.npy", mt.text)
    rep = {"stage": "assign", "wall_s": round(wall, 1), "load_s": round(t_load, 1), "peak_rss_gib": round(rss_gib(), 2), "cpu_s": cpu_s(),
           "total": mt.total, "matched": len(mt.image),
           **{k: mt.info[k] for k in ("candidates_initial", "candidates_final", "rounds", "relaxation_rounds",
                                      "relaxation_rounds_by_round", "round_solvers", "timing", "certificate")}}
    # The rank-one check alone at this size and at 4x: envelope vs blocked scan (same minimum).
    rng = np.random.default_rng(0)
    for size in (a.m, 4 * a.m):
        av, bv, u, v = (rng.standard_normal(size) for _ in range(4))
        t = time.perf_counter()
        env = u + lower_envelope(bv, v, av)
        t_env = time.perf_counter() - t
        if size <= a.blocked_max:
            t = time.perf_counter()
            blk = blocked_rank_one_min(av, bv, u, v, block=512)
            rep[f"rank_one_check_{size}"] = {"envelope_s": round(t_env, 3), "blocked_s": round(time.perf_counter() - t, 1),
                                             "max_abs_diff": float(np.abs(env - blk).max())}
        else:
            rep[f"rank_one_check_{size}"] = {"envelope_s": round(t_env, 3), "blocked_s": None}
    return rep


def stage_save(a) -> dict:
    from dualsae.alignment.assignment import Matching
    from dualsae.alignment.correlation import load_sparse_correlation
    from dualsae.alignment.permutation import build_permutation, permute_sae
    from dualsae.alignment.sparse_correlation import save_sparse_correlation
    from dualsae.models.aligned import ALIGNMENT_FORMAT, AlignedPair
    from dualsae.models.sae import SAE, SAEConfig

    out = Path(a.out)
    torch.manual_seed(0)
    sae_i, sae_t = SAE(SAEConfig(d=a.d, m=a.m, k=a.k)), SAE(SAEConfig(d=a.d, m=a.m, k=a.k))
    sc = load_sparse_correlation(out)
    image, text = np.load(out / "matched_image.npy"), np.load(out / "matched_text.npy")
    mt = Matching(image, text, sc.lookup(np.searchsorted(sc.live_image, image), np.searchsorted(sc.live_text, text)), sc.live_image, sc.live_text,
                  np.setdiff1d(sc.live_image, image), np.setdiff1d(sc.live_text, text), 0.0, "sparse")
    t0 = time.perf_counter()
    perm = build_permutation(mt, a.m, a.m)
    aligned = AlignedPair("aligned", sae_i, permute_sae(sae_t, perm), {"format": ALIGNMENT_FORMAT, "permutation": perm.tolist(),
                                                                       "matched": {"image": image.tolist(), "text": text.tolist()}})
    folder = out / "aligned"
    aligned.save(folder)
    save_sparse_correlation(folder, sc, perm[sc.live_text])
    return {"stage": "save", "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_gib": round(rss_gib(), 2), "cpu_s": cpu_s(),
            "folder_bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())}


def stage_heterogeneity(a) -> dict:
    from dualsae.evaluation.heterogeneity import heterogeneity_from_folder

    t0 = time.perf_counter()
    res, _ = heterogeneity_from_folder(Path(a.out) / "aligned", None, progress=False)
    return {"stage": "heterogeneity", "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_gib": round(rss_gib(), 2), "cpu_s": cpu_s(),
            "counts": [b["count"] for b in res.bins], "negative": res.negative_count}


STAGES = {"stats": stage_stats, "assign": stage_assign, "save": stage_save, "heterogeneity": stage_heterogeneity}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=65536)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--k-random", type=int, default=8)
    p.add_argument("--topics", type=int, default=256)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--tiles", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blocked-max", type=int, default=65536, help="largest size at which the blocked O(m^2) check is timed")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--stage", choices=list(STAGES), help=argparse.SUPPRESS)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if a.stage:
        print(json.dumps(STAGES[a.stage](a)))
        return
    for st in a.stages:  # one process per stage: its peak RSS is its own
        args = [x for x in sys.argv[1:] if x not in a.stages and x != "--stages"]
        res = subprocess.run([sys.executable, __file__, *args, "--stage", st], capture_output=True, text=True)
        if res.returncode:
            print(res.stderr, file=sys.stderr)
            sys.exit(res.returncode)
        print(res.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
