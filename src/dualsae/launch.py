"""``python -m dualsae.launch [TORCHRUN OPTIONS] COMMAND ...``: ``torchrun ... -m dualsae COMMAND ...``
that ends with the reason.

Under plain ``torchrun`` a rank's one-line error (``dualsae: error: runs/x: in use by another dualsae
process``) scrolls away above torchrun's ``ChildFailedError`` report, and Ctrl-C ends in torchrun's
``SignalException`` traceback: the user's last screen is the launcher, not the reason. This wrapper
runs the same ``torch.distributed.run``, lets every line through, and then:

* when a rank failed with a dualsae error, prints that one line again as the **last** line (the rank
  that caused it first; ranks that only stopped because rank 0 refused are not repeated);
* when a rank died without one (killed, a crash), says which exit code torchrun reported;
* on Ctrl-C, drops torchrun's ``SignalException`` traceback and ends with ``dualsae: interrupted``
  (exit 130), as a single-process ``dualsae`` does.

The exit code is torchrun's (2 for a dualsae error, 130 for Ctrl-C). Every argument before the first
dualsae command name is torchrun's (``--standalone --nproc-per-node 8``; the same options as torchrun).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from dualsae.core.distributed import RANK_ERRORS_ENV

#: The ``dualsae`` subcommands (the first of them in argv splits torchrun's options from the command's).
COMMANDS = ("extract", "synth", "train", "align", "eval", "analyze", "info", "translate", "steer", "reproduce", "report", "diagnose")

#: torchrun's own tracebacks of a stop it reports anyway (Ctrl-C, a failed child): dropped.
_LAUNCHER_EXCEPTIONS = re.compile(r"torch\.distributed\.elastic\.\S*(SignalException|ChildFailedError)")


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(torchrun's options, the dualsae command and its arguments)."""
    for i, arg in enumerate(argv):
        if arg in COMMANDS:
            return argv[:i], argv[i:]
    raise SystemExit("usage: python -m dualsae.launch [TORCHRUN OPTIONS] COMMAND [ARGS]  (COMMAND one of " + ", ".join(COMMANDS) + ")")


class _StderrFilter:
    """Copies torchrun's stderr (and the ranks', which share it) to ours line by line, holding back a
    traceback until its exception line shows whether it is torchrun's report of a stop (dropped) or
    anything else (shown, as it was)."""

    def __init__(self, stream) -> None:
        self.stream, self.held, self.dropped = stream, [], False

    def run(self) -> None:
        for line in iter(self.stream.readline, ""):
            self.feed(line)
        self.flush()

    def feed(self, line: str) -> None:
        if self.held:
            self.held.append(line)
            if line[:1] not in (" ", "\t") and not line.startswith("Traceback"):
                if _LAUNCHER_EXCEPTIONS.search(line) and "SignalException" in line:  # Ctrl-C: said below
                    self.held, self.dropped = [], True
                else:
                    self.flush()
            return
        if line.startswith("Traceback (most recent call last):"):
            self.held = [line]
            return
        sys.stderr.write(line)
        sys.stderr.flush()

    def flush(self) -> None:
        sys.stderr.write("".join(self.held))
        sys.stderr.flush()
        self.held = []


def _rank_errors(folder: Path) -> list[tuple[int, str, str]]:
    """(rank, kind, message) of every rank that left its one-line error, causes first."""
    found = []
    for path in folder.glob("rank-*.txt"):
        try:
            kind, _, message = path.read_text().rstrip("\n").partition("\t")
            found.append((int(path.stem.split("-", 1)[1]), kind, message))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda r: (r[1] != "cause", r[0]))


def summary_lines(errors: list[tuple[int, str, str]], code: int) -> list[str]:
    """The lines printed after torchrun's report: the causing rank's one line, last."""
    causes = [e for e in errors if e[1] == "cause"] or errors
    if not causes:
        return [f"dualsae: error: a rank stopped with exit code {code} without a dualsae error (killed or crashed; torchrun's report above names it)"]
    messages = list(dict.fromkeys(m for _, _, m in causes))  # every rank may give the same line
    ranks = ", ".join(str(r) for r, _, m in causes if m == messages[0])
    return [f"(rank {ranks} of the torchrun job above:)", *messages[::-1]]


def main(argv: list[str] | None = None) -> int:
    torchrun_args, command = split_argv(list(sys.argv[1:] if argv is None else argv))
    with tempfile.TemporaryDirectory(prefix="dualsae-launch-") as errors:
        env = {**os.environ, RANK_ERRORS_ENV: errors}
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *torchrun_args, "-m", "dualsae", *command],
                                env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
        filt = _StderrFilter(proc.stderr)
        reader = threading.Thread(target=filt.run, daemon=True)
        reader.start()
        interrupted = False
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # the terminal sent SIGINT to torchrun and the ranks too; wait for them
                interrupted = True
        reader.join()
        if interrupted or filt.dropped or code in (130, -signal.SIGINT):
            print("dualsae: interrupted", file=sys.stderr)
            return 130
        if code == 0:
            return 0
        found = _rank_errors(Path(errors))
        for line in summary_lines(found, code):
            print(line, file=sys.stderr)
        return 2 if found else (code if code > 0 else 128 - code)  # a dualsae error exits 2, as one process does


if __name__ == "__main__":
    sys.exit(main())
