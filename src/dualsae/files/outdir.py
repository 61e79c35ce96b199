"""Output folders written as a unit: ownership, an "unfinished" mark, and a manifest of file hashes.

Every command that writes a folder (``train``, ``align``, ``analyze heterogeneity``, ``extract``,
``synth generate``, ``reproduce``) goes through three steps:

1. :func:`claim_output` (under the folder's lock, :mod:`dualsae.files.lock`): refuse a folder that holds
   anything this command did not write for the same job unless ``overwrite``; sweep the temporary
   files a killed writer left; write ``manifest.json`` with ``complete: false`` *before* touching
   any other file.
2. the command writes its files (each one atomically, :mod:`dualsae.files.atomic`);
3. :func:`commit_output` rewrites ``manifest.json`` with ``complete: true`` and the size and SHA-256
   of every file, as the last write.

A reader (:func:`check_finished` before loading, :func:`verify_files` after) therefore sees the old
complete folder, the new complete folder, or a one-line "unfinished" error: never the image SAE of
one alignment with the text SAE of another, nor a run with one of its two SAEs. Folders without a
manifest (written before manifests existed, or by hand) load as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from dualsae.core.errors import CheckpointError, ConfigError, DualSAEError
from dualsae.files.atomic import write_json
from dualsae.files.faults import fault_point
from dualsae.files.folders import check_writable, make_folder
from dualsae.files.lock import output_lock

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "dualsae.manifest/1"


def is_temporary(name: str) -> bool:
    """A temporary file of :func:`dualsae.files.atomic.atomic_path` (``.NAME.XXXX.tmp.EXT``) or a probe."""
    return name.startswith(".") and (".tmp" in name)


def _is_lock(name: str) -> bool:
    return name.startswith(".") and name.endswith(".lock")


def sweep_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files a killed writer left anywhere under ``folder``; returns them.
    Call only while holding the folder's lock (a live writer's temporaries look the same)."""
    gone = []
    for path in sorted(Path(folder).rglob(".*")):
        if path.is_file() and is_temporary(path.name):
            path.unlink(missing_ok=True)
            gone.append(path)
    return gone


def read_manifest(folder: str | os.PathLike[str]) -> dict | None:
    """``manifest.json`` of ``folder`` as a dict, or None when there is none (or it is unreadable)."""
    try:
        raw = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return raw if isinstance(raw, dict) and raw.get("format") == MANIFEST_FORMAT else None


def _entries(folder: Path) -> list[str]:
    """What the folder holds, apart from locks and temporaries."""
    return sorted(p.name for p in folder.iterdir() if not (_is_lock(p.name) or is_temporary(p.name)))


def _jsonable(job: dict) -> dict:
    return json.loads(json.dumps(job, default=str))


def check_output(folder: str | os.PathLike[str], command: str, job: dict[str, Any], overwrite: bool = False,
                 keep: Iterable[str] = ()) -> list[str]:
    """Refuse (one line) a ``folder`` that holds anything this command did not write for the same job,
    unless ``overwrite``; writes nothing. Returns the entries :func:`claim_output` will delete."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: is an existing file; expected a folder (or a path that does not exist yet)")
    if not folder.is_dir():
        return []
    job = _jsonable(job)
    manifest = read_manifest(folder)
    own = manifest is not None and manifest.get("command") == command and manifest.get("job") == job
    foreign = [n for n in _entries(folder) if n not in set(keep)]
    if foreign and not own and not overwrite:
        who = f"'dualsae {manifest.get('command')}' for another job" if manifest else "something else"
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} entries)" if len(foreign) > 5 else "")
        raise ConfigError(f"{folder}: already holds files written by {who} ({shown}); choose another --out, "
                          f"or pass --overwrite to replace its content")
    return foreign if overwrite else []


def claim_output(folder: str | os.PathLike[str], command: str, job: dict[str, Any], overwrite: bool = False,
                 keep: Iterable[str] = ()) -> Path:
    """Make ``folder`` this job's output (see the module docstring). ``job`` identifies the job (its
    inputs); a folder whose manifest names the same command and job is this job's own (a rerun or a
    resume). ``overwrite`` empties a folder that holds anything else. ``keep``: entries to accept
    without a manifest (a run folder from before manifests, adopted by ``train --resume``). Call it
    right before the first write, holding the folder's lock. Returns the folder."""
    doomed = check_output(folder, command, job, overwrite, keep)
    folder = make_folder(folder)
    for name in doomed:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    sweep_temporaries(folder)
    check_writable(folder)
    write_json(folder / MANIFEST, {"format": MANIFEST_FORMAT, "command": command, "job": _jsonable(job), "complete": False})
    return folder


def remove_if_unused(folder: str | os.PathLike[str]) -> bool:
    """Delete ``folder`` if it holds nothing but an unfinished manifest, locks and temporaries (a
    command that failed before writing anything); returns whether it did."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not folder.is_dir() or (manifest is not None and manifest.get("complete")) or any(n != MANIFEST for n in _entries(folder)):
        return False
    shutil.rmtree(folder)
    return True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _listed_files(folder: Path) -> list[str]:
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and str(rel) != MANIFEST and not any(_is_lock(p) or is_temporary(p) for p in rel.parts):
            out.append(rel.as_posix())
    return out


def commit_output(folder: str | os.PathLike[str], files: Iterable[str] | None = None) -> None:
    """Mark ``folder`` complete: rewrite its manifest with the size and SHA-256 of ``files`` (paths
    relative to the folder; default every file in it). The last write of a command."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise CheckpointError(f"{folder / MANIFEST}: missing; commit_output needs a folder claimed with claim_output")
    names = _listed_files(folder) if files is None else list(files)
    fault_point("commit", str(folder))
    manifest["files"] = {n: {"bytes": (folder / n).stat().st_size, "sha256": _sha256(folder / n)} for n in names}
    manifest["complete"] = True
    write_json(folder / MANIFEST, manifest)


def check_finished(folder: str | os.PathLike[str], error: type[DualSAEError] = CheckpointError) -> dict | None:
    """Raise a one-line "unfinished" error if ``folder``'s manifest says its writer did not finish;
    returns the manifest (None for a folder without one)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        if (folder / MANIFEST).exists():
            raise error(f"{folder / MANIFEST}: unreadable or not a dualsae manifest; the folder's writer did not finish cleanly")
        manifest = _claim_in_flight(folder)
        if manifest is None:
            return None
    if not manifest.get("complete"):
        command = manifest.get("command", "?")
        how = ("resume it with 'dualsae train --resume'" if command == "train"
               else f"rerun the same 'dualsae {command}' to finish it, or write it again with --overwrite")
        raise error(f"{folder}: unfinished: 'dualsae {command}' was stopped while writing it (manifest.json says "
                    f"complete: false); {how}")
    return manifest


def read_claim(folder: str | os.PathLike[str]) -> dict | None:
    """The folder's manifest, or the one its writer was killed renaming into place (complete: false)."""
    return read_manifest(folder) or _claim_in_flight(Path(folder))


def _claim_in_flight(folder: Path) -> dict | None:
    """The manifest a writer killed before its first rename left as a temporary (``.manifest.json.*.tmp.json``):
    the folder is that writer's unfinished output, though no ``manifest.json`` exists yet."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob(f".{MANIFEST}.*")):
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if isinstance(raw, dict) and raw.get("format") == MANIFEST_FORMAT:
            return {**raw, "complete": False}
    return None


def verify_files(folder: str | os.PathLike[str], manifest: dict | None, error: type[DualSAEError] = CheckpointError) -> None:
    """Check every file the manifest lists still has its recorded size and SHA-256 (a folder whose
    files were replaced or mixed with another output's after it was written)."""
    if not manifest:
        return
    folder = Path(folder)
    for name, rec in (manifest.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            raise error(f"{path}: missing; {folder / MANIFEST} lists it as part of this output")
        if path.stat().st_size != rec.get("bytes") or _sha256(path) != rec.get("sha256"):
            raise error(f"{path}: differs from the file 'dualsae {manifest.get('command')}' wrote (size or SHA-256 "
                        f"recorded in {MANIFEST}); the folder was modified or mixed with another output")


@contextmanager
def written_output(folder: str | os.PathLike[str], command: str, job: dict[str, Any], what: str,
                   overwrite: bool = False, resumes: Iterable[str] = ()) -> Iterator[Path]:
    """The three steps of the module docstring around a ``with`` block: refuse a foreign folder
    (before the lock file is created in it), hold its lock, claim it (which also checks it is
    writable, before any work), and commit it when the block ends. A block that fails with a
    one-line error leaves no folder that holds only an unfinished manifest (which a corrected rerun
    would then refuse as another job's). ``resumes``: subfolders of resumable units
    (:class:`dualsae.files.unit_job.UnitJob`) the block reuses from an earlier run of this job; their
    files are this run's result too, never removed as stale by :func:`remove_unwritten`."""

    check_output(folder, command, job, overwrite=overwrite)
    with output_lock(folder, what):
        path = claim_output(folder, command, job, overwrite=overwrite)
        kept = tuple(f"{r.strip('/')}/" for r in resumes)
        before = {n: i for n, i in _file_identities(path).items() if not n.startswith(kept)}
        try:
            yield path
        except DualSAEError:
            remove_if_unused(folder)
            raise
        remove_unwritten(path, before)
        commit_output(folder)


def _file_identities(folder: Path) -> dict[str, tuple[int, int, int]]:
    """{relative path: (inode, mtime_ns, size)} of the files :func:`commit_output` would list."""
    return {name: _identity(folder / name) for name in _listed_files(folder)}


def remove_unwritten(folder: Path, before: dict[str, tuple[int, int, int]]) -> list[str]:
    """Delete the files of an earlier run of the same job that this run did not write again (same inode,
    mtime and size as when the folder was claimed: every write here is a rename of a new file), and the
    folders they leave empty. Without it a rerun that writes less (``align --no-correlation``, or a
    retrained shared run whose alignment is now a collapse report) would list the old files beside the
    new ones in its manifest, and a reader would take stale statistics for this run's."""
    stale = [n for n, ident in before.items() if (folder / n).is_file() and _identity(folder / n) == ident]
    for name in stale:
        (folder / name).unlink()
        for parent in (folder / name).parents:
            if parent == folder or any(parent.iterdir()):
                break
            parent.rmdir()
    return stale


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@contextmanager
def resumable_output(folder: str | os.PathLike[str], command: str, job: dict[str, Any], keep: Iterable[str] = (),
                     what: str = "this job") -> Iterator[Path]:
    """Hold the lock of a resumable job's folder (``reproduce``), claim it, and mark it complete when
    the block ends without an error. ``keep``: names the job writes, so a folder from before manifests
    is adopted. The manifest lists no files (the job's units are checked by the job itself)."""

    check_output(folder, command, job, keep=keep)  # before the lock file is created in someone's folder
    with output_lock(folder, what):
        yield claim_output(folder, command, job, keep=keep)
        commit_output(folder, files=[])


def finished_json_files(folder: str | os.PathLike[str], error: type[DualSAEError] = DualSAEError) -> dict[str, Any]:
    """``{stem: parsed JSON}`` of the finished ``*.json`` files of ``folder`` (a job's unit results).
    Hidden files (the temporaries a kill between write and rename leaves) are never units, so a
    unit counts once; a damaged unit file raises one line naming it."""
    out: dict[str, Any] = {}
    folder = Path(folder)
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            out[path.stem] = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise error(f"{path}: damaged unit result ({type(e).__name__}); delete it and rerun to redo that unit") from None
    return out
