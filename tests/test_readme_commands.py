"""Every ``dualsae`` command printed in README.md and docs/ runs as printed.

* Every command line (bash blocks and inline `dualsae ...` spans) must parse with the real parser:
  flags exist, required arguments are there, no placeholders such as ``[--quick]``.
* The bash blocks are then run in order, in a scratch folder, on a tiny store that stands in for
  ``../shared/data/emoji`` and with tiny model sizes (the only substitutions). ``extract`` (needs a
  VLM download), ``reproduce`` (minutes to hours) and ``diagnose`` (trains probes; its own tests run it)
  are only parsed.
* The README's Python example runs with the same substitutions, and its second example (opening the
  folder the workflow's CLI commands wrote) runs after them in the same folder.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from dualsae.cli import build_parser, main
from dualsae.store.paired import write_store

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PARSE_ONLY = ("extract", "reproduce", "diagnose")  # diagnose trains probe SAEs: covered by its own tests
# Model sizes of the documented runs -> tiny ones; placeholders -> a value.
SIZE_SUBS = [
    (r"--latents \d+", "--latents 128"), (r"--k \d+", "--k 4"), (r"--batch-size \d+", "--batch-size 64"),
    (r"--epochs \d+", "--epochs 1"), (r"--method M\b", "--method specific"), (r"emoji-M\b", "emoji-spec"),
]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _commands(block: str) -> list[str]:
    """dualsae command lines of a bash block (continuations joined, comments dropped)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("dualsae "):
            out.append(line)
    return out


def _inline(text: str) -> list[str]:
    return [c for c in re.findall(r"`(dualsae [^`]+)`", text)]


def _documented() -> list[tuple[str, str]]:
    """(file, command): every bash-block command (size placeholders substituted) and every inline
    span that is a full command (has an argument: a path or a flag; no usage placeholders)."""
    found = []
    for path in DOCS:
        text = path.read_text()
        where = str(path.relative_to(ROOT))
        for block in _blocks(text, "bash"):
            found += [(where, _substitute(c, None)) for c in _commands(block)]
        found += [(where, c) for c in _inline(text) if _looks_complete(c)]
    return found


def _looks_complete(cmd: str) -> bool:
    """Inline spans such as `dualsae align RUN --out A` or `dualsae train` are command-table entries
    (usage placeholders, a bare command name), not commands to run."""
    if not re.search(r"/|--", cmd):
        return False
    return not re.search(r"\b[A-Z]{1,5}\b|\.\.\.|\[|\|| / ", cmd)


def test_every_documented_command_parses():
    parser = build_parser()
    cmds = _documented()
    assert len(cmds) >= 12
    for where, cmd in cmds:
        argv = shlex.split(cmd)[1:]
        try:
            parser.parse_args(argv)
        except SystemExit as e:  # argparse's way to reject
            pytest.fail(f"{where}: `{cmd}` does not parse (exit {e.code})")


def _tiny_emoji(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    n, d = 240, 16
    concepts = rng.normal(size=(6, d))
    z = rng.integers(0, 6, n)
    x = concepts[z] + 0.3 * rng.normal(size=(n, d))
    y = concepts[z] + 0.3 * rng.normal(size=(n, d))
    cats = ["smileys", "animals", "food", "travel", "objects", "flags"]
    meta = [{"id": f"e{i}", "caption": f"{cats[z[i]]} {i % 7}", "category": cats[z[i]], "tags": [cats[z[i]]],
             "split": "test" if i % 5 == 0 else "train"} for i in range(n)]
    store = write_store(folder, x.astype(np.float32), y.astype(np.float32), meta)
    # external/: the same rows embedded by another encoder, for the monosemanticity score (--external)
    rot = np.linalg.qr(rng.normal(size=(d, d)))[0]
    write_store(folder / "external", (x @ rot).astype(np.float32), (y @ rot).astype(np.float32), [{"id": m["id"]} for m in meta])
    return store


def _substitute(cmd: str, store: Path | None) -> str:
    if store is not None:
        cmd = cmd.replace("../shared/data/emoji", str(store))
    for pat, rep in SIZE_SUBS:
        cmd = re.sub(pat, rep, cmd)
    return cmd


def test_readme_and_docs_bash_blocks_run(tmp_path, monkeypatch, capsys):
    store = _tiny_emoji(tmp_path / "emoji")
    monkeypatch.chdir(tmp_path)
    ran = 0
    for path in DOCS:
        for block in _blocks(path.read_text(), "bash"):
            for cmd in _commands(block):
                argv = shlex.split(_substitute(cmd, store))[1:]
                if argv[0] in PARSE_ONLY:
                    continue
                if argv[0] == "train" and Path(argv[argv.index("--out") + 1]).exists():
                    continue  # the same run documented twice (README and docs/emoji)
                code = main(argv)
                captured = capsys.readouterr()
                err = captured.err
                assert code == 0, f"{path.name}: `{cmd}` exited {code}: {err.strip()[-300:]}"
                ran += 1
                if argv[0] == "steer":  # the default strength is chosen from the data; --sweep shows it
                    # (a latent dead on the tiny stand-in store is said to be, instead of a sweep)
                    assert "<- auto" in captured.out or "--sweep" not in argv or "dead here" in captured.err
    assert ran >= 9
    # The README's Python block that opens what the CLI wrote (runs/emoji-aligned) runs on that folder.
    (after_cli,) = [b for b in _blocks((ROOT / "README.md").read_text(), "python") if 'load("runs/emoji-aligned")' in b]
    scope: dict = {}
    exec(compile(after_cli.replace("../shared/data/emoji", str(store)), "README.md", "exec"), scope)
    assert scope["x"].shape[0] == len(scope["top"]) and [r.alpha for r in scope["sweep"].rows] == sorted(r.alpha for r in scope["sweep"].rows)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    store = _tiny_emoji(tmp_path / "emoji")
    (code,) = [b for b in _blocks((ROOT / "README.md").read_text(), "python") if "translate" in b]
    code = code.replace("../shared/data/emoji", str(store)).replace(
        "latents=2048, batch_size=256", "latents=32, k=4, batch_size=64, epochs=1")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert tuple(scope["as_images"].shape) == (2, 16)
    assert set(scope["top"]) == {"image", "text"} and scope["top"]["text"]
    test = scope["test"]
    assert scope["best"].numpy().tolist() == [test.image[scope["top"]["image"][0]["row"]].tolist()]  # absolute row id
