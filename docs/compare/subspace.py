"""How much of each SAE's weight rows lies in the span of its training data, and the decoder / encoder
matchings of ``dualsae compare`` repeated on the rows projected onto that span (docs/compare.md).

A gradient step changes an encoder row only along the inputs (x - b_dec), and a decoder row only along
the residuals, so the part of a random initial row outside the data's principal subspace stays as it was
drawn (AdamW's weight decay of 1e-5 aside). On a store whose embeddings fill ~84 of 512 dimensions, that
random remainder dominates the cosine of two rows.

    PYTHONPATH=src python docs/compare/subspace.py ../shared/data/emoji image RUN_A:image RUN_B:image
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from dualsae.evaluation.feature_overlap import OverlapOptions, weight_matching
from dualsae.models.sae_spec import open_sae
from dualsae.store.paired import open_store


def main(store: str, modality: str, spec_a: str, spec_b: str) -> None:
    x = open_store(store).read(modality).double().numpy()
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    cum = np.cumsum(s**2) / np.sum(s**2)
    a, b = open_sae(spec_a).sae, open_sae(spec_b).sae
    print(f"{modality} rows of {store}: {x.shape[0]:,} x {x.shape[1]}; A = {spec_a}, B = {spec_b}")
    print("| variance kept | dims | weights | row norm^2 in span (A) | matched mean cos | >= 0.7 | >= 0.9 | random directions in these dims: mean, >= 0.7 |")
    print("|---|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for frac in (0.9, 0.99, 0.999, 1.0):
        r = x.shape[1] if frac == 1.0 else int(np.searchsorted(cum, frac)) + 1
        basis = torch.from_numpy(vt[:r].T.copy())
        rnd, _ = weight_matching(torch.randn(a.m, r, generator=g, dtype=torch.float64), torch.randn(b.m, r, generator=g, dtype=torch.float64),
                                 "random", OverlapOptions())
        for name, wa, wb in (("decoder", a.W_dec, b.W_dec), ("encoder", a.W_enc, b.W_enc)):
            pa, pb = wa.detach().double() @ basis, wb.detach().double() @ basis
            kept = float(((pa.norm(dim=1) / wa.detach().double().norm(dim=1)) ** 2).mean())
            m, _ = weight_matching(pa, pb, name, OverlapOptions())
            print(f"| {frac:g} | {r} | {name} | {kept:.3f} | {m.score.mean():.3f} | {m.count_ge(0.7):,} | {m.count_ge(0.9):,} | {rnd.score.mean():.3f}, {rnd.count_ge(0.7):,} |")


if __name__ == "__main__":
    main(*sys.argv[1:5])
