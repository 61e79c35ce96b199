"""EleutherAI sparsify folders (``cfg.json`` + ``sae.safetensors``, one folder per hookpoint): read one
and write one.

What sparsify (eai-sparsify 1.3) writes with ``SparseCoder.save_to_disk``: ``cfg.json`` holds the
``SparseCoderConfig`` fields (``activation`` topk/groupmax, ``k``, ``num_latents``,
``expansion_factor``, ``normalize_decoder``, ``multi_topk``, ``skip_connection``, ``transcode``) plus
``d_in``; ``sae.safetensors`` holds ``encoder.weight`` [m, d], ``encoder.bias`` [m], ``W_dec`` [m, d],
``b_dec`` [d] and, with a skip connection, ``W_skip`` [d, d]. A trainer's output folder holds one such
folder per hookpoint (``layers.6``, ...): pass ``FOLDER/HOOKPOINT``.

Its encode is ``topk(relu(encoder(x - b_dec)), k)`` and decode ``sum_j z_j W_dec_j + b_dec``: dualsae's
TopK SAE exactly (the top k of the ReLU'd values equal the ReLU'd top k). Transcoders (``transcode``:
no ``b_dec`` subtracted, the output predicts another layer), skip connections (the output depends on x
itself) and ``groupmax`` are refused: they are not an SAE of one embedding.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dualsae.core.errors import CheckpointError
from dualsae.files.atomic import save_tensors, write_json
from dualsae.models.formats.reading import (
    build_sae,
    check_no_extra,
    config_value,
    positive_int,
    read_library_config,
    read_safetensors,
    tensor,
)
from dualsae.models.sae import SAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
FILES = (CFG_FILE, WEIGHTS_FILE)


def hookpoints(folder: Path) -> list[str]:
    """The per-hookpoint subfolders of a sparsify trainer's output folder (each with cfg.json + sae.safetensors)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / CFG_FILE).is_file() and (p / WEIGHTS_FILE).is_file())


def read_sparsify(folder: Path) -> SAE:
    """The SAE of one sparsify hookpoint folder (module docstring)."""
    cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    if not cfg_path.is_file() and hookpoints(folder):
        raise CheckpointError(f"{folder}: a sparsify folder with one SAE per hookpoint; pass one of them as "
                              f"{folder}/HOOKPOINT: {', '.join(hookpoints(folder))}")
    cfg = read_library_config(cfg_path, "sparsify")
    d = positive_int(cfg, "d_in", cfg_path)
    for flag, why in (("transcode", "a transcoder predicts another layer's output"), ("skip_connection", "its output adds x W_skip"),
                      ("multi_topk", None)):
        if why and config_value(cfg, flag, cfg_path, bool, False):
            raise CheckpointError(f"{cfg_path}: field '{flag}' is true ({why}); dualsae reads sparse autoencoders of one embedding")
    act = config_value(cfg, "activation", cfg_path, str, "topk")
    if act != "topk":
        raise CheckpointError(f"{cfg_path}: field 'activation' is {act!r}; dualsae reads sparsify's 'topk'")
    k = positive_int(cfg, "k", cfg_path)
    w = read_safetensors(w_path, "sparsify")
    m = int(w["encoder.weight"].shape[0]) if "encoder.weight" in w else -1
    expected_m = config_value(cfg, "num_latents", cfg_path, int, 0) or d * config_value(cfg, "expansion_factor", cfg_path, int, 32)
    if m != expected_m:
        raise CheckpointError(f"{w_path}: tensor 'encoder.weight' has {m} rows, expected {expected_m} latents from {cfg_path}")
    if not k < m:
        raise CheckpointError(f"{cfg_path}: field 'k' must be < the {m} latents, found {k}")
    check_no_extra(w, {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}, w_path, "not part of a sparsify SAE dualsae can read")
    return build_sae(W_enc=tensor(w, "encoder.weight", (m, d), w_path), b_enc=tensor(w, "encoder.bias", (m,), w_path),
                     W_dec=tensor(w, "W_dec", (m, d), w_path), b_dec=tensor(w, "b_dec", (d,), w_path), activation="topk", k=k)


@torch.no_grad()
def write_sparsify(sae: SAE, folder: Path) -> list[str]:
    """Write a TopK ``sae`` as ``SparseCoder.save_to_disk`` does (each file atomically); returns the file
    names. sparsify has only TopK (over ``x - b_dec``): other activations are refused."""
    if sae.config.activation != "topk":
        raise CheckpointError(f"sparsify holds TopK SAEs only; this SAE's activation is {sae.config.activation!r} (export it --to saelens)")
    if not sae.config.b_dec_on_input:
        raise CheckpointError("sparsify subtracts b_dec before the encoder; this SAE does not (config b_dec_on_input false): export it --to saelens")
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / WEIGHTS_FILE, {"encoder.weight": sae.W_enc, "encoder.bias": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec},
                 metadata={"format": "pt"})
    write_json(folder / CFG_FILE, {"activation": "topk", "expansion_factor": max(sae.m // sae.d, 1), "normalize_decoder": True,
                                   "num_latents": sae.m, "k": sae.config.k, "multi_topk": False, "skip_connection": False,
                                   "transcode": False, "d_in": sae.d})
    return list(FILES)
