"""The coactivation correlation of paper eq. 5, streamed from sparse codes.

``C[i, j]`` is the Pearson correlation, over paired rows, of image latent i and text latent j. It is
streamed from sparse TopK codes (:class:`CoactivationStats`): per-latent sums and sums of squares,
and the cross-product matrix ``S[i, j] = sum_rows z_I,i * z_T,j`` accumulated by scattering the
``k_I x k_T`` active-pair products of every row into an ``[m_I, m_T]`` float64 matrix. Memory is
O(m_I m_T) whatever the number of rows; no dense ``[N, m]`` code matrix is ever built. Then
``C = (S/N - mu_i mu_j) / (sd_i sd_j)``. Latents that never fire (or fire with a constant value)
have ``sd = 0``: C is undefined there and they are *dead*, excluded from the assignment (eq. 6).

With ``same_index=True`` only the diagonal ``C[j, j]`` is kept (``S`` is then ``[m]``, plus the rows
on which both latents j fire): the report's same-index correlation and co-firing support, for
models whose full ``[m_I, m_T]`` matrix is not needed.

Sparse statistics (``sparse=True``, :mod:`dualsae.alignment.cofiring`): the same marginals, and ``S_ij``
only for pairs that co-fire (sorted pair keys, float64 sums, co-firing counts), so memory is
O(m_I + m_T + P) for P co-firing pairs instead of O(m_I m_T); every other pair has the rank-one
closed form c_ij = -mu_i mu_j / (sd_i sd_j) (:class:`dualsae.alignment.sparse_correlation.SparseCorrelation`).
Streaming a store or codes into these statistics (dense or sparse by size, tiles, torchrun ranks) is
:mod:`dualsae.alignment.coactivation`.

``correlation.safetensors`` (:func:`save_correlation` / :func:`load_correlation`) stores the live
block of C beside an aligned folder: format /1 dense, /2 sparse (:func:`load_sparse_correlation` reads both
without densifying).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dualsae.alignment.cofiring import CofiringSums, coalesce_codes, gather_ragged, reduce_entries
from dualsae.alignment.correlation_file import (  # re-exported: the file's readers and writer live there
    CORRELATION_FORMAT,
    load_correlation,
    load_sparse_correlation,
    load_stored_correlation,
    save_correlation,
)
from dualsae.alignment.sparse_correlation import SPARSE_CORRELATION_FORMAT, SparseCorrelation
from dualsae.core.codes import SparseCodes
from dualsae.core.errors import ConfigError, DataError

# Cross-product scatter is done in row chunks so the [rows, k_I, k_T] temporaries stay ~2M entries.
_PAIRS_PER_CHUNK = 2_000_000
_ENTRIES_PER_CHUNK = 1 << 23


@dataclass(frozen=True)
class CorrelationScales:
    """What eq. 5 needs of the marginals: C_ij = S_ij u_i u_j - a_i b_j on the live block.

    live_image [n_I], live_text [n_T]: sorted latent ids of the live latents; u_i [n_I], u_t [n_T]:
    1 / (sd sqrt(N)); a [n_I], b [n_T]: mu / sd (all float64, on the statistics' device)."""

    live_image: torch.Tensor
    live_text: torch.Tensor
    u_i: torch.Tensor
    u_t: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor

    def cpu(self) -> "CorrelationScales":
        return CorrelationScales(*(t.cpu() for t in (self.live_image, self.live_text, self.u_i, self.u_t, self.a, self.b)))


class CoactivationStats:
    """Streaming sufficient statistics of the coactivation correlation C (eq. 5).

    All state is float64 / int64 and additive over rows, so shards computed on different processes
    combine exactly with :meth:`merge` (or :meth:`all_reduce` under ``torch.distributed``).

    n:        paired rows seen
    sum_i, sumsq_i, fired_i: [m_I] sum of z_I,i, of z_I,i^2, and rows where z_I,i != 0
    sum_t, sumsq_t, fired_t: [m_T] same for text latents
    cross:    [m_I, m_T] S_ij = sum over rows of z_I,i z_T,j; with ``same_index`` only its diagonal
              [min(m_I, m_T)], and ``cofired`` [min(m_I, m_T)]: rows where both latents j fire;
              with ``sparse`` None, and ``pairs`` (:class:`CofiringSums`) holds S_ij of the co-firing pairs
    image_block: (lo, hi) with ``sparse``: only pairs of image latents in [lo, hi) are kept (one tile)
    marginals_of: statistics of the same rows whose n and marginals these share (and never add to), so a
              later tile of image latents accumulates only its pairs (:mod:`dualsae.alignment.pruning`)
    """

    def __init__(self, m_image: int, m_text: int, device: str | torch.device = "cpu", same_index: bool = False,
                 sparse: bool = False, image_block: tuple[int, int] | None = None,
                 marginals_of: "CoactivationStats | None" = None) -> None:
        self.m_image = int(m_image)
        self.m_text = int(m_text)
        self.same_index = bool(same_index)
        self.sparse = bool(sparse) and not self.same_index
        self.pairs: CofiringSums | None = None
        self.device = torch.device(device)
        f64 = dict(dtype=torch.float64, device=self.device)
        self.n = 0
        self.sum_i = torch.zeros(self.m_image, **f64)
        self.sumsq_i = torch.zeros(self.m_image, **f64)
        self.fired_i = torch.zeros(self.m_image, dtype=torch.long, device=self.device)
        self.sum_t = torch.zeros(self.m_text, **f64)
        self.sumsq_t = torch.zeros(self.m_text, **f64)
        self.fired_t = torch.zeros(self.m_text, dtype=torch.long, device=self.device)
        if self.same_index:
            m = min(self.m_image, self.m_text)
            self.cross = torch.zeros(m, **f64)
            self.cofired = torch.zeros(m, dtype=torch.long, device=self.device)
        elif self.sparse:
            self.cross = None
            self.pairs = CofiringSums(self.m_image, self.m_text, image_block=image_block)
        else:
            self.cross = torch.zeros(self.m_image, self.m_text, **f64)
        self._borrowed = marginals_of is not None
        if marginals_of is not None:
            if (marginals_of.m_image, marginals_of.m_text) != (self.m_image, self.m_text):
                raise ConfigError(f"marginals_of has m_image={marginals_of.m_image}, m_text={marginals_of.m_text}; "
                                  f"expected {self.m_image}, {self.m_text}")
            self.n = marginals_of.n
            for name in ("sum_i", "sumsq_i", "fired_i", "sum_t", "sumsq_t", "fired_t"):
                setattr(self, name, getattr(marginals_of, name).to(self.device))

    # ------------------------------------------------------------------ accumulation
    @torch.no_grad()
    def update(self, codes_i: SparseCodes, codes_t: SparseCodes) -> None:
        """Add one batch of paired codes. codes_i: [batch, k_I] (m_I latents), codes_t: [batch, k_T]."""
        if codes_i.batch != codes_t.batch:
            raise DataError(f"paired codes must have the same rows: image batch {codes_i.batch}, text batch {codes_t.batch}")
        if codes_i.m != self.m_image or codes_t.m != self.m_text:
            raise ConfigError(
                f"codes have m_image={codes_i.m}, m_text={codes_t.m}; these statistics were made for "
                f"m_image={self.m_image}, m_text={self.m_text}"
            )
        vi, ii = coalesce_codes(codes_i.to(self.device))
        vt, it = coalesce_codes(codes_t.to(self.device))
        if not self._borrowed:  # borrowed marginals are those of these very rows, already complete
            self.n += codes_i.batch
            self._add_marginals(vi, ii, self.sum_i, self.sumsq_i, self.fired_i)
            self._add_marginals(vt, it, self.sum_t, self.sumsq_t, self.fired_t)
        rows_per_chunk = max(1, _PAIRS_PER_CHUNK // max(1, vi.shape[1] * vt.shape[1]))
        if self.same_index:
            self._add_same_index(vi, ii, vt, it, rows_per_chunk)
            return
        if self.pairs is not None:
            for s in range(0, vi.shape[0], rows_per_chunk):
                self.pairs.add(vi[s : s + rows_per_chunk], ii[s : s + rows_per_chunk], vt[s : s + rows_per_chunk], it[s : s + rows_per_chunk])
            return
        # S_ij += z_I,i z_T,j over the k_I x k_T active pairs of each row: one flat scatter-add
        # into the [m_I * m_T] view (exact in float64; inactive entries add 0).
        flat_cross = self.cross.view(-1)
        for s in range(0, vi.shape[0], rows_per_chunk):
            a_v, a_i = vi[s : s + rows_per_chunk], ii[s : s + rows_per_chunk]
            b_v, b_i = vt[s : s + rows_per_chunk], it[s : s + rows_per_chunk]
            prod = (a_v.unsqueeze(2) * b_v.unsqueeze(1)).reshape(-1)
            flat = (a_i.unsqueeze(2) * self.m_text + b_i.unsqueeze(1)).reshape(-1)
            flat_cross.index_add_(0, flat, prod)

    def _add_same_index(self, vi: torch.Tensor, ii: torch.Tensor, vt: torch.Tensor, it: torch.Tensor, rows_per_chunk: int) -> None:
        """S_jj += z_I,j z_T,j and the co-firing count, from the entry pairs of a row with one latent."""
        for s in range(0, vi.shape[0], rows_per_chunk):
            a_v, a_i = vi[s : s + rows_per_chunk], ii[s : s + rows_per_chunk]
            b_v, b_i = vt[s : s + rows_per_chunk], it[s : s + rows_per_chunk]
            same = a_i.unsqueeze(2) == b_i.unsqueeze(1)  # [rows, k_I, k_T]
            prod = (a_v.unsqueeze(2) * b_v.unsqueeze(1))[same]
            lat = a_i.unsqueeze(2).expand(same.shape)[same]
            self.cross.index_add_(0, lat, prod)
            self.cofired.index_add_(0, lat, (prod != 0).long())

    @staticmethod
    def _add_marginals(v: torch.Tensor, i: torch.Tensor, s: torch.Tensor, sq: torch.Tensor, fired: torch.Tensor) -> None:
        fi, fv = i.reshape(-1), v.reshape(-1)
        s.index_add_(0, fi, fv)
        sq.index_add_(0, fi, fv * fv)
        fired.index_add_(0, fi, (fv != 0).long())

    def merge(self, other: "CoactivationStats") -> "CoactivationStats":
        """Add another shard's statistics into this one (in place); returns self."""
        if (other.m_image, other.m_text) != (self.m_image, self.m_text):
            raise ConfigError(
                f"cannot merge statistics of m_image={other.m_image}, m_text={other.m_text} into "
                f"m_image={self.m_image}, m_text={self.m_text}"
            )
        if other.same_index != self.same_index or other.sparse != self.sparse:
            raise ConfigError("cannot merge statistics of different kinds (same-index, dense, sparse)")
        if self._borrowed or other._borrowed:
            raise ConfigError("statistics that borrow another's marginals (one tile) cannot be merged; merge the owners")
        self.n += other.n
        for name in ("sum_i", "sumsq_i", "fired_i", "sum_t", "sumsq_t", "fired_t") + (("cofired",) if self.same_index else ()):
            getattr(self, name).add_(getattr(other, name).to(self.device))
        if self.pairs is not None:
            self.pairs.merge(other.pairs)
        elif self.cross is not None:
            self.cross.add_(other.cross.to(self.device))
        return self

    def add_tile(self, other: "CoactivationStats") -> "CoactivationStats":
        """Append the co-firing pairs of a later tile (the same rows, image latents of a higher block;
        its marginals are the same and ignored). Returns self."""
        keys, sums, counts = self.pairs.entries()
        k2, s2, c2 = other.pairs.entries()
        if len(keys) and len(k2) and int(k2[0]) <= int(keys[-1]):
            raise ConfigError("tiles must be added in increasing image-latent blocks")
        self.pairs.set_entries(torch.cat([keys, k2]), torch.cat([sums, s2]), torch.cat([counts, c2]))
        return self

    def all_reduce(self, group: Any = None) -> "CoactivationStats":
        """Sum the statistics over all processes of ``torch.distributed`` (no-op when not initialised)."""

        if self._borrowed:  # its marginals are another's tensors: summing them here would sum the owner's too
            raise ConfigError("statistics that borrow another's marginals (one tile) cannot be all-reduced; reduce the owner")
        if not (dist.is_available() and dist.is_initialized()):
            return self
        n = torch.tensor([float(self.n)], dtype=torch.float64, device=self.device)
        extra = (self.cofired,) if self.same_index else ((self.cross,) if self.cross is not None else ())
        for t in (n, self.sum_i, self.sumsq_i, self.fired_i, self.sum_t, self.sumsq_t, self.fired_t, *extra):
            dist.all_reduce(t, group=group)
        self.n = int(round(n.item()))
        if self.pairs is not None:
            self.pairs.set_entries(*reduce_entries(*(gather_ragged(t, group, self.device) for t in self.pairs.entries())))
        return self

    # ------------------------------------------------------------------ results
    def _moments(self, s: torch.Tensor, sq: torch.Tensor, fired: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = max(self.n, 1)
        mu = s / n
        ez2 = sq / n
        var = ez2 - mu * mu
        # Live: fired at least once and not constant. The relative tolerance absorbs the float64
        # cancellation of E[z^2] - mu^2 for a latent that fires with one value on every row.
        live = (fired > 0) & (var > 1e-12 * ez2)
        sd = var.clamp_min(0).sqrt()
        return mu, sd, live

    def scales(self) -> CorrelationScales:
        """The live latents and the factors that turn S_ij into c_ij (eq. 5): see :class:`CorrelationScales`."""
        mu_i, sd_i, live_i = self._moments(self.sum_i, self.sumsq_i, self.fired_i)
        mu_t, sd_t, live_t = self._moments(self.sum_t, self.sumsq_t, self.fired_t)
        li, lt = live_i.nonzero().flatten(), live_t.nonzero().flatten()
        root_n = float(self.n) ** 0.5
        return CorrelationScales(li, lt, 1.0 / (sd_i[li] * root_n), 1.0 / (sd_t[lt] * root_n),
                                 mu_i[li] / sd_i[li], mu_t[lt] / sd_t[lt])

    def live(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted indices of the live image latents [n_I] and live text latents [n_T]."""
        _, _, li = self._moments(self.sum_i, self.sumsq_i, self.fired_i)
        _, _, lt = self._moments(self.sum_t, self.sumsq_t, self.fired_t)
        return li.nonzero().flatten(), lt.nonzero().flatten()

    @torch.no_grad()
    def correlation(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The live block of C (eq. 5).

        Returns ``(C [n_I, n_T] float64, live_i [n_I], live_t [n_T])``: ``C[a, b]`` is the correlation
        of image latent ``live_i[a]`` with text latent ``live_t[b]``. Dead latents (sd = 0, C undefined)
        are left out rather than given a made-up value.
        """
        if self.same_index:
            raise ConfigError("these statistics hold only the same-index diagonal; use same_index_correlation()")
        if self.n < 2:
            raise DataError(f"the coactivation correlation needs at least 2 paired rows, found {self.n}")
        if self.pairs is not None:  # densify the sparse form (small m only; refused above DENSE_ENTRIES_LIMIT)
            sc = self.sparse_correlation()
            return sc.dense(), torch.from_numpy(sc.live_image), torch.from_numpy(sc.live_text)
        sc = self.scales()
        li, lt = sc.live_image, sc.live_text
        # C_ij = S_ij u_i u_j - a_i b_j: one copy of the live block, then in-place scalings and a
        # rank-1 update (no further [m_I, m_T] temporaries).
        c = self.cross.index_select(0, li)
        if len(lt) != self.m_text:
            c = c.index_select(1, lt)
        c.mul_(sc.u_i.unsqueeze(1))
        c.mul_(sc.u_t.unsqueeze(0))
        c.addr_(sc.a, sc.b, alpha=-1.0)
        return c, li, lt

    @torch.no_grad()
    def sparse_correlation(self, consume: bool = False) -> SparseCorrelation:
        """The live block of C (eq. 5) as co-firing entries + rank-one remainder, never densified.

        For dense statistics the co-firing entries are the non-zero S_ij. Values are computed as
        :meth:`correlation` computes them, so ``sparse_correlation().dense()`` equals ``correlation()[0]``.
        consume: build C in the co-firing run's own buffers (keys -> rows, sums -> values, counts) and drop
        the run: 28 bytes a pair at the peak instead of 20 + 28. These statistics cannot build C again.
        """
        if self.same_index:
            raise ConfigError("these statistics hold only the same-index diagonal; use same_index_correlation()")
        if self.n < 2:
            raise DataError(f"the coactivation correlation needs at least 2 paired rows, found {self.n}")
        scales = self.scales().cpu()
        li, lt, u_i, u_t, a, b = scales.live_image, scales.live_text, scales.u_i, scales.u_t, scales.a, scales.b
        if self.pairs is not None:
            keys, sums, counts = self.pairs.entries()
        else:
            flat = self.cross.cpu().view(-1)
            keys = flat.nonzero().flatten()
            sums, counts = flat[keys], torch.zeros(len(keys), dtype=torch.int32)
        pos_i = torch.full((self.m_image,), -1, dtype=torch.long)
        pos_i[li] = torch.arange(len(li))
        pos_t = torch.full((self.m_text,), -1, dtype=torch.long)
        pos_t[lt] = torch.arange(len(lt))
        # Filled in chunks into preallocated outputs (or the run's own buffers): peak memory is the run plus the
        # result (28 bytes a pair), or the result alone, not a dozen full-length temporaries.
        p = len(keys)
        in_place = consume and self.pairs is not None
        if in_place:  # each chunk is read before its (never later) output slots are written: filled <= s
            rows, values, cnt = keys.cpu(), sums.cpu(), counts.cpu()
            self.pairs = None
        else:
            rows, values, cnt = torch.empty(p, dtype=torch.long), torch.empty(p, dtype=torch.float64), torch.empty(p, dtype=torch.int32)
        cols = torch.empty(p, dtype=torch.long)
        filled = 0
        for s in range(0, p, _ENTRIES_PER_CHUNK):
            k = keys[s : s + _ENTRIES_PER_CHUNK]
            pi, pj = pos_i[k // self.m_text], pos_t[k % self.m_text]
            keep = (pi >= 0) & (pj >= 0)  # pairs of dead latents (constant values) are left out
            pi, pj = pi[keep], pj[keep]
            e = filled + len(pi)
            rows[filled:e], cols[filled:e], cnt[filled:e] = pi, pj, counts[s : s + _ENTRIES_PER_CHUNK][keep]
            values[filled:e] = sums[s : s + _ENTRIES_PER_CHUNK][keep] * u_i[pi] * u_t[pj] - a[pi] * b[pj]
            filled = e
        rows, cols, values, counts = rows[:filled], cols[:filled], values[:filled], cnt[:filled]
        return SparseCorrelation(li.numpy(), lt.numpy(), a.numpy(), b.numpy(), rows.numpy(), cols.numpy(),
                                 values.numpy(), counts.numpy())

    @torch.no_grad()
    def same_index_correlation(self) -> tuple[np.ndarray, np.ndarray]:
        """``C[j, j]`` (eq. 5 at the same index, as :meth:`correlation` computes it) for every j < min(m_I, m_T).

        Needs ``same_index=True``. Returns ``(support [m] int64: rows where both latents j fire,
        corr [m] float64: NaN where either latent is dead)``."""
        if not self.same_index:
            raise ConfigError("same_index_correlation needs statistics made with same_index=True")
        m = self.cross.shape[0]
        mu_i, sd_i, live_i = (t[:m] for t in self._moments(self.sum_i, self.sumsq_i, self.fired_i))
        mu_t, sd_t, live_t = (t[:m] for t in self._moments(self.sum_t, self.sumsq_t, self.fired_t))
        ok = live_i & live_t
        root_n = float(self.n) ** 0.5
        c = torch.full((m,), float("nan"), dtype=torch.float64, device=self.device)
        c[ok] = (self.cross[ok] * (1.0 / (sd_i[ok] * root_n))) * (1.0 / (sd_t[ok] * root_n)) - (mu_i[ok] / sd_i[ok]) * (mu_t[ok] / sd_t[ok])
        return self.cofired.cpu().numpy().astype(np.int64), c.cpu().numpy()


__all__ = ["CORRELATION_FORMAT", "SPARSE_CORRELATION_FORMAT", "CoactivationStats", "CorrelationScales", "load_correlation",
           "load_sparse_correlation", "load_stored_correlation", "save_correlation"]
