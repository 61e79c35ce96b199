"""dictionary_learning folders (``ae.pt`` + ``config.json``, as its ``trainSAE`` writes them per trainer).

``config.json``'s ``trainer.dict_class`` names the model; ``ae.pt`` is its pickled state dict, read
only with ``torch.load(weights_only=True)`` (tensors, never code). The classes and their maps
(dictionary_learning 0.1.0):

* ``AutoEncoder``: ``encoder.weight`` [m, d], ``encoder.bias``, ``decoder.weight`` [d, m], ``bias`` [d];
  ``relu(encoder(x - bias))``, decode ``decoder(z) + bias``;
* ``AutoEncoderTopK``: ``encoder.*``, ``decoder.weight`` [d, m], ``b_dec``, ``k``, ``threshold``; its
  ``encode`` (default ``use_threshold=False``) keeps the k largest of ``relu(encoder(x - b_dec))``;
* ``BatchTopKSAE``: as TopK, its ``encode`` (default ``use_threshold=True``) keeps the values above the
  scalar ``threshold``;
* ``JumpReluAutoEncoder``: ``W_enc`` [d, m], ``b_enc``, ``W_dec`` [m, d], ``b_dec``, ``threshold`` [m];
  ``relu(h * [h > threshold])`` with ``h = x W_enc + b_enc`` (no ``b_dec`` subtracted).
"""

from __future__ import annotations

from pathlib import Path

from dualsae.core.errors import CheckpointError
from dualsae.models.formats.reading import (
    build_sae,
    check_no_extra,
    config_value,
    finite_scalar,
    read_library_config,
    read_pickled_state,
    tensor,
)
from dualsae.models.sae import SAE

CFG_FILE = "config.json"
WEIGHTS_FILE = "ae.pt"
FILES = (CFG_FILE, WEIGHTS_FILE)
CLASSES = ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder")


def read_dictionary_learning(folder: Path) -> SAE:
    cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    raw = read_library_config(cfg_path, "dictionary_learning")
    trainer = raw.get("trainer")
    if not isinstance(trainer, dict):
        raise CheckpointError(f"{cfg_path}: expected field 'trainer' (an object with dict_class, activation_dim, dict_size)")
    cls = config_value(trainer, "dict_class", cfg_path, str)
    if cls not in CLASSES:
        raise CheckpointError(f"{cfg_path}: field 'trainer.dict_class' is {cls!r}; dualsae reads {', '.join(CLASSES)}")
    d = config_value(trainer, "activation_dim", cfg_path, int)
    m = config_value(trainer, "dict_size", cfg_path, int)
    w = read_pickled_state(w_path, "dictionary_learning")
    why = f"not part of a dictionary_learning {cls}"
    if cls == "JumpReluAutoEncoder":
        check_no_extra(w, {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}, w_path, why)
        return build_sae(W_enc=tensor(w, "W_enc", (d, m), w_path).t(), b_enc=tensor(w, "b_enc", (m,), w_path),
                         W_dec=tensor(w, "W_dec", (m, d), w_path), b_dec=tensor(w, "b_dec", (d,), w_path), activation="jumprelu",
                         threshold=tensor(w, "threshold", (m,), w_path), b_dec_on_input=False)
    W_enc, b_enc = tensor(w, "encoder.weight", (m, d), w_path), tensor(w, "encoder.bias", (m,), w_path)
    W_dec = tensor(w, "decoder.weight", (d, m), w_path).t()
    if cls == "AutoEncoder":
        check_no_extra(w, {"encoder.weight", "encoder.bias", "decoder.weight", "bias"}, w_path, why)
        return build_sae(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=tensor(w, "bias", (d,), w_path), activation="relu")
    check_no_extra(w, {"encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold"}, w_path, why)
    k = int(finite_scalar(tensor(w, "k", (), w_path), "k", w_path))
    b_dec = tensor(w, "b_dec", (d,), w_path)
    if cls == "AutoEncoderTopK":
        return build_sae(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, activation="topk", k=k)
    threshold = finite_scalar(tensor(w, "threshold", (), w_path), "threshold", w_path)
    if threshold < 0:
        raise CheckpointError(f"{w_path}: tensor 'threshold' is {threshold} (never estimated); a BatchTopKSAE encodes with it at inference")
    return build_sae(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, activation="batchtopk", k=k, threshold=threshold)
