"""Feature directions of the App. E.2 generator: unit vectors in R^d with pairwise |cos| <= eps_max,
sampled in proposal rounds (each candidate accepted against every direction accepted so far), and the
text directions psi_i of shared concepts at a set cosine distance from their image directions phi_i."""

from __future__ import annotations

import math

import numpy as np

from dualsae.core.errors import ConfigError


# ---------------------------------------------------------------------- feature directions
def _unit(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm. v: [b, d]."""
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _accept(cands: np.ndarray, accepted: np.ndarray, eps: float) -> np.ndarray:
    """Which unit candidates [b, d] may join ``accepted`` [a, d] keeping every pairwise |cos| <= eps.

    A candidate must satisfy the bound against all accepted rows and against every *earlier*
    candidate of the block that itself passed that first test. Rejecting on conflict with such an
    earlier candidate (even if that one is rejected in turn) is conservative but keeps the test one
    matrix operation; the accepted rows are pairwise compatible either way. The block's own Gram
    matrix is formed only among the candidates that passed the first test. Returns [b] bool.
    """
    ok = np.ones(len(cands), dtype=bool)
    if len(accepted):
        ok = (np.abs(cands @ accepted.T) <= eps).all(axis=1)
    passed = np.flatnonzero(ok)
    if len(passed) > 1:
        c = cands[passed]
        clash = np.tril(np.abs(c @ c.T) > eps, k=-1).any(axis=1)
        ok[passed[clash]] = False
    return ok


MAX_BLOCK = 4096  # candidates per proposal round: bounds the memory and time of one round


STALL_ROUNDS = 10  # rounds in a row that accept nothing before the sampler gives up early


def _block_size(remaining: int, rate: float) -> int:
    """Propose enough candidates to finish at the last round's acceptance rate, with a margin."""
    want = 1.5 * remaining / max(rate, 1.0 / MAX_BLOCK) + 16
    return int(min(max(want, 64), MAX_BLOCK))


def _too_small(eps: float, got: int, count: int, what: str, d: int, rounds: int) -> ConfigError:
    return ConfigError(
        f"synthetic config field 'eps_max'={eps} is too small: found only {got} of {count} {what} in d={d} "
        f"with pairwise |cos| <= eps_max after {rounds} proposal rounds; raise eps_max, d or max_rounds, "
        f"or lower the concept counts"
    )


def sample_directions(
    count: int, d: int, eps: float, rng: np.random.Generator, existing: np.ndarray | None = None,
    max_rounds: int = 200, what: str = "directions",
) -> np.ndarray:
    """``count`` unit vectors [count, d] with pairwise |cos| <= eps among themselves and with the
    rows of ``existing`` [a, d] (unit). Vectorised rejection sampling; raises ConfigError when
    ``max_rounds`` proposal rounds (or STALL_ROUNDS rounds in a row that accept nothing) do not
    yield enough directions."""
    accepted = np.zeros((0, d)) if existing is None else np.asarray(existing, dtype=np.float64)
    n_existing = len(accepted)
    rate, stalled, rounds = 1.0, 0, 0
    while len(accepted) - n_existing < count:
        if rounds == max_rounds or stalled == STALL_ROUNDS:
            raise _too_small(eps, len(accepted) - n_existing, count, what, d, rounds)
        remaining = count - (len(accepted) - n_existing)
        block = _block_size(remaining, rate)
        cands = _unit(rng.standard_normal((block, d)))
        keep = np.flatnonzero(_accept(cands, accepted, eps))
        rate = len(keep) / block
        accepted = np.concatenate([accepted, cands[keep[:remaining]]])
        stalled = stalled + 1 if len(keep) == 0 else 0
        rounds += 1
    return accepted[n_existing:]


def _shared_text_directions(
    phi: np.ndarray, alpha: float, eps: float, rng: np.random.Generator, max_rounds: int
) -> np.ndarray:
    """psi_i = alpha phi_i + sqrt(1 - alpha^2) u_i, u_i unit and orthogonal to phi_i, so
    cos(phi_i, psi_i) = alpha exactly; u_i is redrawn until the psi_i satisfy the within-text
    bound. phi: [n_S, d] unit rows -> [n_S, d]."""
    n, d = phi.shape
    psi = np.zeros_like(phi)
    done = np.zeros(n, dtype=bool)
    c = math.sqrt(max(0.0, 1.0 - alpha * alpha))
    stalled, rounds = 0, 0
    while not done.all():
        if rounds == max_rounds or stalled == STALL_ROUNDS:
            raise _too_small(eps, int(done.sum()), n, f"shared text directions with cos(phi_i, psi_i)={alpha}", d, rounds)
        pending = np.flatnonzero(~done)
        g = rng.standard_normal((len(pending), d))
        p = phi[pending]
        g -= (g * p).sum(axis=1, keepdims=True) * p  # Gram-Schmidt against phi_i
        # Renormalising removes rounding drift; cos(phi_i, psi_i) stays alpha to ~1e-16.
        cand = _unit(alpha * p + c * _unit(g))
        ok = _accept(cand, psi[done], eps)
        psi[pending[ok]] = cand[ok]
        done[pending[ok]] = True
        stalled = stalled + 1 if not ok.any() else 0
        rounds += 1
    return psi


def max_abs_cos(rows: np.ndarray) -> float:
    """Largest |cos| between two distinct non-zero rows of [n, d] (0 if fewer than two)."""
    nz = rows[np.linalg.norm(rows, axis=1) > 0]
    if len(nz) < 2:
        return 0.0
    g = np.abs(_unit(nz) @ _unit(nz).T)
    np.fill_diagonal(g, 0.0)
    return float(g.max())
