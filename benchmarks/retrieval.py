"""Latent retrieval (Recall@K ranks): the library's sparse scoring against a plain dense reference.

Setting of MS-COCO 5k (paper Table 1): Q image queries, G = 5 Q captions, each image's 5 captions
are its positives (the ``group`` protocol). Codes are random TopK codes (m latents, k active, power-
law latent frequencies as real SAE latents have); each caption shares ``--shared`` (default 4) of its
latents with its image's code so the ranks have structure without being trivial.

* sparse (``dualsae.evaluation.metrics.retrieval``): L2-normalised sparse codes; per chunk of queries the query
  codes are densified to [b, m] and the gallery's k active latents gather them
  (``embedding_bag``), O(G k) per query; the gallery stays [G, k].
* dense reference: the [Q, m] and [G, m] code matrices, scores = Q_chunk @ G^T, O(G m) per query.

Both feed the same pessimistic ranking. Printed: time of each, ratio, max abs score difference
(over the first two query chunks) and how many ranks differ.

    python benchmarks/retrieval.py [--queries 5000] [--gallery 25000] [--m 8192] [--k 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from dualsae.core.codes import SparseCodes
from dualsae.evaluation.metrics.retrieval import first_positive_ranks, normalize_codes, recall_summary, sparse_scores


def make_codes(q: int, g: int, m: int, k: int, seed: int, shared_latents: int) -> tuple[SparseCodes, SparseCodes]:
    gen = torch.Generator().manual_seed(seed)
    freq = 1.0 / torch.arange(1, m + 1, dtype=torch.float64) ** 0.7
    freq = freq[torch.randperm(m, generator=gen)]
    img_idx = torch.multinomial(freq.expand(q, m), k, replacement=False, generator=gen)
    per = g // q
    txt_idx = torch.multinomial(freq.expand(g, m), k, replacement=False, generator=gen)
    owner = torch.arange(g) // per
    half = shared_latents
    shared = img_idx[owner, :half]
    # keep the row's latents distinct: drop the caption's own latents that clash with the shared ones
    rest = []
    for r in range(g):
        own = txt_idx[r][~torch.isin(txt_idx[r], shared[r])][: k - half]
        rest.append(own)
    txt_idx = torch.cat([shared, torch.stack(rest)], dim=1)
    img = SparseCodes(torch.rand(q, k, generator=gen) + 0.1, img_idx, m)
    txt = SparseCodes(torch.rand(g, k, generator=gen) + 0.1, txt_idx, m)
    return img, txt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--gallery", type=int, default=25000)
    ap.add_argument("--m", type=int, default=8192)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--shared", type=int, default=4, help="latents a caption shares with its image")
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    q, g, m = args.queries, args.gallery, args.m
    if g % q:
        raise SystemExit("--gallery must be a multiple of --queries (captions per image)")
    img, txt = make_codes(q, g, m, args.k, args.seed, args.shared)
    qkeys = np.arange(q)
    gkeys = np.arange(g) // (g // q)
    print(f"image->text: {q:,} queries x {g:,} gallery, m={m:,}, k={args.k}, chunk {args.chunk}, {args.threads} thread(s)")

    t0 = time.perf_counter()
    qi, gt = normalize_codes(img), normalize_codes(txt)
    sl = lambda c, a, b: SparseCodes(c.values[a:b], c.indices[a:b], c.m)  # noqa: E731
    r_sparse = first_positive_ranks(lambda a, b: sparse_scores(sl(qi, a, b), gt), q, qkeys, gkeys, chunk=args.chunk)
    t_sparse = time.perf_counter() - t0

    t0 = time.perf_counter()
    qd = F.normalize(img.to_dense(), dim=1)  # [Q, m]
    gd = F.normalize(txt.to_dense(), dim=1)  # [G, m]
    r_dense = first_positive_ranks(lambda a, b: qd[a:b] @ gd.T, q, qkeys, gkeys, chunk=args.chunk)
    t_dense = time.perf_counter() - t0

    diff = 0.0
    for a in range(0, min(q, 2 * args.chunk), args.chunk):
        b = min(a + args.chunk, q)
        diff = max(diff, float((sparse_scores(sl(qi, a, b), gt) - qd[a:b] @ gd.T).abs().max()))
    rs, rd = recall_summary(r_sparse), recall_summary(r_dense)
    gallery_mb = gd.numel() * 4 / 2**20
    sparse_mb = (gt.values.numel() * 4 + gt.indices.numel() * 8) / 2**20
    print(f"  sparse (embedding_bag gather): {t_sparse:8.2f} s   gallery {sparse_mb:8.1f} MB   R@1/5/10 {rs['R@1']:.4f} {rs['R@5']:.4f} {rs['R@10']:.4f}")
    print(f"  dense reference (Q @ G^T):     {t_dense:8.2f} s   gallery {gallery_mb:8.1f} MB   R@1/5/10 {rd['R@1']:.4f} {rd['R@5']:.4f} {rd['R@10']:.4f}")
    print(f"  speed-up {t_dense / t_sparse:.1f}x, max |score diff| {diff:.2e}, ranks differing: {int((r_sparse != r_dense).sum())} of {q:,}")


if __name__ == "__main__":
    main()
