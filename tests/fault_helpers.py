"""Fault injection for the CLI tests: run ``dualsae`` in a subprocess that SIGKILLs itself at a named
point (``DUALSAE_FAULT``, see :mod:`dualsae.files.faults`), on a read-only or full file system (a private
mount namespace with a small tmpfs: ``unshare --mount``, so nothing leaks into the machine's mounts),
and the in-process CLI with its stderr."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from dualsae.cli import main

KILLED = -signal.SIGKILL


def cli_env(fault: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DUALSAE_FAULT", None)
    if fault:
        env["DUALSAE_FAULT"] = fault
    return env


def run_cli(args: list[str], fault: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``dualsae ARGS`` in a fresh process; ``fault`` kills it at that point (returncode ``KILLED``)."""
    return subprocess.run([sys.executable, "-m", "dualsae.cli", *map(str, args)], capture_output=True, text=True,
                          env=cli_env(fault), timeout=timeout)


@lru_cache(maxsize=1)
def can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=16k tmpfs $d && umount $d && rmdir $d"],
                           capture_output=True)
    return probe.returncode == 0


def run_cli_on_tmpfs(mountpoint: Path, options: str, commands: list[list[str]], fill: bool = False,
                     timeout: float = 300, copy_out: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``dualsae`` commands (in one Python process) in a private mount namespace where
    ``mountpoint`` is a fresh tmpfs mounted with ``options`` (``ro`` for a read-only one); ``fill``
    first fills it with zeros (a full disk). Each command's exit status is printed as a line ``rc=N``.
    ``copy_out``: afterwards copy what the tmpfs holds there (it vanishes with the namespace)."""
    if not can_mount_tmpfs():
        pytest.skip("needs 'unshare --mount' and tmpfs mounts (root in a private mount namespace)")
    mountpoint.mkdir(parents=True, exist_ok=True)
    mnt = shlex.quote(str(mountpoint))
    fill_cmd = f"cat /dev/zero > {mnt}/fill 2>/dev/null; " if fill else ""
    code = ("import json, shutil, sys; from dualsae.cli import main\n"
            "for argv in json.loads(sys.argv[1]): print(f'rc={main(argv)}', flush=True)\n"
            + (f"shutil.copytree({str(mountpoint)!r}, {str(copy_out)!r}, dirs_exist_ok=True)\n" if copy_out else ""))
    argv = shlex.quote(json.dumps([[str(a) for a in cmd] for cmd in commands]))
    script = (f"mount -t tmpfs -o {options} tmpfs {mnt} && {{ {fill_cmd}"
              f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} {argv}; }}")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], capture_output=True,
                          text=True, env=cli_env(), timeout=timeout)


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    """The CLI in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str, *needles: str) -> bool:
    """Exit 2 with exactly one 'dualsae: error:' line on stderr containing every needle."""
    lines = [line for line in err.splitlines() if line.startswith("dualsae: error:")]
    return code == 2 and len(lines) == 1 and "Traceback" not in err and all(n in lines[0] for n in needles)


_FORK_SERVER = r"""
import json, os, sys
from dualsae.cli import main  # imported once; each case runs in a fork of this process
results = []
for argv, fault in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        os.environ.pop("DUALSAE_FAULT", None)
        if fault:
            os.environ["DUALSAE_FAULT"] = fault
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    results.append(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
print("RESULTS " + json.dumps(results))
"""


def run_cli_killed(cases: list[tuple[list, str | None]], timeout: float = 600) -> list[int]:
    """Run each ``(dualsae ARGS, DUALSAE_FAULT)`` case in order, each in a fork of one fresh process that
    imported dualsae once (a kill test per named point without paying the import per point); returns
    each case's exit status (``KILLED`` for one the fault point killed). The parent runs no torch op
    before forking, so the children's thread pools start clean."""
    payload = json.dumps([[[str(a) for a in argv], fault] for argv, fault in cases])
    r = subprocess.run([sys.executable, "-c", _FORK_SERVER, payload], capture_output=True, text=True, env=cli_env(), timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert r.returncode == 0 and lines, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads(lines[-1][len("RESULTS "):])
