"""Headless Chromium for the report tests, the load benchmark and the docs screenshots.

No extra Python dependency: ``chromium --headless --dump-dom`` prints the DOM after the page's scripts
ran (``--virtual-time-budget`` lets lazy ``<script>`` loads finish first), ``--screenshot`` saves a PNG.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium binary ($CHROMIUM, else the usual names on PATH), or None."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(binary: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    # A fresh profile per call: no first-run state, no lock shared with another test process.
    with tempfile.TemporaryDirectory(prefix="dualsae-chromium-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def dump_dom(binary: str, url: str, budget_ms: int = 8000, timeout: float = 90) -> str:
    """The serialised DOM of ``url`` after its scripts ran (virtual time ``budget_ms``)."""
    res = _run(binary, [f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)
    if res.returncode != 0 or "<html" not in res.stdout:
        raise RuntimeError(f"chromium --dump-dom {url} failed (exit {res.returncode}): {res.stderr[-800:]}")
    return res.stdout


def screenshot(binary: str, url: str, path: str | Path, width: int = 1280, height: int = 900, budget_ms: int = 8000,
               timeout: float = 90) -> Path:
    """Save a PNG of ``url`` rendered at ``width`` x ``height``."""
    path = Path(path)
    res = _run(binary, [f"--virtual-time-budget={budget_ms}", f"--window-size={width},{height}", f"--screenshot={path}", url], timeout)
    if res.returncode != 0 or not path.is_file():
        raise RuntimeError(f"chromium --screenshot {url} failed (exit {res.returncode}): {res.stderr[-800:]}")
    return path


def page_url(site: str | Path, fragment: str = "") -> str:
    return Path(site).resolve().joinpath("index.html").as_uri() + (f"#{fragment}" if fragment else "")
