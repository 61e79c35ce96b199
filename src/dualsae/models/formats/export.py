"""Export a dualsae model to SAELens or sparsify: each modality's SAE in that library's layout, and the
match statistics of the alignment in ``matches.json``.

An aligned pair's text SAE is already permuted (eq. 7), so latent j of ``image/`` and latent j of
``text/`` are one concept in both exports. The folder:

    image/, text/       (aligned or specific-SAE pair) or shared/ (one shared SAE): SAELens
                        ``cfg.json`` + ``sae_weights.safetensors``, or sparsify ``cfg.json`` +
                        ``sae.safetensors`` (a sparsify run folder whose hookpoints are the modalities)
    matches.json        per matched shared index j: the text latent it was before eq. 7, the
                        correlation (eq. 5), co-firing support and permutation-null threshold where the
                        aligned folder has them; the modality-only latents; where the SAEs came from
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from dualsae.core.errors import CheckpointError, ConfigError
from dualsae.files.faults import fault_point
from dualsae.models.aligned import AlignedPair
from dualsae.models.formats.saelens import write_saelens
from dualsae.models.formats.sparsify import write_sparsify
from dualsae.models.pair import SAEPair
from dualsae.models.sae import SAE

EXPORT_FORMAT = "dualsae.export/1"
MATCHES_FILE = "matches.json"
WRITERS: dict[str, Callable[[SAE, Path], list[str]]] = {
    "saelens": lambda sae, folder: write_saelens(sae, folder, hook_name=folder.name),
    "sparsify": write_sparsify,
}


def match_statistics(pair: AlignedPair) -> dict:
    """The alignment's matches by shared index (``matches.json``'s ``matched``), and its unmatched latents."""
    a = pair.alignment
    matched = a.get("matched") or {}
    image, text = matched.get("image", []), matched.get("text", [])
    rows = []
    for i, (j, t) in enumerate(zip(image, text)):
        row = {"index": int(j), "text_latent_before_alignment": int(t), "correlation": matched.get("correlation", [None] * len(image))[i]}
        for key in ("support", "null_threshold"):
            if key in matched:
                row[key] = matched[key][i]
        if "null_threshold" in row and row["correlation"] is not None:
            row["above_null"] = bool(row["correlation"] > row["null_threshold"])
        rows.append(row)
    unmatched = a.get("unmatched") or {}
    return {"matched": rows, "image_only": unmatched.get("image_only", []), "text_only": unmatched.get("text_only_shared", []),
            "mean_matched_correlation": a.get("mean_matched_correlation"), "rows": a.get("rows"), "data": a.get("data")}


def export_pair(pair: SAEPair, to: str, folder: Path, model: str) -> dict:
    """Write ``pair`` into ``folder`` in library ``to``'s layout (module docstring); returns matches.json's content."""
    if to not in WRITERS:
        raise ConfigError(f"--to must be one of {', '.join(WRITERS)}, found {to!r}")
    if pair.shared:
        parts = {"shared": pair.sae_for("image")}
    elif isinstance(pair, AlignedPair):
        parts = {m: pair.sae_for(m) for m in ("image", "text")}
    elif pair.image is not None and pair.text is not None:
        raise CheckpointError(f"{model}: a {pair.method} pair whose latent indices do not correspond; align it first "
                              f"('dualsae align {model} --out ALIGNED') and export the aligned folder")
    else:
        raise CheckpointError(f"{model}: holds one modality's SAE only; expected an aligned folder or a shared-SAE run")
    if to == "sparsify":  # refuse before writing anything, naming the SAE
        for name, sae in parts.items():
            if sae.config.activation != "topk" or not sae.config.b_dec_on_input:
                raise CheckpointError(f"{model}: the {name} SAE ({sae.config.activation}"
                                      f"{'' if sae.config.b_dec_on_input else ', b_dec not subtracted from the input'}) has no sparsify "
                                      "form: sparsify holds TopK SAEs over x - b_dec only; export it --to saelens")
    files = {}
    for name, sae in parts.items():
        if files:
            fault_point("export-between-saes", str(folder))
        files[name] = WRITERS[to](sae.cpu(), folder / name)
    out = {"format": EXPORT_FORMAT, "to": to, "model": str(Path(model).resolve()), "method": pair.method,
           "folders": {name: [f"{name}/{f}" for f in fs] for name, fs in files.items()},
           "m": {name: sae.m for name, sae in parts.items()}}
    if isinstance(pair, AlignedPair):
        out.update(match_statistics(pair))
        if pair.alignment.get("sources"):
            out["sources"] = pair.alignment["sources"]
    return out
