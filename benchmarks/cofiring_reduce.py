"""Co-firing sums of eq. 5 (issue 17): the chunk reduction by sparse matrix products (the library's
``CofiringSums``) against the sort-and-unique reduction of every k_I x k_T product it replaced, side by
side on the same codes, interleaved, in one process.

Reference (``ProductsReference`` below): per batch, form the active-pair products and their keys
``i * m + j`` (24 bytes each), buffer them, and reduce by ``torch.unique`` + ``index_add_`` before the
same binary-search merge into the run. Library: buffer the codes, reduce each chunk by two scipy CSR
products (sums and counts). Both must give bit-identical keys and counts and sums equal to 1e-12
relative (only the float64 summation order differs); the script checks it.

Codes: power-law latent frequencies, half of each text code the permuted image code (benchmarks/correlation.py),
and optionally uniform random codes (``--uniform``: every pair about equally likely, the most distinct pairs).

    python benchmarks/cofiring_reduce.py [--n 100000] [--m 16384] [--k 32] [--repeats 2] [--uniform]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from correlation import make_codes

from dualsae.alignment.cofiring import CofiringSums, coalesce_codes
from dualsae.core.codes import SparseCodes


class ProductsReference(CofiringSums):
    """The previous accumulation: every product buffered, reduced by sort + unique at a flush."""

    def add(self, vi, ii, vt, it) -> None:  # noqa: ANN001 - same signature as the library's
        both = (vi != 0).unsqueeze(2) & (vt != 0).unsqueeze(1)
        key = (ii.unsqueeze(2) * self.m_text + it.unsqueeze(1))[both]
        self._buf.append((key, (vi.unsqueeze(2) * vt.unsqueeze(1))[both], torch.ones(len(key), dtype=torch.int32)))
        self._buffered += len(key)
        if self._buffered >= max(self.buffer_pairs, len(self._keys) // 4):
            self._flush()


def uniform_codes(n: int, m: int, k: int, batch: int, seed: int) -> list[tuple[SparseCodes, SparseCodes]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, n, batch):
        b = min(batch, n - s)
        idx = [torch.rand(b, m, generator=gen).topk(k, dim=1).indices for _ in range(2)]
        out.append(tuple(SparseCodes(torch.rand(b, k, generator=gen) + 0.1, i, m) for i in idx))
    return out


def run(cls: type[CofiringSums], batches, m: int) -> tuple[float, CofiringSums]:
    acc = cls(m, m)
    t = time.perf_counter()
    for ci, ct in batches:
        vi, ii = coalesce_codes(ci)
        vt, it = coalesce_codes(ct)
        acc.add(vi, ii, vt, it)
    acc.entries()
    return time.perf_counter() - t, acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--m", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--uniform", action="store_true")
    a = p.parse_args()
    batches = (uniform_codes if a.uniform else make_codes)(a.n, a.m, a.k, a.batch, seed=0)
    print(f"codes: N {a.n:,}, m {a.m:,}, k {a.k}, {'uniform' if a.uniform else 'power-law + paired'}; torch threads {torch.get_num_threads()}")
    times: dict[str, list[float]] = {"reference": [], "library": []}
    for rep in range(a.repeats):
        for name, cls in (("reference", ProductsReference), ("library", CofiringSums)):
            dt, acc = run(cls, batches, a.m)
            times[name].append(dt)
            if name == "reference":
                ref = acc.entries()
            else:
                k, s, c = acc.entries()
                assert torch.equal(k, ref[0]) and torch.equal(c, ref[2]), "keys / counts differ"
                torch.testing.assert_close(s, ref[1], rtol=1e-12, atol=0)
            print(f"  repeat {rep}: {name:9s} {dt:7.2f} s  ({len(acc):,} co-firing pairs)")
    best = {k: min(v) for k, v in times.items()}
    print(f"best of {a.repeats}: reference {best['reference']:.2f} s, library {best['library']:.2f} s, "
          f"ratio {best['reference'] / best['library']:.1f}x; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
