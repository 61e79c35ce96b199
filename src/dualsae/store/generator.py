"""Synthetic paired embeddings with known feature directions (paper eq. 1-2, App. E.2).

Generative model (eq. 1): a latent code z in R_+^n is shared by the pair, and

    x = Phi z + eps_I,    y = Psi z + eps_T,    eps ~ N(0, sigma_obs^2 I)

with Phi, Psi in R^{d x n} holding the unit feature directions phi_i, psi_i. Concepts come in three
contiguous index ranges:

    shared      [0, n_S)              phi_i and psi_i unit, cos(phi_i, psi_i) = alpha exactly
    image-only  [n_S, n_S + n_I)      psi_i = 0
    text-only   [n_S + n_I, n)        phi_i = 0

Within a modality, the non-zero directions have pairwise |cos| <= eps_max ("maximum pairwise
interference", App. E.2); they are drawn by vectorised rejection sampling. Each z_i is 0 with
probability s (eq. 2) and otherwise Exp(rate beta).

Ground truth is held as *row* matrices ``phi``/``psi`` of shape [n, d] (row i = direction of concept
i, a zero row for an absent one), the layout of the SAE's ``W_dec``.

Memory: z is never dense. Rows are generated in chunks of ``CHUNK_ROWS`` as a CSR matrix (about
(1 - s) n non-zeros per row) and, when writing, streamed into memory-mapped ``.npy`` files.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.sparse as sp
from safetensors.numpy import save_file

from dualsae.core.errors import ConfigError, DataError
from dualsae.core.progress import tqdm
from dualsae.files.atomic import atomic_path, write_json
from dualsae.files.jsonfiles import config_from_dict, read_json_object
from dualsae.files.tensorfiles import read_tensors
from dualsae.store.arrays import _madvise
from dualsae.store.feature_directions import _shared_text_directions, max_abs_cos, sample_directions
from dualsae.store.paired import write_store

SYNTH_FORMAT = "dualsae.synth/1"
GROUND_TRUTH_FILE = "ground_truth.safetensors"
SYNTH_FILE = "synth.json"
TRAIN_SPLIT, EVAL_SPLIT = "train", "test"
# Rows per generated chunk. The random stream of chunk c is seeded by (seed, 1, c), so the data do
# not depend on how the caller consumes the chunks (generate() and write_synthetic() agree), but
# changing this constant changes the data for a given seed.
CHUNK_ROWS = 4096
#: Chunks written between two releases of the output files' pages (64 x 4,096 rows x d 768 x 2 files: 1.6 GB).
RELEASE_EVERY = 64


@dataclass(frozen=True)
class SynthConfig:
    """Every parameter of the App. E.2 generator (defaults are the paper's).

    d: embedding dimension. n_shared / n_image / n_text: numbers of shared, image-only and
    text-only concepts (n = their sum). alpha: cos(phi_i, psi_i) of every shared concept (the
    paper's x-axis is the cosine distance 1 - alpha). eps_max: bound on |cos| between two feature
    directions of the same modality. sparsity: s = P(z_i = 0) (eq. 2). rate: beta of Exp(beta).
    sigma_obs: std of the Gaussian observation noise. n_train / n_eval: pairs in the train / test
    split. seed: seeds every random draw. max_rounds: proposal rounds the rejection sampler may use
    per direction set before it gives up (eps_max too small for d and n).
    """

    # Metadata ``help``: the text of each field's ``dualsae synth generate`` flag (commands/flags.py).
    alpha: float = field(default=0.5, metadata={"cli": False})  # --alpha / --distance, one of the two
    d: int = field(default=256, metadata={"help": "embedding dimension"})
    n_shared: int = field(default=1024, metadata={"help": "shared concepts"})
    n_image: int = field(default=512, metadata={"help": "image-only concepts"})
    n_text: int = field(default=512, metadata={"help": "text-only concepts"})
    eps_max: float = field(default=0.30, metadata={"help": "max |cos| between directions of one modality"})
    sparsity: float = field(default=0.99, metadata={"help": "s = P(z_i = 0)"})
    rate: float = field(default=1.0, metadata={"help": "rate beta of the Exp activations"})
    sigma_obs: float = field(default=0.05, metadata={"help": "observation noise std"})
    n_train: int = field(default=50_000, metadata={"help": "training pairs"})
    n_eval: int = field(default=10_000, metadata={"help": "evaluation pairs, split 'test'"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    max_rounds: int = field(default=200, metadata={"help": "rejection-sampling proposal rounds before giving up"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def bad(field: str, expected: str) -> ConfigError:
            return ConfigError(f"synthetic config field '{field}' must be {expected}, found {getattr(self, field)!r}")

        for name in ("d", "n_shared", "n_image", "n_text", "n_train", "n_eval", "seed", "max_rounds"):
            if not isinstance(getattr(self, name), (int, np.integer)) or isinstance(getattr(self, name), bool):
                raise bad(name, "an integer")
        if not (-1.0 <= self.alpha <= 1.0) or math.isnan(self.alpha):
            raise bad("alpha", "a cosine in [-1, 1]")
        if self.d < 1:
            raise bad("d", ">= 1")
        for name in ("n_shared", "n_image", "n_text"):
            if getattr(self, name) < 0:
                raise bad(name, ">= 0")
        if self.n_concepts < 1:
            raise ConfigError("synthetic config fields 'n_shared' + 'n_image' + 'n_text' must be >= 1, found 0")
        if not (0.0 < self.eps_max <= 1.0):
            raise bad("eps_max", "in (0, 1]")
        if not (0.0 <= self.sparsity < 1.0):
            raise bad("sparsity", "a probability in [0, 1)")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise bad("rate", "> 0")
        if not (self.sigma_obs >= 0 and math.isfinite(self.sigma_obs)):
            raise bad("sigma_obs", ">= 0")
        if self.n_train < 1:
            raise bad("n_train", ">= 1")
        if self.n_eval < 1:
            raise bad("n_eval", ">= 1")
        if self.seed < 0:
            raise bad("seed", ">= 0")
        if self.max_rounds < 1:
            raise bad("max_rounds", ">= 1")

    # ------------------------------------------------------------------ derived sizes
    @property
    def n_concepts(self) -> int:
        return self.n_shared + self.n_image + self.n_text

    @property
    def n_rows(self) -> int:
        return self.n_train + self.n_eval

    @property
    def shared(self) -> range:
        return range(0, self.n_shared)

    @property
    def image_only(self) -> range:
        return range(self.n_shared, self.n_shared + self.n_image)

    @property
    def text_only(self) -> range:
        return range(self.n_shared + self.n_image, self.n_concepts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "SynthConfig":
        return config_from_dict(cls, data, source, "synthetic config", DataError)


@dataclass
class SynthData:
    """One generated data set.

    phi, psi: [n, d] float64 ground-truth directions (row i = concept i; zero rows for absent ones).
    image, text: [N, d] float32 embeddings, N = n_train + n_eval; rows [0, n_train) are the train
    split, the rest the test split. z: [N, n] CSR float64 latent codes.
    """

    config: SynthConfig
    phi: np.ndarray
    psi: np.ndarray
    image: np.ndarray
    text: np.ndarray
    z: sp.csr_matrix


def feature_directions(config: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth (phi, psi), each [n, d] float64 with unit or zero rows (see module docstring).

    Drawn from the generator seeded by (seed, 0), independent of the latent codes' streams.
    """
    cfg = config
    rng = np.random.default_rng([cfg.seed, 0])
    n, d, eps = cfg.n_concepts, cfg.d, cfg.eps_max
    phi = np.zeros((n, d))
    psi = np.zeros((n, d))
    image_rows = sample_directions(cfg.n_shared + cfg.n_image, d, eps, rng, max_rounds=cfg.max_rounds, what="image directions")
    phi[: cfg.n_shared + cfg.n_image] = image_rows
    if cfg.n_shared:
        psi[cfg.shared.start : cfg.shared.stop] = _shared_text_directions(
            phi[: cfg.n_shared], cfg.alpha, eps, rng, cfg.max_rounds
        )
    if cfg.n_text:
        psi[cfg.text_only.start : cfg.text_only.stop] = sample_directions(
            cfg.n_text, d, eps, rng, existing=psi[: cfg.n_shared], max_rounds=cfg.max_rounds, what="text-only directions"
        )
    return phi, psi


# ---------------------------------------------------------------------- latent codes and embeddings
def _chunk(config: SynthConfig, phi: np.ndarray, psi: np.ndarray, index: int, rows: int
           ) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Chunk ``index`` of ``rows`` pairs: (z [rows, n] CSR, x [rows, d] float32, y [rows, d] float32)."""
    cfg = config
    rng = np.random.default_rng([cfg.seed, 1, index])
    n = cfg.n_concepts
    # Bernoulli(1 - s) support (eq. 2), then Exp(beta) magnitudes; numpy's scale is 1 / rate.
    active = rng.random((rows, n), dtype=np.float32) < np.float32(1.0 - cfg.sparsity)
    r, c = np.nonzero(active)
    del active
    vals = rng.exponential(1.0 / cfg.rate, size=len(r))
    z = sp.csr_matrix((vals, (r, c)), shape=(rows, n))
    x = np.asarray(z @ phi)
    y = np.asarray(z @ psi)
    if cfg.sigma_obs > 0:
        x += cfg.sigma_obs * rng.standard_normal((rows, cfg.d))
        y += cfg.sigma_obs * rng.standard_normal((rows, cfg.d))
    return z, x.astype(np.float32), y.astype(np.float32)


def iter_chunks(config: SynthConfig, phi: np.ndarray, psi: np.ndarray, progress: bool = False
                ) -> Iterator[tuple[int, sp.csr_matrix, np.ndarray, np.ndarray]]:
    """Yield (first_row, z, x, y) for consecutive chunks covering all n_train + n_eval rows."""
    starts = range(0, config.n_rows, CHUNK_ROWS)
    for index, start in enumerate(tqdm(starts, desc="synthetic pairs", unit="chunk", disable=None if progress else True)):
        rows = min(CHUNK_ROWS, config.n_rows - start)
        z, x, y = _chunk(config, phi, psi, index, rows)
        yield start, z, x, y


def generate(config: SynthConfig, progress: bool = False) -> SynthData:
    """Generate the whole data set in memory (embeddings dense float32, z sparse)."""
    phi, psi = feature_directions(config)
    zs, xs, ys = [], [], []
    for _, z, x, y in iter_chunks(config, phi, psi, progress):
        zs.append(z)
        xs.append(x)
        ys.append(y)
    return SynthData(config, phi, psi, np.concatenate(xs), np.concatenate(ys), sp.vstack(zs, format="csr"))


def _summary(config: SynthConfig, phi: np.ndarray, psi: np.ndarray, nnz: int) -> dict:
    shared = config.shared
    cos = (phi[shared.start : shared.stop] * psi[shared.start : shared.stop]).sum(axis=1)
    return {
        "max_abs_cos_image": max_abs_cos(phi),
        "max_abs_cos_text": max_abs_cos(psi),
        "cos_phi_psi_shared": [float(cos.min()), float(cos.max())] if len(cos) else None,
        "mean_active_concepts_per_row": nnz / config.n_rows,
    }


def write_synthetic(config: SynthConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Generate and write a store folder ``out_dir``:

    image.npy, text.npy [N, d] float32 (streamed chunk by chunk into memory-mapped temporary files,
    each renamed into place when complete); meta.jsonl with ``split`` train/test per row;
    ground_truth.safetensors with ``phi``, ``psi`` [n, d] float64; synth.json (config, concept
    ranges, split ranges, measured checks), written last so its presence marks a complete folder.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; expected an output folder for the synthetic store")
    out.mkdir(parents=True, exist_ok=True)
    # synth.json marks a complete folder: drop a stale one before anything else is rewritten.
    (out / SYNTH_FILE).unlink(missing_ok=True)
    phi, psi = feature_directions(config)
    shape = (config.n_rows, config.d)
    nnz = 0
    with atomic_path(out / "image.npy") as tmp_x, atomic_path(out / "text.npy") as tmp_y:
        mx = np.lib.format.open_memmap(tmp_x, mode="w+", dtype=np.float32, shape=shape)
        my = np.lib.format.open_memmap(tmp_y, mode="w+", dtype=np.float32, shape=shape)
        for start, z, x, y in iter_chunks(config, phi, psi, progress):
            mx[start : start + len(x)] = x
            my[start : start + len(y)] = y
            nnz += z.nnz
            if (start // CHUNK_ROWS + 1) % RELEASE_EVERY == 0:
                # Written pages count as resident until dropped: flush them and let them go, so a
                # 2.8M x 768 store (17 GB) is written in the memory of RELEASE_EVERY chunks.
                for mm in (mx, my):
                    mm.flush()
                    _madvise(mm, mmap.MADV_DONTNEED)
        mx.flush()
        my.flush()
        del mx, my
    meta = [{"split": TRAIN_SPLIT}] * config.n_train + [{"split": EVAL_SPLIT}] * config.n_eval
    write_store(out, None, None, meta)

    with atomic_path(out / GROUND_TRUTH_FILE) as tmp:
        # One metadata key only: safetensors writes metadata from a hash map, so with several keys
        # their order (and the file's bytes) would change from run to run.
        save_file({"phi": phi, "psi": psi}, str(tmp), metadata={"format": SYNTH_FORMAT})
    write_json(out / SYNTH_FILE, {
        "format": SYNTH_FORMAT,
        "config": config.to_dict(),
        "ground_truth": {"file": GROUND_TRUTH_FILE, "tensors": ["phi", "psi"], "layout": "[n, d], row i = direction of concept i"},
        "concepts": {  # half-open index ranges [start, stop) into the rows of phi / psi
            "shared": [config.shared.start, config.shared.stop],
            "image_only": [config.image_only.start, config.image_only.stop],
            "text_only": [config.text_only.start, config.text_only.stop],
        },
        "splits": {TRAIN_SPLIT: [0, config.n_train], EVAL_SPLIT: [config.n_train, config.n_rows]},
        "measured": _summary(config, phi, psi, nnz),
    })
    return out


# ---------------------------------------------------------------------- reading back
@dataclass
class GroundTruth:
    """Ground truth of a synthetic store. phi, psi: [n, d] float64 row matrices."""

    config: SynthConfig
    phi: np.ndarray
    psi: np.ndarray

    @property
    def shared(self) -> range:
        return self.config.shared

    def shared_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(phi_i, psi_i) of the shared concepts, each [n_S, d]."""
        s = self.shared
        return self.phi[s.start : s.stop], self.psi[s.start : s.stop]


def load_ground_truth(folder: str | Path) -> GroundTruth:
    """Read ``synth.json`` and ``ground_truth.safetensors`` written by :func:`write_synthetic`."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected a synthetic store written by 'dualsae synth generate'")
    meta_path = root / SYNTH_FILE
    raw = read_json_object(meta_path, "this folder is not a (complete) synthetic store from 'dualsae synth generate'")
    if not isinstance(raw.get("config"), dict):
        raise DataError(f"{meta_path}: expected a JSON object with field 'config'")
    if raw.get("format") != SYNTH_FORMAT:
        raise DataError(f"{meta_path}: field 'format' is {raw.get('format')!r}, expected {SYNTH_FORMAT!r}")
    try:
        config = SynthConfig.from_dict(raw["config"], source=str(meta_path))
    except (ConfigError, TypeError) as e:
        raise DataError(f"{meta_path}: field 'config' is invalid ({e})") from None
    gt_path = root / GROUND_TRUTH_FILE
    tensors = read_tensors(gt_path, DataError, "expected tensors 'phi' and 'psi' [n, d]", framework="numpy")
    want = (config.n_concepts, config.d)
    out = {}
    for name in ("phi", "psi"):
        if name not in tensors:
            raise DataError(f"{gt_path}: missing tensor '{name}'; found {sorted(tensors)}")
        if tuple(tensors[name].shape) != want:
            raise DataError(f"{gt_path}: tensor '{name}' has shape {list(tensors[name].shape)}, expected {list(want)} from {SYNTH_FILE}")
        out[name] = tensors[name].astype(np.float64)
    return GroundTruth(config, out["phi"], out["psi"])


__all__ = [
    "SynthConfig", "SynthData", "GroundTruth", "generate", "write_synthetic", "load_ground_truth",
    "feature_directions", "sample_directions", "max_abs_cos", "iter_chunks", "CHUNK_ROWS",
]
