"""SAELens folders (``cfg.json`` + ``sae_weights.safetensors``): read any SAELens SAE dualsae can encode
exactly, and write an SAE back in SAELens's layout.

What SAELens writes (checked against sae-lens 6.54 and the pre-6.0 layout its own loader converts):

* ``cfg.json``: ``d_in``, ``d_sae``, ``architecture`` (``standard``, ``topk``, ``jumprelu``; a
  ``batchtopk`` *training* folder, whose inference save is ``jumprelu``), ``apply_b_dec_to_input``,
  ``normalize_activations``, for topk ``k`` and ``rescale_acts_by_decoder_norm``; ``metadata`` holds
  ``sae_lens_version``. Before 6.0 the version sat at the top level, the architecture defaulted to
  ``standard``, TopK was ``activation_fn_str: "topk"`` with ``activation_fn_kwargs: {"k": K}`` and
  ``normalize_activations`` could be a boolean.
* ``sae_weights.safetensors``: ``W_enc`` [d_in, d_sae], ``W_dec`` [d_sae, d_in], ``b_enc`` [d_sae],
  ``b_dec`` [d_in], ``threshold`` [d_sae] (jumprelu; ``log_threshold`` in training folders),
  ``topk_threshold`` [] (batchtopk training folders), ``scaling_factor`` [d_sae] (pre-6.0 fine-tuning
  scale, multiplied into the codes before decoding).

The maps (SAELens's ``encode`` / ``decode``), with ``s = x - b_dec * apply_b_dec_to_input``:
standard ``relu(s W_enc + b_enc)``; topk the k largest of ``h = s W_enc + b_enc`` (times
``||W_dec_j||`` with ``rescale_acts_by_decoder_norm``), ReLU'd; jumprelu ``relu(h) * [h > threshold]``;
decode ``z W_dec + b_dec`` (topk with rescaling: ``(z / ||W_dec_j||) W_dec + b_dec``). Rescaling by the
decoder norm is folded into the weights (``W_enc_j, b_enc_j`` times ``n_j``, ``W_dec_j`` over ``n_j``),
which gives the same codes and reconstructions. ``normalize_activations`` ``expected_average_only_in``
is a training-time scale SAELens's inference ``encode`` does not apply either (identity here too);
the per-input normalisations (``constant_norm_rescale``, ``layer_norm``) are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dualsae.core.errors import CheckpointError
from dualsae.files.atomic import save_tensors, write_json
from dualsae.models.formats.reading import (
    build_sae,
    check_no_extra,
    config_value,
    finite_scalar,
    positive_int,
    read_library_config,
    read_safetensors,
    tensor,
)
from dualsae.models.sae import SAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
FILES = (CFG_FILE, WEIGHTS_FILE)
#: The sae-lens version whose layout :func:`write_saelens` writes (``metadata.sae_lens_version``).
WRITTEN_VERSION = "6.54.12"


def _version(cfg: dict) -> tuple[int, ...] | None:
    raw = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    if not isinstance(raw, str):
        return None
    parts = []
    for piece in raw.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or None


def normalised_config(cfg: dict, path: Path) -> dict:
    """``cfg.json`` in the 6.x vocabulary (architecture, k, normalize_activations), whatever version wrote it."""
    cfg = dict(cfg)
    version = _version(cfg)
    if version is None or version < (6,):
        act = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
        cfg.setdefault("architecture", "standard")
        kwargs = cfg.get("activation_fn_kwargs") or {}
        if act == "topk" and isinstance(kwargs, dict) and kwargs.get("k") is not None:
            cfg["architecture"], cfg["k"] = "topk", kwargs["k"]
        elif cfg["architecture"] == "standard" and act != "relu":
            raise CheckpointError(f"{path}: field 'activation_fn_str' is {act!r}; dualsae reads 'relu' and 'topk' SAELens SAEs")
        if isinstance(cfg.get("normalize_activations"), bool):
            cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
    if cfg.get("normalize_activations") is None:
        cfg["normalize_activations"] = "none"
    return cfg


def read_saelens(folder: Path) -> SAE:
    """The SAE of a SAELens folder, encoding and decoding as SAELens does (module docstring)."""
    cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    cfg = normalised_config(read_library_config(cfg_path, "SAELens"), cfg_path)
    d, m = positive_int(cfg, "d_in", cfg_path), positive_int(cfg, "d_sae", cfg_path)
    arch = config_value(cfg, "architecture", cfg_path, str)
    if arch not in ("standard", "topk", "jumprelu", "batchtopk"):
        raise CheckpointError(f"{cfg_path}: field 'architecture' is {arch!r}; dualsae reads standard, topk, jumprelu and batchtopk SAELens SAEs")
    norm = config_value(cfg, "normalize_activations", cfg_path, str)
    if norm not in ("none", "expected_average_only_in"):
        raise CheckpointError(f"{cfg_path}: field 'normalize_activations' is {norm!r}, a per-input normalisation dualsae does not apply; "
                              "expected 'none' or 'expected_average_only_in'")
    b_dec_on_input = config_value(cfg, "apply_b_dec_to_input", cfg_path, bool, True)
    w = read_safetensors(w_path, "SAELens")
    W_enc = tensor(w, "W_enc", (d, m), w_path).t()
    W_dec = tensor(w, "W_dec", (m, d), w_path).clone()
    b_enc = tensor(w, "b_enc", (m,), w_path).clone()
    b_dec = tensor(w, "b_dec", (d,), w_path)
    known = {"W_enc", "W_dec", "b_enc", "b_dec", "scaling_factor"}
    if "scaling_factor" in w:  # pre-6.0 fine-tuning scale: decode (z * s) W_dec = z (s W_dec); codes unchanged
        W_dec = W_dec * tensor(w, "scaling_factor", (m,), w_path)[:, None]
    threshold, k, activation = None, None, {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "batchtopk"}[arch]
    if arch in ("topk", "batchtopk"):
        k = positive_int(cfg, "k", cfg_path)
        if not k < m:
            raise CheckpointError(f"{cfg_path}: field 'k' must be < d_sae={m}, found {k}")
        if config_value(cfg, "rescale_acts_by_decoder_norm", cfg_path, bool, arch == "batchtopk"):
            norms = W_dec.norm(dim=1).clamp_min(1e-8)  # SAELens's clamp
            W_enc, b_enc, W_dec = W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None]
    if arch == "jumprelu":
        if "threshold" in w:
            threshold = tensor(w, "threshold", (m,), w_path)
        elif "log_threshold" in w:
            threshold = tensor(w, "log_threshold", (m,), w_path).exp()
        else:
            raise CheckpointError(f"{w_path}: missing tensor 'threshold' of the jumprelu architecture (found {sorted(w)})")
        known |= {"threshold", "log_threshold"}
    if arch == "batchtopk":
        threshold = finite_scalar(tensor(w, "topk_threshold", tuple(w["topk_threshold"].shape) if "topk_threshold" in w else (), w_path),
                                  "topk_threshold", w_path)
        known |= {"topk_threshold"}
    check_no_extra(w, known, w_path, f"not part of a SAELens {arch} SAE dualsae can read")
    return build_sae(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, activation=activation, k=k,
                     threshold=threshold, b_dec_on_input=b_dec_on_input)


@torch.no_grad()
def write_saelens(sae: SAE, folder: Path, hook_name: str = "embedding") -> list[str]:
    """Write ``sae`` into ``folder`` as SAELens 6.x writes an inference SAE (each file atomically); returns
    the file names. TopK -> ``topk``; ReLU -> ``standard``; JumpReLU -> ``jumprelu``; a trained BatchTopK
    (threshold >= 0) -> ``jumprelu`` with that threshold for every latent, which is what SAELens's own
    BatchTopK inference save does; an untrained one (per-row TopK until the threshold exists) -> ``topk``."""
    act = sae.config.activation
    weights = {"W_enc": sae.W_enc.t().contiguous(), "W_dec": sae.W_dec, "b_enc": sae.b_enc, "b_dec": sae.b_dec}
    cfg: dict = {"d_in": sae.d, "d_sae": sae.m, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": bool(sae.config.b_dec_on_input),
                 "normalize_activations": "none", "reshape_activations": "none",
                 "metadata": {"sae_lens_version": WRITTEN_VERSION, "model_name": "dualsae", "hook_name": hook_name}}
    if act == "topk" or (act == "batchtopk" and float(sae.threshold) < 0):
        cfg.update(architecture="topk", k=sae.config.k, rescale_acts_by_decoder_norm=False)
    elif act == "relu":
        cfg["architecture"] = "standard"
    elif act in ("jumprelu", "batchtopk"):
        cfg["architecture"] = "jumprelu"
        weights["threshold"] = sae.threshold.expand(sae.m).clone() if sae.threshold.dim() == 0 else sae.threshold
    else:
        raise CheckpointError(f"an SAE with activation {act!r} has no SAELens architecture")
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / WEIGHTS_FILE, {k: v.float() for k, v in weights.items()})
    write_json(folder / CFG_FILE, json.loads(json.dumps(cfg)))
    return list(FILES)
