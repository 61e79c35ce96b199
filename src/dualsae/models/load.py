"""Load trained models from disk: a training run folder or an aligned-pair folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dualsae.core.errors import CheckpointError, ConfigError
from dualsae.files.jsonfiles import read_json_object
from dualsae.files.outdir import check_finished, verify_files
from dualsae.files.tensorfiles import check_tensor_file
from dualsae.models.aligned import AlignedPair
from dualsae.models.pair import SAEPair
from dualsae.models.sae import SAE

#: The live block of C that ``dualsae align`` stores beside an aligned pair.
CORRELATION_FILE = "correlation.safetensors"


def flat_train_config(train: dict) -> dict:
    """A ``config.json`` ``train`` object with its SAE fields beside the training fields, as runs wrote
    it before the nesting (``sae``: {...}); a flat (old) object is returned as it is. For showing a
    config (``info``, the report), where one list of names reads the same for old and new runs."""
    sae = train.get("sae")
    if not isinstance(sae, dict):
        return train
    rest = {k: v for k, v in train.items() if k != "sae"}
    head = {k: rest.pop(k) for k in ("method", "latents") if k in rest}
    return {**head, **sae, **rest}


def read_run_config(run_dir: Path) -> dict:
    """The ``config.json`` of a training run folder, checked for its format tag."""
    path = run_dir / "config.json"
    raw = read_json_object(path, "expected a run folder written by 'dualsae train' or 'dualsae align'", CheckpointError)
    if "train" not in raw:
        raise CheckpointError(f"{path}: expected a run config with field 'train'; found fields {sorted(raw)}")
    if not isinstance(raw["train"], dict):
        raise CheckpointError(f"{path}: field 'train' must be a JSON object, found {json.dumps(raw['train'])}")
    return raw


def training_rows(path: str | Path | None) -> dict[str, Any]:
    """How the rows a model was trained (or aligned) on were chosen: ``split``, ``test_fraction`` and
    ``split_seed``, read from a run's ``config.json`` or an aligned folder's ``alignment.json``. Fields
    the folder does not record (runs written before they were), or no folder, give the defaults
    train / 0.2 / 0."""
    spec: dict[str, Any] = {"split": "train", "test_fraction": 0.2, "split_seed": 0}
    if path is None:
        return spec
    root = Path(path)
    for name, section in (("alignment.json", None), ("config.json", "train")):
        try:
            raw = json.loads((root / name).read_text())
            found = raw[section] if section else raw
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(found, dict):
            spec.update({k: found[k] for k in spec if found.get(k) is not None})
            break
    return spec


def recorded_data(path: str | Path) -> Path:
    """The store a model folder was aligned on (``alignment.json`` / ``collapse.json`` field ``data``)
    or trained on (``config.json`` field ``data.path``), following an aligned folder's ``source_run``.
    Raises ConfigError when no recorded store exists on disk."""

    root = Path(path)
    seen: list[str] = []
    for _ in range(3):  # aligned folder -> its run folder
        found, nxt = None, None
        for name in ("alignment.json", "collapse.json"):
            try:
                raw = json.loads((root / name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(raw, dict):
                found, nxt = raw.get("data"), raw.get("source_run")
                break
        if found is None:
            try:
                raw = json.loads((root / "config.json").read_text())
                found = (raw.get("data") or {}).get("path") if isinstance(raw, dict) else None
            except (OSError, ValueError, AttributeError):
                found = None
        if isinstance(found, str) and found:
            seen.append(found)
            if Path(found).is_dir():
                return Path(found)
        if not nxt:
            break
        root = Path(nxt)
    if seen:
        raise ConfigError(f"{path}: the recorded store {seen[0]} is not a folder from here; pass --data")
    raise ConfigError(f"{path}: records no store (field 'data'); pass --data")


def load_model(path: str | Path, device: str = "cpu") -> SAEPair:
    """Load a model as an :class:`SAEPair` (see :func:`_load_model`), refusing a folder whose writer
    did not finish and checking its files' sizes and SHA-256 against the folder's manifest
    (:mod:`dualsae.files.outdir`). An SAE folder inside a run or an aligned folder (``RUN/image``) has
    no manifest of its own: the enclosing folder's entries for it are checked.

    The check reads every byte once more (measured in ``benchmarks/verify_on_load.py``, README
    "Verifying files on load"): cheap beside the load itself, so every load verifies."""
    root = Path(path)
    manifest = check_finished(root) if root.is_dir() else None
    pair = _load_model(root, device)
    if manifest is None and root.is_dir():
        if (root / CORRELATION_FILE).exists():  # no manifest to check it against: at least its header and size
            check_tensor_file(root / CORRELATION_FILE, CheckpointError)
        root, manifest = _enclosing_manifest(root)
    verify_files(root, manifest)
    return pair


def check_matched(alignment: dict, path: Path, m_image: int, m_text: int) -> None:
    """An alignment's ``matched`` lists (image, text, correlation, support, null_threshold) must be of
    one length, their indices latents of the SAEs: a shorter list would fail a reader mid-way."""
    matched = alignment.get("matched")
    if matched is None:
        return
    if not isinstance(matched, dict) or not isinstance(matched.get("image"), list) or not isinstance(matched.get("text"), list):
        raise CheckpointError(f"{path}: field 'matched' must be an object with lists 'image' and 'text'")
    n = len(matched["image"])
    for key, val in matched.items():
        if isinstance(val, list) and len(val) != n:
            raise CheckpointError(f"{path}: field 'matched.{key}' has {len(val)} entries, 'matched.image' {n}; one entry per matched pair expected")
    for key, m in (("image", m_image), ("text", m_text)):
        if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < m for i in matched[key]):
            raise CheckpointError(f"{path}: field 'matched.{key}' holds an entry that is not a latent index in [0, {m})")


def _enclosing_manifest(folder: Path) -> tuple[Path, dict | None]:
    """(the parent folder, its manifest restricted to the files under ``folder``) when ``folder`` is part
    of a committed output (a run's ``image/``); else (``folder``, None)."""
    parent = folder.resolve().parent
    try:
        manifest = check_finished(parent) if (parent / "manifest.json").exists() else None
    except CheckpointError:
        raise CheckpointError(f"{folder}: lies in {parent}, whose writer did not finish; finish or rerun that first") from None
    prefix = folder.resolve().name + "/"
    files = {n: rec for n, rec in ((manifest or {}).get("files") or {}).items() if n.startswith(prefix)}
    if not files:
        return folder, None
    return parent, {**manifest, "files": files}


def _load_model(path: str | Path, device: str = "cpu") -> SAEPair:
    """Load a model as an :class:`SAEPair`.

    * aligned folder (has ``alignment.json``): :class:`dualsae.alignment.post_hoc.AlignedPair`;
    * run folder: its ``shared/`` SAE (both modalities) or its ``image/`` and ``text/`` SAEs;
    * a bare SAE folder (``config.json`` with field ``sae``): used for both modalities.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a folder; expected a run folder from 'dualsae train' or 'dualsae align'")
    if (root / "alignment.json").is_file():
        pair = AlignedPair.load(root, device=device)
        check_matched(pair.alignment, root / "alignment.json", pair.image.m, pair.text.m)
        return pair
    cfg_path = root / "config.json"
    if cfg_path.is_file():
        raw = read_json_object(cfg_path, error=CheckpointError)
        if "sae" in raw:
            sae = SAE.load(root, device)
            return SAEPair("sae", sae, sae)
    run_cfg = read_run_config(root)
    method = run_cfg["train"].get("method", "?")
    if (root / "shared").is_dir():
        sae = SAE.load(root / "shared", device)
        return SAEPair(method, sae, sae)
    parts = {m: SAE.load(root / m, device) for m in ("image", "text") if (root / m).is_dir()}
    if not parts:
        state = root / "checkpoint"
        hint = " (training did not finish: resume it with 'dualsae train --resume')" if state.is_dir() else ""
        raise CheckpointError(f"{root}: holds no trained SAE folder (shared/, image/ or text/){hint}")
    trained_on = run_cfg.get("data", {}).get("modalities") if isinstance(run_cfg.get("data"), dict) else None
    if isinstance(trained_on, list) and set(trained_on) - set(parts) and not (root / "summary.json").is_file():
        # A run stopped between saving its image/ and text/ SAEs (a library run without a manifest).
        raise CheckpointError(f"{root}: unfinished: holds only {sorted(parts)} of the SAEs of modalities {trained_on} and no "
                              "summary.json; resume it with 'dualsae train --resume'")
    return SAEPair(method, parts.get("image"), parts.get("text"))
