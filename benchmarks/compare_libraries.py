"""One TopK SAE training step: dualsae against EleutherAI's sparsify, SAELens and overcomplete.

Every library runs its own training step on the same batches, side by side in one process, in
interleaved rounds (the order rotates each round so that no library always runs after the same
neighbour). Each round times ``--steps`` consecutive steps of one library; the report gives the
per-step time's min and median over the rounds, and the other library's time divided by dualsae's
(> 1: dualsae is faster).

What each step contains (each library's own code; only the few lines of trainer glue that call it are
written here, copied from that library's trainer loop):

  dualsae      dualsae.training.step._step, the trainer's step: no-grad selection product + top-k, sparse
               decode, MSE + AuxK (coef 1/32), backward through the k selected latents, decoder-grad
               projection (its dots from the decode's sampled product), grad-norm clip 1.0 (the factor applied inside the fused AdamW),
               fused AdamW (weight decay 1e-5), decoder renorm,
               dead-latent counters, the scalar logs.
  sparsify     SparseCoder.forward (fused encoder with autograd + top-k, embedding_bag decode, FVU +
               AuxK) and the body of Trainer.fit: decoder renorm, backward, decoder-grad projection,
               torch.optim.Adam (the trainer's 'adam' optimizer; no clipping), did_fire counters.
  saelens      SAETrainer._train_step itself (called on a minimal stand-in for the trainer object):
               TopKTrainingSAE.training_forward_pass (dense [B, m] activations, decoder-norm
               rescaling, MSE + TopK AuxK), firing statistics, backward, grad-norm clip 1.0, Adam.
  overcomplete overcomplete.sae.train_sae on a one-batch loader: TopKSAE forward (dense codes),
               MSE criterion (``--overcomplete-auxk`` for its top_k_auxiliary_loss, which uses m/2
               non-selected codes and so costs far more), grad-norm clip 1.0, Adam, dead-code tracker.

Two things are fixed for every library alike, so that a run measures the step and not the harness
(both measured in docs/benchmarks.md, with the numbers without them):
  - each library's timed steps in a round follow one untimed step of its own (``--cold`` drops it):
    the library that ran before has just pushed this one's weights and optimizer state out of the
    caches, which costs the first step after a switch 25% (dualsae, second setting) and never
    happens in a training loop;
  - glibc's malloc keeps freed memory in the process (``--os-malloc`` drops it; ``keep_freed_memory``).

No latent is dead at the start, so AuxK adds only its dead-mask check in every library (as in the first
20,000 samples of a dualsae training); ``--dead F`` marks a fraction F of the latents dead in every library
so that AuxK runs.

Run with the project's environment for dualsae alone, or with a benchmark environment that also has
the other libraries (never dependencies of dualsae; see docs/benchmarks.md for the install commands):

    .venv/bin/python benchmarks/compare_libraries.py
    PYTHONPATH=src /work/benchvenv/bin/python benchmarks/compare_libraries.py --rounds 9
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import os
import statistics
import sys
import time
import types
from typing import Callable

import torch

SETTINGS = [dict(d=512, m=8192, k=32, B=1024), dict(d=256, m=8192, k=16, B=256)]
LIBRARIES = ("dualsae", "sparsify", "saelens", "overcomplete")
#: ``--old-src DIR``: an earlier checkout's ``src`` loaded as package ``dualsae_old`` (library "dualsae-old").
OLD_PACKAGE = "dualsae_old"
LR = 5e-4
#: dualsae's activation (``--activation``); the other libraries run TopK.
ACTIVATION = "topk"
Step = Callable[[torch.Tensor], None]


def _bare_package(name: str, dist: str) -> None:
    """Make ``name``'s submodules importable without running its ``__init__``.

    sparsify's, SAELens' and overcomplete's top-level ``__init__`` import their model-hub, data-set and
    vision code (transformers models, torchvision, timm, wandb); the SAE classes themselves need none of
    it. The SAE modules are loaded unchanged from the installed package.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not installed")
    pkg = types.ModuleType(name)
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__version__ = importlib.metadata.version(dist)
    pkg.logger = logging.getLogger(name)  # SAELens' submodules import the package logger
    sys.modules[name] = pkg


def version(lib: str) -> str:
    if lib == "dualsae-old":
        return "earlier checkout (--old-src)"
    if lib == "dualsae-f32":
        return "this tree, float32 selection product"
    dist = {"dualsae": "dualsae", "sparsify": "eai-sparsify", "saelens": "sae-lens", "overcomplete": "overcomplete"}[lib]
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "source tree" if lib == "dualsae" else "?"


# ---------------------------------------------------------------------- the four steps


def dualsae_step(d: int, m: int, k: int, dead: float) -> Step:
    from dualsae.models.sae import SAE, SAEConfig
    from dualsae.training.config import TrainConfig
    from dualsae.training.step import _step, make_member

    config = TrainConfig.from_preset("real", method="specific", k=k, lr=LR, activation=ACTIVATION)
    sae = SAE(SAEConfig(d=d, m=m, k=k, activation=ACTIVATION), generator=torch.Generator().manual_seed(0))
    sae.samples_since_fired[: int(dead * m)] = sae.config.dead_window
    mem = make_member("image", sae, ("image",), config)

    def step(x: torch.Tensor) -> None:
        _step([mem], config, {"image": x}, LR)
        if dead:  # keep the same latents dead every step (comparable AuxK work each round)
            sae.samples_since_fired[: int(dead * m)] = sae.config.dead_window

    return step


def dualsae_f32_step(d: int, m: int, k: int, dead: float) -> Step:
    """dualsae's step with the float32 selection product (the bfloat16 screen of
    dualsae.core.screened_topk switched off): the same selection, computed the plain way."""
    import dualsae.models.sae as sae_module

    inner = dualsae_step(d, m, k, dead)

    def step(x: torch.Tensor) -> None:
        saved, sae_module.SCREEN_MIN_LATENTS = sae_module.SCREEN_MIN_LATENTS, m + 1
        try:
            inner(x)
        finally:
            sae_module.SCREEN_MIN_LATENTS = saved

    return step


def sparsify_step(d: int, m: int, k: int, dead: float) -> Step:
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    _bare_package("sparsify", "eai-sparsify")
    from sparsify.config import SparseCoderConfig
    from sparsify.sparse_coder import SparseCoder

    torch.manual_seed(0)
    sae = SparseCoder(d, SparseCoderConfig(num_latents=m, k=k), device="cpu", dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    since_fired = torch.zeros(m, dtype=torch.long)
    did_fire = torch.zeros(m, dtype=torch.bool)
    threshold = 10_000_000  # TrainConfig.dead_feature_threshold
    auxk_alpha = 1 / 32  # TrainConfig.auxk_alpha

    def step(x: torch.Tensor) -> None:
        # Trainer.fit's body for loss_fn='fvu', one micro-batch, no grad accumulation.
        sae.set_decoder_norm_to_unit_norm()
        if dead:
            since_fired[: int(dead * m)] = threshold + 1
        dead_mask = since_fired > threshold
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        float(out.fvu.detach()), float(out.auxk_loss.detach())
        loss = out.fvu + auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired.add_(x.shape[0])
            since_fired[did_fire] = 0
            did_fire.zero_()

    return step


def saelens_step(d: int, m: int, k: int, dead: float) -> Step:
    _bare_package("transformer_lens", "transformer-lens")
    _bare_package("sae_lens", "sae-lens")
    from contextlib import nullcontext

    from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class, register_sae_training_class
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    # What sae_lens/__init__.py registers for the TopK architecture.
    if "topk" not in SAE_CLASS_REGISTRY:
        register_sae_class("topk", TopKSAE, TopKSAEConfig)
        register_sae_training_class("topk", TopKTrainingSAE, TopKTrainingSAEConfig)

    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=m, k=k, dtype="float32", device="cpu"))
    window = 1000  # the trainer's dead_feature_window
    # The attributes SAETrainer._train_step reads, as SAETrainer.__init__ sets them up.
    tr = types.SimpleNamespace(
        sae=sae, autocast_if_enabled=nullcontext(), n_training_steps=0,
        act_freq_scores=torch.zeros(m), n_forward_passes_since_fired=torch.zeros(m), n_frac_active_samples=0,
        cfg=types.SimpleNamespace(train_batch_size_samples=0), coefficient_schedulers={},
        optimizer=torch.optim.Adam(sae.parameters(), lr=LR, betas=(0.9, 0.999)),
        lr_scheduler=types.SimpleNamespace(step=lambda: None),
        get_coefficients=lambda: {}, _is_logging_step=lambda: False,
    )

    def step(x: torch.Tensor) -> None:
        if dead:
            tr.n_forward_passes_since_fired[: int(dead * m)] = window + 1
        tr.dead_neurons = (tr.n_forward_passes_since_fired > window).bool()
        tr.cfg.train_batch_size_samples = x.shape[0]
        out = SAETrainer._train_step(tr, sae, x)
        float(out.loss.detach())

    return step


def overcomplete_step(d: int, m: int, k: int, dead: float, auxk: bool = False) -> Step:
    _bare_package("overcomplete", "overcomplete")
    from overcomplete.sae import TopKSAE
    from overcomplete.sae.losses import top_k_auxiliary_loss
    from overcomplete.sae.train import train_sae

    torch.manual_seed(0)
    sae = TopKSAE(d, m, top_k=k, device="cpu")
    opt = torch.optim.Adam(sae.parameters(), lr=LR)

    def mse(x, x_hat, pre_codes, codes, dictionary):
        return (x - x_hat).square().mean()

    criterion = top_k_auxiliary_loss if auxk else mse

    def step(x: torch.Tensor) -> None:
        train_sae(sae, [x], criterion, opt, nb_epochs=1, clip_grad=1.0, monitoring=0)

    return step


def load_old_dualsae(src: str) -> None:
    """Import the ``dualsae`` package under ``src`` (an earlier checkout) as ``dualsae_old``, beside this
    tree's ``dualsae``: its files are copied to a temporary folder with every ``dualsae`` import renamed,
    so both versions' steps run interleaved in one process (the same batches, threads and malloc)."""
    import re
    import shutil
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="dualsae_old_"))
    shutil.copytree(Path(src) / "dualsae", root / OLD_PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    for f in (root / OLD_PACKAGE).rglob("*.py"):
        text = f.read_text()
        f.write_text(re.sub(r"^(\s*)(from|import) dualsae\b", rf"\1\2 {OLD_PACKAGE}", text, flags=re.M))
    sys.path.insert(0, str(root))


def dualsae_old_step(d: int, m: int, k: int, dead: float) -> Step:
    """The same step as :func:`dualsae_step`, from the checkout given by ``--old-src`` (flat layout of
    before the subpackages: ``dualsae.train``, ``dualsae.sae``; or the subpackage layout)."""
    import importlib

    try:
        train_mod = importlib.import_module(f"{OLD_PACKAGE}.train")
        sae_mod = importlib.import_module(f"{OLD_PACKAGE}.sae")
        TrainConfig, _step, make_member = train_mod.TrainConfig, train_mod._step, train_mod.make_member
    except ModuleNotFoundError as e:
        if e.name and not e.name.startswith(OLD_PACKAGE):
            raise
        sae_mod = importlib.import_module(f"{OLD_PACKAGE}.models.sae")
        TrainConfig = importlib.import_module(f"{OLD_PACKAGE}.training.config").TrainConfig
        step_mod = importlib.import_module(f"{OLD_PACKAGE}.training.step")
        _step, make_member = step_mod._step, step_mod.make_member
    config = TrainConfig.from_preset("real", method="specific", k=k, lr=LR)
    sae = sae_mod.SAE(sae_mod.SAEConfig(d=d, m=m, k=k), generator=torch.Generator().manual_seed(0))
    sae.samples_since_fired[: int(dead * m)] = sae.config.dead_window
    mem = make_member("image", sae, ("image",), config)

    def step(x: torch.Tensor) -> None:
        _step([mem], config, {"image": x}, LR)
        if dead:
            sae.samples_since_fired[: int(dead * m)] = sae.config.dead_window

    return step


FACTORIES = {"dualsae": dualsae_step, "dualsae-f32": dualsae_f32_step, "dualsae-old": dualsae_old_step,
             "sparsify": sparsify_step, "saelens": saelens_step, "overcomplete": overcomplete_step}


# ---------------------------------------------------------------------- timing


def compare(d: int, m: int, k: int, B: int, libs: list[str], rounds: int, steps: int, dead: float,
            overcomplete_auxk: bool, warm: bool = True) -> dict[str, list[float]]:
    """Per-step seconds of each library, one entry per round. Libraries run interleaved."""
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(B, d, generator=gen) for _ in range(steps)]
    stepfns: dict[str, Step] = {}
    for lib in libs:
        kwargs = {"auxk": overcomplete_auxk} if lib == "overcomplete" else {}
        stepfns[lib] = FACTORIES[lib](d, m, k, dead, **kwargs)
        for x in batches[:2]:  # warm-up: allocations, optimizer state, thread pools
            stepfns[lib](x)
    times: dict[str, list[float]] = {lib: [] for lib in libs}
    for r in range(rounds):
        order = libs[r % len(libs):] + libs[: r % len(libs)]
        for lib in order:
            # One untimed step first: the previous library's step has just evicted this one's weights
            # and optimizer state from the caches (dualsae's first step after a switch costs ~25% more
            # at the second setting), which a training loop never sees. --cold leaves it out.
            if warm:
                stepfns[lib](batches[0])
            t0 = time.perf_counter()
            for x in batches:
                stepfns[lib](x)
            times[lib].append((time.perf_counter() - t0) / steps)
    return times


def breakdown(d: int, m: int, k: int, B: int, rounds: int) -> list[tuple[str, float, float]]:
    """Where dualsae's step spends its time: the phases of dualsae.training.step._step timed one by one
    (min and median ms over ``rounds`` steps), and, for scale, the selection product alone
    (x [B, d] @ W_enc^T, 2 B d m FLOPs) and the top-k over its [B, m] result."""
    import torch.nn.functional as F

    from dualsae.core.block_topk import topk_indices
    from dualsae.core.sparse_ops import DecoderDots
    from dualsae.models.sae import SAE, SAEConfig
    from dualsae.training.config import TrainConfig
    from dualsae.training.step import _member_loss, clip_gradients, make_member

    config = TrainConfig.from_preset("real", method="specific", k=k, lr=LR)
    sae = SAE(SAEConfig(d=d, m=m, k=k), generator=torch.Generator().manual_seed(0))
    mem = make_member("image", sae, ("image",), config)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(B, d, generator=gen) for _ in range(3)]
    acc: dict[str, list[float]] = {}

    def tick(name: str, t0: float) -> float:
        t = time.perf_counter()
        acc.setdefault(name, []).append(t - t0)
        return t

    for it in range(rounds + 2):
        x = batches[it % len(batches)]
        t = time.perf_counter()
        with torch.no_grad():
            pre = F.linear(x - sae.b_dec, sae.W_enc, sae.b_enc)
        t = tick("selection product alone (reference)", t)
        topk_indices(pre, k)
        t = tick("its top-k alone (dualsae.core.block_topk; ref.)", t)
        pre.topk(k, dim=1, sorted=False)
        t = tick("torch.topk of it (reference)", t)
        del pre
        mem.opt.zero_grad(set_to_none=True)
        sae.decoder_dots = dots = DecoderDots(m)
        loss, _ = _member_loss(mem, config, {"image": x})
        sae.decoder_dots = None
        t = tick("step: forward + losses + logs", t)
        loss.backward()
        t = tick("step: backward (+ the projection's dots)", t)
        sae.remove_parallel_grad(dots.dots)
        t = tick("step: decoder-gradient projection", t)
        clip_gradients(mem.opt, config.grad_clip)
        t = tick("step: gradient norm (AdamW divides by the clip factor)", t)
        mem.opt.step()
        t = tick("step: AdamW (fused)", t)
        sae.normalize_decoder()
        tick("step: decoder renorm", t)
    return [(name, min(v[2:]), statistics.median(v[2:])) for name, v in acc.items()]


def keep_freed_memory() -> None:
    """Make glibc's malloc keep freed memory in the process instead of handing it back to the OS.

    By default a large tensor is its own mmap, and whether freeing it returns the pages (so that the
    next allocation of that size pays a page fault per 4 KB) depends on thresholds glibc adjusts from
    the process's history, i.e. on which library ran before. That made one library's step (sparsify's:
    0 or ~6,800 faults per step, 20 or 26 ms at the second setting) differ from run to run. With both
    thresholds fixed high no library pays those faults, the comparison is the same every run, and it
    is the one least favourable to dualsae, whose step already allocates its large tensors once.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):  # not glibc
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)


def peak_rss(lib: str, setting: dict, steps: int, dead: float, threads: int, old_src: str | None) -> tuple[float, float]:
    """(RSS after the model, optimizer and two warm-up steps, peak RSS over ``steps`` more steps), MiB, of
    ``lib`` alone in a fresh Python process (the interleaved run holds every library at once, and the
    peak of a process never comes down, so it cannot say which library's step needs what)."""
    import json
    import subprocess

    code = (
        "import json, sys, torch\n"
        f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        "import compare_libraries as cl\n"
        f"torch.set_num_threads({threads})\n"
        "cl.keep_freed_memory()\n"
        + (f"cl.load_old_dualsae({old_src!r})\n" if old_src else "")
        + f"s = {setting!r}\n"
        "gen = torch.Generator().manual_seed(1)\n"
        f"xs = [torch.randn(s['B'], s['d'], generator=gen) for _ in range({steps})]\n"
        f"cl.ACTIVATION = {ACTIVATION!r}\n"
        f"step = cl.FACTORIES[{lib!r}](s['d'], s['m'], s['k'], {dead!r})\n"
        "step(xs[0]); step(xs[0])\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20\n"
        "setup = rss()\n"
        "for x in xs: step(x)\n"
        # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's (fork), which holds every library.
        "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')][0] / 1024\n"
        "print(json.dumps([setup, hwm]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ.copy())
    setup, peak = json.loads(out.stdout.strip().splitlines()[-1])
    return setup, peak


def available(libs: list[str]) -> tuple[list[str], dict[str, str]]:
    ok, missing = [], {}
    for lib in libs:
        try:
            FACTORIES[lib](8, 16, 2, 0.0)
            ok.append(lib)
        except ImportError as e:
            missing[lib] = str(e)
    return ok, missing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per library per round (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--libs", default=",".join(LIBRARIES), help=f"comma-separated subset of {','.join(LIBRARIES)}")
    ap.add_argument("--dead", type=float, default=0.0, help="fraction of latents marked dead in every library (AuxK runs)")
    ap.add_argument("--overcomplete-auxk", action="store_true", help="overcomplete with its top_k_auxiliary_loss")
    ap.add_argument("--setting", type=int, default=None, help="run only setting 0 or 1")
    ap.add_argument("--size", default=None, metavar="D,M,K,B",
                    help="run this one setting instead (e.g. 768,65536,32,1024: the wide SAE of issue 17)")
    ap.add_argument("--activation", default="topk", choices=("topk", "batchtopk"),
                    help="dualsae's activation (the other libraries always run TopK)")
    ap.add_argument("--memory", action="store_true",
                    help="also each library's peak RSS over its steps, each in a fresh process (see peak_rss)")
    ap.add_argument("--breakdown", action="store_true", help="also time the phases of dualsae's step")
    ap.add_argument("--cold", action="store_true",
                    help="no untimed step before each library's timed steps in a round")
    ap.add_argument("--os-malloc", action="store_true",
                    help="leave glibc's malloc at its defaults (see keep_freed_memory)")
    ap.add_argument("--old-src", default=None,
                    help="an earlier checkout's src/ folder: adds library 'dualsae-old' (that version's step) "
                         "to --libs, to compare two versions of dualsae interleaved in one run")
    args = ap.parse_args()
    if args.old_src:
        load_old_dualsae(args.old_src)
        if "dualsae-old" not in args.libs.split(","):
            args.libs += ",dualsae-old"
    global ACTIVATION
    ACTIVATION = args.activation
    torch.set_num_threads(args.threads)
    if not args.os_malloc:
        keep_freed_memory()
    libs, missing = available([s for s in args.libs.split(",") if s])
    if "dualsae" not in libs:
        raise SystemExit(f"dualsae is not importable: {missing.get('dualsae')}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rounds} interleaved rounds x {args.steps} steps"
          f"{' (cold: no untimed step first)' if args.cold else ' after one untimed step'}; dead fraction {args.dead}; "
          f"malloc {'glibc defaults' if args.os_malloc else 'keeps freed memory'}; dualsae's activation {args.activation}")
    print("versions: " + ", ".join(f"{lib} {version(lib)}" for lib in libs))
    for lib, why in missing.items():
        print(f"skipped {lib}: {why}")
    settings = SETTINGS if args.setting is None else [SETTINGS[args.setting]]
    if args.size:
        d, m, k, B = (int(v) for v in args.size.split(","))
        settings = [dict(d=d, m=m, k=k, B=B)]
    for s in settings:
        times = compare(**s, libs=libs, rounds=args.rounds, steps=args.steps, dead=args.dead,
                        overcomplete_auxk=args.overcomplete_auxk, warm=not args.cold)
        base_min, base_med = min(times["dualsae"]), statistics.median(times["dualsae"])
        print(f"\nd {s['d']}, m {s['m']}, k {s['k']}, B {s['B']}")
        print(f"  {'library':<13} {'min ms':>8} {'median ms':>10} | {'/dualsae min':>12} {'median':>7}")
        for lib in libs:
            t = times[lib]
            lo, med = min(t), statistics.median(t)
            print(f"  {lib:<13} {1e3 * lo:>8.1f} {1e3 * med:>10.1f} | {lo / base_min:>11.2f}x {med / base_med:>6.2f}x", flush=True)
        if args.memory:
            print(f"  peak RSS, each library alone in a fresh process ({args.steps} steps after 2 warm-up steps; MiB):")
            print(f"  {'library':<13} {'after setup':>12} {'peak':>8} {'peak - setup':>13}")
            for lib in libs:
                setup, peak = peak_rss(lib, s, args.steps, args.dead, args.threads, args.old_src)
                print(f"  {lib:<13} {setup:>12.0f} {peak:>8.0f} {peak - setup:>13.0f}", flush=True)
        if args.breakdown:
            rows = breakdown(s["d"], s["m"], s["k"], s["B"], args.rounds)
            flops = 2 * s["B"] * s["d"] * s["m"]
            product = rows[0][1]
            step = sum(lo for name, lo, _ in rows if name.startswith("step:"))
            print(f"  dualsae step phases ({args.rounds} steps; min / median ms; selection product "
                  f"{flops / 1e9:.2f} GFLOP at {flops / product / 1e9:.0f} GFLOP/s)")
            for name, lo, med in rows:
                print(f"    {name:<38} {1e3 * lo:>8.1f} {1e3 * med:>8.1f}", flush=True)
            print(f"    sum of the step's phases (min)         {1e3 * step:>8.1f}  = "
                  f"{step / product:.2f}x the selection product alone", flush=True)


if __name__ == "__main__":
    main()
