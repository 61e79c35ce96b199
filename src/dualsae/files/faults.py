"""Named fault points, for fault-injection tests of what a kill leaves behind.

``fault_point(name, detail)`` kills this process with SIGKILL (no cleanup, no ``finally``: what a
power cut or the OOM killer does) when the environment variable ``DUALSAE_FAULT`` names that point.
``DUALSAE_FAULT`` is ``NAME`` or ``NAME:PATTERN``; with a pattern the point fires only when its
``detail`` (usually a file path) matches the shell-style pattern (``*`` crosses ``/``). Without the
variable (every normal run) a fault point is one dictionary lookup.

Points: ``before-replace`` (:func:`dualsae.files.atomic.atomic_path`, the temporary file is complete and
not yet renamed; detail = the destination path), ``train-between-saes``, ``train-after-summary``
(``summary.json`` written, the checkpoint not yet removed, the manifest not yet committed), ``align-between-saes``, ``export-between-saes``,
``extract-assembly`` (arrays assembled, ``meta.jsonl``/``extract.json`` not yet written),
``report-swap`` (a report's new folder and its old one are mid-exchange), ``commit``
(:func:`dualsae.files.outdir.commit_output`: every file written, the manifest not yet marked complete;
detail = the folder).
"""

from __future__ import annotations

import os
import signal
from fnmatch import fnmatchcase

ENV = "DUALSAE_FAULT"


def fault_point(name: str, detail: str = "") -> None:
    """SIGKILL this process if ``DUALSAE_FAULT`` names this point (and its pattern matches ``detail``)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, _, pattern = spec.partition(":")
    if want == name and (not pattern or fnmatchcase(str(detail), pattern)):
        os.kill(os.getpid(), signal.SIGKILL)
