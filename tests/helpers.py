"""Small builders shared by the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dualsae.store.paired import write_store


def make_store(folder, n=600, d=16, seed=0, dtype=np.float32, split=True, image=True, text=True, n_features=24):
    """A small paired store with planted sparse structure: x = Phi z, y = Psi z + noise."""
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(n_features, d))
    phi /= np.linalg.norm(phi, axis=1, keepdims=True)
    psi = phi + 0.5 * rng.normal(size=(n_features, d))
    psi /= np.linalg.norm(psi, axis=1, keepdims=True)
    z = rng.exponential(size=(n, n_features)) * (rng.random((n, n_features)) < 0.1)
    x = z @ phi + 0.01 * rng.normal(size=(n, d))
    y = z @ psi + 0.01 * rng.normal(size=(n, d))
    meta = [{"caption": f"row {i}", "split": "test" if i % 5 == 0 else "train"} for i in range(n)] if split else None
    return write_store(folder, x.astype(dtype) if image else None, y.astype(dtype) if text else None, meta, dtype=dtype)


def tied_sae(w, k: int = 1):
    """An SAE whose encoder rows and decoder columns are both the rows of ``w`` [m, d], biases zero:
    a planted dictionary whose codes are known in closed form."""
    import torch

    from dualsae.models.sae import SAE, SAEConfig

    w = torch.as_tensor(np.asarray(w, dtype=np.float32))
    sae = SAE(SAEConfig(d=w.shape[1], m=w.shape[0], k=k, dec_bias_init="zero"))
    with torch.no_grad():
        sae.W_enc.copy_(w)
        sae.W_dec.copy_(w)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


ROOT = Path(__file__).resolve().parents[1]
#: Real paired embeddings beside the checkout (``../shared/data/emoji``; see its README).
EMOJI = ROOT.parent / "shared" / "data" / "emoji"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(args: list[str], world: int = 2) -> list[subprocess.Popen]:
    """``world`` processes with the variables torchrun sets (RANK, WORLD_SIZE, MASTER_*)."""
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
        # ROOT/src first: the ranks import this checkout's code, not whichever one the venv was installed from.
        # Output goes to files, not pipes: a rank never blocks on a full pipe nobody reads yet.
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        proc = subprocess.Popen([sys.executable, *args], env=env, stdout=out, stderr=err, text=True)
        proc.logs = (out, err)  # type: ignore[attr-defined]
        procs.append(proc)
    return procs


def _read(f) -> str:
    f.seek(0)
    text = f.read()
    f.close()
    return text


def finish_ranks(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    """Wait for every rank; stdout of each. A rank that fails (or a timeout) ends the others, which
    would otherwise wait in a collective for ever, and fails the test with that rank's stderr."""
    deadline = time.time() + timeout
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    results = [(_read(p.logs[0]), _read(p.logs[1])) for p in procs]
    failed = [(rank, p.returncode, err) for rank, (p, (_, err)) in enumerate(zip(procs, results)) if p.returncode != 0]
    # Report the rank that failed on its own first, not one this function killed afterwards.
    failed.sort(key=lambda f: f[1] == -signal.SIGKILL)
    assert not failed, "\n".join(f"rank {rank} exited with {code}:\n{err[-3000:]}" for rank, code, err in failed)
    return [out for out, _ in results]


def wait_ranks(procs: list[subprocess.Popen], timeout: float = 120) -> list[str]:
    """Wait for every rank, whatever its exit code; their stderr. A rank still running at the
    timeout is killed (it was waiting for ever in a collective), which fails the caller's check of
    the exit codes."""
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return [_read(p.logs[1]) for p in procs]


def launch_ranks(args: list[str], world: int = 2) -> list[str]:
    """Run ``python ARGS`` as ``world`` ranks to the end; their stdout."""
    return finish_ranks(start_ranks(args, world))


def make_clip_retrieval(root: Path, sizes=(5, 3), d=6, dtype=np.float16, text_sizes=None) -> tuple[np.ndarray, np.ndarray]:
    """A clip-retrieval folder (img_emb/, text_emb/, metadata/ shards of ``sizes`` rows): its image and text arrays."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    text_sizes = text_sizes or sizes
    imgs, txts = [], []
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    row = 0
    for i, (n, nt) in enumerate(zip(sizes, text_sizes)):
        a = rng.standard_normal((n, d)).astype(dtype)
        b = rng.standard_normal((nt, d)).astype(dtype)
        np.save(root / "img_emb" / f"img_emb_{i}.npy", a)
        np.save(root / "text_emb" / f"text_emb_{i}.npy", b)
        table = pa.table({"caption": [f"c{row + j}" for j in range(n)], "url": [f"u{row + j}" for j in range(n)],
                          "key": [f"{row + j:09d}" for j in range(n)], "width": list(range(n))})
        pq.write_table(table, root / "metadata" / f"metadata_{i}.parquet")
        imgs.append(a)
        txts.append(b)
        row += n
    return np.concatenate(imgs), np.concatenate(txts)
