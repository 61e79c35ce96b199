"""``dualsae report MODEL --compare DIR``: each latent's counterpart in another SAE, read from the
``compare.json`` of ``dualsae compare MODEL[:member] B`` (:mod:`dualsae.evaluation.feature_overlap`).

Latent j of the report is latent j of the compared SAE A (the image or text SAE of an aligned pair
after eq. 7, the one SAE of a shared run), so A's decoder-matched B latent and their cosine become two
columns of ``data/latents.js``: ``counterpart`` (-1: none) and ``counterpart_cos``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dualsae.core.errors import ConfigError
from dualsae.evaluation.feature_overlap import OVERLAP_FORMAT
from dualsae.files.jsonfiles import read_json_object
from dualsae.files.outdir import check_finished


@dataclass(frozen=True)
class Counterparts:
    """b: [m_A] B latent matched to each A latent (-1: unmatched); cos: [m_A] their decoder cosine
    (None); a_path / b_spec: the compared SAEs, as compare.json records them."""

    source: Path
    a_path: str
    b_spec: str
    b: tuple[int, ...]
    cos: tuple[float | None, ...]

    def columns(self, m: int) -> dict:
        """The table columns for a report of ``m`` latents (the A SAE's latents first, then -1 / None)."""
        if len(self.b) > m:
            raise ConfigError(f"{self.source}: SAE A has {len(self.b):,} latents, this report's model {m:,}; "
                              f"compare this model ('dualsae compare MODEL:image B') and pass that folder")
        pad = m - len(self.b)
        return {"counterpart": list(self.b) + [-1] * pad, "counterpart_cos": list(self.cos) + [None] * pad,
                "counterpart_of": self.b_spec}


def read_counterparts(folder: str | Path) -> Counterparts:
    """Read ``folder/compare.json`` (or the file itself); one-line errors for a missing, foreign or
    unfinished one."""
    path = Path(folder)
    if path.is_dir():
        check_finished(path, ConfigError)  # a compare killed mid-write: its manifest says unfinished
        path = path / "compare.json"
    raw = read_json_object(path, "expected the --out folder of 'dualsae compare'", ConfigError)
    if raw.get("format") != OVERLAP_FORMAT:
        raise ConfigError(f"{path}: field 'format' must be {OVERLAP_FORMAT!r}, found {raw.get('format')!r}")
    cp = raw.get("counterpart")
    if not isinstance(cp, dict) or not isinstance(cp.get("b"), list) or not isinstance(cp.get("cos"), list) or len(cp["b"]) != len(cp["cos"]):
        raise ConfigError(f"{path}: field 'counterpart' must hold lists 'b' and 'cos' of one length per latent of A")
    a, b = raw.get("a") or {}, raw.get("b") or {}
    return Counterparts(path, str(a.get("path", "")), str(b.get("spec", "B")), tuple(int(x) for x in cp["b"]),
                        tuple(None if x is None else float(x) for x in cp["cos"]))


__all__ = ["Counterparts", "read_counterparts"]
