"""overcomplete SAEs (state dicts of its ``SAE``, ``TopKSAE``, ``BatchTopKSAE`` and ``JumpSAE``).

overcomplete has no folder format of its own: one saves ``torch.save(sae.state_dict(), PATH)``. What
the state dict does not hold (the class, ``top_k``, the dictionary's normalisation, BatchTopK's
``running_threshold``, an attribute outside the state dict) goes in a small ``overcomplete.json``
beside it, so a folder dualsae reads is

    overcomplete.json   {"model": "TopKSAE", "top_k": 8, "normalization": "l2", "state_dict": "sae.pt",
                         "running_threshold": 0.12 (BatchTopKSAE only)}
    sae.pt              the state dict (read with torch.load(weights_only=True))

Only the default linear encoder is read (``encoder.final_block.0.weight`` [m, d] and ``.bias``; an MLP,
attention or ResNet encoder is not a linear SAE). The maps (overcomplete 0.3.0): ``pre = W x + b``
(no input centring, no decoder bias); TopK keeps the k largest of ``relu(pre)``; BatchTopK (eval)
``relu(pre) * [relu(pre) >= running_threshold]``; JumpSAE ``relu(pre) * [relu(pre) > exp(thresholds)]``;
SAE ``relu(pre)``; decode ``z @ D`` with ``D = normalization(dictionary._weights) * exp(multiplier)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dualsae.core.errors import CheckpointError
from dualsae.models.formats.reading import (
    build_sae,
    check_no_extra,
    config_value,
    finite_scalar,
    positive_int,
    read_library_config,
    read_pickled_state,
    tensor,
)
from dualsae.models.sae import SAE

CFG_FILE = "overcomplete.json"
MODELS = {"SAE": "relu", "TopKSAE": "topk", "BatchTopKSAE": "batchtopk", "JumpSAE": "jumprelu"}


def _normalise(w: torch.Tensor, how: str, path: Path) -> torch.Tensor:
    """overcomplete's dictionary normalisations (``DictionaryLayer.NORMALIZATIONS``). w: [m, d]."""
    if how == "l2":
        return w / (w.norm(p=2, dim=1, keepdim=True) + 1e-8)
    if how == "l1":
        return w / (w.norm(p=1, dim=1, keepdim=True) + 1e-8)
    if how == "max_l2":
        return w / w.norm(p=2, dim=1, keepdim=True).amax(dim=0, keepdim=True)
    if how == "max_l1":
        return w / w.norm(p=1, dim=1, keepdim=True).amax(dim=0, keepdim=True)
    if how == "identity":
        return w
    raise CheckpointError(f"{path}: field 'normalization' is {how!r}; expected l2, l1, max_l2, max_l1 or identity")


def state_dict_file(folder: Path) -> str:
    cfg_path = folder / CFG_FILE
    return config_value(read_library_config(cfg_path, "overcomplete"), "state_dict", cfg_path, str, "sae.pt")


def read_overcomplete(folder: Path) -> SAE:
    cfg_path = folder / CFG_FILE
    cfg = read_library_config(cfg_path, "overcomplete")
    model = config_value(cfg, "model", cfg_path, str)
    if model not in MODELS:
        raise CheckpointError(f"{cfg_path}: field 'model' is {model!r}; dualsae reads {', '.join(MODELS)}")
    w_path = folder / state_dict_file(folder)
    w = read_pickled_state(w_path, "overcomplete")
    if "encoder.final_block.0.weight" not in w:
        raise CheckpointError(f"{w_path}: missing tensor 'encoder.final_block.0.weight' (overcomplete's linear encoder); "
                              f"found {sorted(w)[:6]}: only SAEs with the default linear encoder are read")
    m, d = w["encoder.final_block.0.weight"].shape
    W_enc = tensor(w, "encoder.final_block.0.weight", (m, d), w_path)
    b_enc = tensor(w, "encoder.final_block.0.bias", (m,), w_path)
    mult = finite_scalar(tensor(w, "dictionary.multiplier", (), w_path), "dictionary.multiplier", w_path)
    W_dec = _normalise(tensor(w, "dictionary._weights", (m, d), w_path), config_value(cfg, "normalization", cfg_path, str, "l2"), w_path)
    W_dec = W_dec * torch.exp(torch.tensor(mult))
    known = {"encoder.final_block.0.weight", "encoder.final_block.0.bias", "dictionary._weights", "dictionary.multiplier"}
    act, k, threshold = MODELS[model], None, None
    if model in ("TopKSAE", "BatchTopKSAE"):
        k = positive_int(cfg, "top_k", cfg_path)
    if model == "BatchTopKSAE":
        # its top_k counts the whole batch's codes; dualsae's k (a per-row mean) is used only before a threshold exists
        k = min(k, m - 1)
        threshold = config_value(cfg, "running_threshold", cfg_path, (int, float))
        if not math.isfinite(threshold) or threshold < 0:
            raise CheckpointError(f"{cfg_path}: field 'running_threshold' must be a finite number >= 0, found {threshold}")
        # overcomplete keeps relu(pre) >= thr; dualsae pre > thr: the same codes but for values exactly at thr.
    if model == "JumpSAE":
        threshold = tensor(w, "thresholds", (m,), w_path).exp()
        known.add("thresholds")
    check_no_extra(w, known, w_path, f"not part of an overcomplete {model} with a linear encoder")
    return build_sae(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=torch.zeros(d), activation=act, k=k, threshold=threshold,
                     b_dec_on_input=False)
