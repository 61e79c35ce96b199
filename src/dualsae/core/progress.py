"""Progress bars that suit where the output goes.

On a terminal: tqdm as usual. When stderr is redirected to a file (``dualsae train ... 2> log``,
a batch job): tqdm redraws its bar with carriage returns, which leaves one enormous line in the file.
There the same bar prints a plain, complete line at most every ``DUALSAE_PROGRESS_SECONDS``
(default 30) seconds and one at the end, so a log can be followed with ``tail -f``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from tqdm.auto import tqdm as _tqdm

#: Seconds between plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL_S = 30.0


class _LineWriter:
    """A file-like that turns tqdm's ``\\r``-redrawn status into one ``\\n``-terminated line per update."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, s: str) -> int:
        text = s.replace("\r", "").replace("\x1b[A", "").rstrip()
        if text:
            self.stream.write(text + "\n")
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def tqdm(*args: Any, **kwargs: Any) -> _tqdm:
    """``tqdm.auto.tqdm`` on a terminal; plain periodic lines when stderr is redirected."""
    stream = kwargs.get("file") or sys.stderr
    if kwargs.get("disable") or _is_terminal(stream):
        return _tqdm(*args, **kwargs)
    try:
        interval = float(os.environ.get("DUALSAE_PROGRESS_SECONDS", PLAIN_INTERVAL_S))
    except ValueError:
        interval = PLAIN_INTERVAL_S
    kwargs.update(file=_LineWriter(stream), mininterval=interval, maxinterval=max(interval, 10.0), miniters=1,
                  dynamic_ncols=False, ncols=100, ascii=True, leave=True)
    return _tqdm(*args, **kwargs)


__all__ = ["tqdm", "PLAIN_INTERVAL_S"]
