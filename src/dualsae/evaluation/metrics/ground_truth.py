"""The five ground-truth metrics of the synthetic experiments (paper Sec. 6.1, App. E.3).

For any :class:`~dualsae.models.pair.SAEPair`: image quantities go through the pair's image encoder and
decoder, text quantities through its text ones (one SAE for shared methods, two for specific ones,
two with the text latents permuted into the image index space for an aligned pair). The SAE is
applied exactly as it is used, biases included.

    (i)   reconstruction error   1/2 E[||x - x~||^2 + ||y - y~||^2]                   (eval split)
    (ii)  feature recovery error 1/(2 n_S) sum_i ||phi_i - SAE_I(phi_i)||^2 + ||psi_i - SAE_T(psi_i)||^2
    (iii) alignment error        1 - E[cos(z_I(x), z_T(y))]                           (eval split)
    (iv)  feature alignment err. 1 - 1/n_S sum_i cos(z_I(phi_i), z_T(psi_i))
    (v)   collapse rate          1/n_S sum_i 1[argmax_j cos(w_j, phi_i) = argmax_j cos(w_j, psi_i)]

Sums run over the shared concepts i in [0, n_S). Cosines of latent codes are computed on the sparse
codes in the pair's index space; the cosine is defined as 0 when either code is all-zero (no
latent fired), so an input that activates nothing counts as not aligned.

Collapse (v) is defined for one decoder W. For a pair of separate SAEs it is 0 by construction (no
single column can serve both modalities); beside it ``same_index_rate`` reports the fraction of
shared concepts whose best-matching image decoder column and best-matching text decoder column have
the same index in the pair's index space. It equals the collapse rate for a shared SAE and measures
index agreement after post-hoc alignment (eq. 7) for a specific pair.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dualsae.core.codes import SparseCodes
from dualsae.core.errors import DataError
from dualsae.core.losses import sparse_dot
from dualsae.core.modalities import MODALITIES
from dualsae.models.pair import SAEPair
from dualsae.store.generator import EVAL_SPLIT, GroundTruth, load_ground_truth
from dualsae.store.paired import PairedEmbeddings

METRIC_KEYS = (
    "reconstruction_error",
    "feature_recovery_error",
    "alignment_error",
    "feature_alignment_error",
    "collapse_rate",
    "same_index_rate",
)


def sparse_cosine(a: SparseCodes, b: SparseCodes) -> torch.Tensor:
    """Row-wise cosine of two sparse code batches in one index space -> [batch].

    Non-zero entries of a row must have distinct indices (true for TopK / BatchTopK / ReLU codes).
    Rows where either code is all-zero get cosine 0.
    """
    dot = sparse_dot(a, b).double()
    norm = a.values.double().pow(2).sum(1).sqrt() * b.values.double().pow(2).sum(1).sqrt()
    return torch.where(norm > 0, dot / norm.clamp_min(1e-300), torch.zeros_like(dot))


def _device(pair: SAEPair) -> torch.device:
    return pair.sae_for("image").W_dec.device


def _batches(x: np.ndarray | torch.Tensor, batch_size: int, device: torch.device):
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size].to(device=device, dtype=torch.float32)


def _check_dims(pair: SAEPair, d: int, source: str) -> None:
    for mod in MODALITIES:
        sae_d = pair.sae_for(mod).d
        if sae_d != d:
            raise DataError(f"{source}: embeddings have dimension {d}, the {mod} SAE expects {sae_d}")


# ---------------------------------------------------------------------- (i) and (iii): eval pairs
@torch.no_grad()
def pair_metrics(pair: SAEPair, store: PairedEmbeddings, batch_size: int = 4096) -> tuple[float, float]:
    """(reconstruction error (i), alignment error (iii)) over all rows of ``store`` (one pass)."""
    store.require_pairs("the synthetic reconstruction/alignment metrics")
    _check_dims(pair, store.d, str(store.root or "store"))
    device = _device(pair)
    sq_err = 0.0
    cos_sum = 0.0
    for start in range(0, store.n, batch_size):
        pos = np.arange(start, min(start + batch_size, store.n))
        x = store.read("image", pos).to(device)
        y = store.read("text", pos).to(device)
        zx = pair.encode("image", x)
        zy = pair.encode("text", y)
        sq_err += float((x - pair.decode("image", zx)).double().pow(2).sum())
        sq_err += float((y - pair.decode("text", zy)).double().pow(2).sum())
        cos_sum += float(sparse_cosine(zx, zy).sum())
    n = max(store.n, 1)
    return sq_err / (2 * n), 1.0 - cos_sum / n


def reconstruction_error(pair: SAEPair, store: PairedEmbeddings, batch_size: int = 4096) -> float:
    """(i) 1/2 E[||x - x~||^2 + ||y - y~||^2] over the rows of ``store`` (pass the eval split)."""
    return pair_metrics(pair, store, batch_size)[0]


def alignment_error(pair: SAEPair, store: PairedEmbeddings, batch_size: int = 4096) -> float:
    """(iii) 1 - E[cos(z_I(x), z_T(y))] over the rows of ``store`` (pass the eval split)."""
    return pair_metrics(pair, store, batch_size)[1]


# ---------------------------------------------------------------------- (ii), (iv), (v): ground truth
@torch.no_grad()
def feature_metrics(pair: SAEPair, phi: np.ndarray, psi: np.ndarray, batch_size: int = 4096) -> tuple[float, float]:
    """(feature recovery error (ii), feature alignment error (iv)).

    phi, psi: [n_S, d] directions of the shared concepts (row i of each is one concept), used as
    SAE inputs.
    """
    if len(phi) != len(psi) or len(phi) == 0:
        raise DataError(f"feature metrics need the same positive number of phi and psi rows, found {len(phi)} and {len(psi)}")
    _check_dims(pair, phi.shape[1], "ground truth")
    device = _device(pair)
    sq_err = 0.0
    cos_sum = 0.0
    for p, q in zip(_batches(phi, batch_size, device), _batches(psi, batch_size, device)):
        zp = pair.encode("image", p)
        zq = pair.encode("text", q)
        sq_err += float((p - pair.decode("image", zp)).double().pow(2).sum())
        sq_err += float((q - pair.decode("text", zq)).double().pow(2).sum())
        cos_sum += float(sparse_cosine(zp, zq).sum())
    n = len(phi)
    return sq_err / (2 * n), 1.0 - cos_sum / n


def feature_recovery_error(pair: SAEPair, phi: np.ndarray, psi: np.ndarray) -> float:
    """(ii) 1/(2 n_S) sum_i ||phi_i - SAE_I(phi_i)||^2 + ||psi_i - SAE_T(psi_i)||^2."""
    return feature_metrics(pair, phi, psi)[0]


def feature_alignment_error(pair: SAEPair, phi: np.ndarray, psi: np.ndarray) -> float:
    """(iv) 1 - 1/n_S sum_i cos(z_I(phi_i), z_T(psi_i))."""
    return feature_metrics(pair, phi, psi)[1]


@torch.no_grad()
def best_matching_column(columns: torch.Tensor, features: np.ndarray | torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """argmax_j cos(w_j, f_i) for each feature row. columns: [m, d] (row j = w_j), features: [n, d] -> [n] long.

    A zero column has cosine 0 with everything. Ties go to the lowest index.
    """
    w = columns.double()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)
    out = []
    for f in _batches(features, batch_size, w.device):
        f = f.double()
        f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-300)
        out.append((f @ w.T).argmax(dim=1))
    return torch.cat(out)


def collapse_metrics(pair: SAEPair, phi: np.ndarray, psi: np.ndarray) -> tuple[float, float]:
    """(collapse rate (v), same_index_rate); see the module docstring."""
    best_i = best_matching_column(pair.decoder_columns("image"), phi)
    best_t = best_matching_column(pair.decoder_columns("text"), psi)
    same = float((best_i == best_t).double().mean())
    return (same if pair.shared else 0.0), same


# ---------------------------------------------------------------------- everything
def synthetic_metrics(
    pair: SAEPair, store: PairedEmbeddings, truth: GroundTruth, split: str = EVAL_SPLIT, batch_size: int = 4096
) -> dict[str, float]:
    """All five App. E.3 metrics plus ``same_index_rate`` (keys: ``METRIC_KEYS``).

    store: the synthetic store (its ``split`` rows are used for (i) and (iii)); truth: its ground truth.
    """
    phi, psi = truth.shared_pairs()
    recon, align = pair_metrics(pair, store.split(split), batch_size)
    recovery, feat_align = feature_metrics(pair, phi, psi, batch_size)
    collapse, same = collapse_metrics(pair, phi, psi)
    return {
        "reconstruction_error": recon,
        "feature_recovery_error": recovery,
        "alignment_error": align,
        "feature_alignment_error": feat_align,
        "collapse_rate": collapse,
        "same_index_rate": same,
    }


def evaluate_synthetic(pair: SAEPair, data_dir: str | Path, split: str = EVAL_SPLIT, batch_size: int = 4096) -> dict[str, float]:
    """:func:`synthetic_metrics` on a folder written by :func:`dualsae.store.generator.write_synthetic`."""
    truth = load_ground_truth(data_dir)
    store = PairedEmbeddings.open(data_dir)
    return synthetic_metrics(pair, store, truth, split, batch_size)


__all__ = [
    "METRIC_KEYS", "sparse_cosine", "pair_metrics", "reconstruction_error", "alignment_error",
    "feature_metrics", "feature_recovery_error", "feature_alignment_error", "best_matching_column",
    "collapse_metrics", "synthetic_metrics", "evaluate_synthetic",
]
