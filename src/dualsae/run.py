"""Load trained models from disk: a training run folder or an aligned-pair folder."""

from __future__ import annotations

from pathlib import Path

from dualsae.errors import CheckpointError
from dualsae.jsonfiles import read_json_object
from dualsae.pair import SAEPair
from dualsae.sae import SAE


def read_run_config(run_dir: Path) -> dict:
    """The ``config.json`` of a training run folder, checked for its format tag."""
    path = run_dir / "config.json"
    raw = read_json_object(path, "expected a run folder written by 'dualsae train' or 'dualsae align'", CheckpointError)
    if "train" not in raw:
        raise CheckpointError(f"{path}: expected a run config with field 'train'; found fields {sorted(raw)}")
    return raw


def load_model(path: str | Path, device: str = "cpu") -> SAEPair:
    """Load a model as an :class:`SAEPair`.

    * aligned folder (has ``alignment.json``): :class:`dualsae.align.AlignedPair`;
    * run folder: its ``shared/`` SAE (both modalities) or its ``image/`` and ``text/`` SAEs;
    * a bare SAE folder (``config.json`` with field ``sae``): used for both modalities.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a folder; expected a run folder from 'dualsae train' or 'dualsae align'")
    if (root / "alignment.json").is_file():
        from dualsae.align import AlignedPair

        return AlignedPair.load(root, device=device)
    cfg_path = root / "config.json"
    if cfg_path.is_file():
        raw = read_json_object(cfg_path, error=CheckpointError)
        if "sae" in raw:
            sae = SAE.load(root, device)
            return SAEPair("sae", sae, sae)
    method = read_run_config(root)["train"].get("method", "?")
    if (root / "shared").is_dir():
        sae = SAE.load(root / "shared", device)
        return SAEPair(method, sae, sae)
    parts = {m: SAE.load(root / m, device) for m in ("image", "text") if (root / m).is_dir()}
    if not parts:
        state = root / "checkpoint"
        hint = " (training did not finish: resume it with 'dualsae train --resume')" if state.is_dir() else ""
        raise CheckpointError(f"{root}: holds no trained SAE folder (shared/, image/ or text/){hint}")
    return SAEPair(method, parts.get("image"), parts.get("text"))
