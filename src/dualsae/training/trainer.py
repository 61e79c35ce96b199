"""One trainer for the four methods (paper Sec. 5, 6.1, 6.2; App. E.2, E.4).

Methods (``TrainConfig.method``; each a loss function in :data:`dualsae.training.methods.METHODS`):

* ``specific``: one SAE per modality, each trained on its own modality only, with ``latents // 2``
  latents so the pair has the parameters of one shared SAE with ``latents`` (Sec. 6.1).
* ``shared``: one SAE with ``latents`` latents on image and text rows together.
* ``group-sparse``: shared, on paired batches, plus lambda * mean_i sum_j sqrt(z_I,ij^2 + z_T,ij^2)
  (Kaushik et al.; the form of Prop. 3). By default lambda is the scale-free lambda-tilde of Prop. 3
  times a scale measured once before training (:mod:`dualsae.training.group_sparse_scale`).
* ``iso-energy``: shared, on paired batches, plus beta * L_align (Dhimoila et al.): the cosine form
  of their official code, or the simplified dot form of Prop. 4.

Every method's loss is a mean over the B pairs of a per-pair sum (:mod:`dualsae.training.methods`).

Each step reads ``batch_size`` *pairs*: a shared SAE's step sees both embeddings of its pairs; each
specific SAE's step sees its own modality's rows of the same pairs. The row order of an epoch is a
pure function of (seed, epoch) and all other state (weights, AdamW moments, dead-latent counters,
BatchTopK threshold, step) is checkpointed, so ``resume=True`` ends with the weights an
uninterrupted run would have produced.

Each SAE trains on its rows times its input scale (:mod:`dualsae.training.input_scale`, 1.0 for rows
near unit norm), and :func:`finish` folds the factor into the weights before they are saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dualsae.core.distributed import Distributed
from dualsae.core.errors import ConfigError, DataError
from dualsae.core.progress import tqdm
from dualsae.models.pair import SAEPair
from dualsae.store.paired import PairedEmbeddings
from dualsae.training.config import TrainConfig, lr_at, steps_per_epoch
from dualsae.training.group_sparse_scale import use_group_sparse_scale
from dualsae.training.guards import check_loss, check_weights
from dualsae.training.methods import METHODS
from dualsae.training.run_folder import RunFolder
from dualsae.training.step import _Batches, _make_members, _Member, _step


def train(
    store: PairedEmbeddings,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    dist: Distributed | None = None,
    prefetch: bool | None = None,
) -> SAEPair:
    """Train ``config.method`` on ``store`` (already restricted to the training rows).

    ``dist``: under torchrun (:meth:`Distributed.from_env`) each rank reads its slice of every
    global batch of ``batch_size`` pairs and the step is that of the whole batch (DDP semantics,
    see :mod:`dualsae.core.distributed`); rank 0 alone writes files and shows progress. ``prefetch``:
    read the next batch in a background thread (pinned memory on CUDA); default on for CUDA.

    Writes into ``out_dir`` (if given; :mod:`dualsae.models.run_schema`): ``config.json``,
    ``metrics.jsonl`` (one row per ``log_every`` steps), ``checkpoint/state.safetensors`` every
    ``checkpoint_every`` steps, and on completion the SAE folder(s) ``image/`` + ``text/`` or
    ``shared/`` and ``summary.json``. Returns the trained model as an :class:`SAEPair`.
    """
    dist = dist if dist is not None else Distributed()
    device = dist.device(device)
    check_trainable(store, config, dist)
    members = _make_members(config, store, device)
    folder = RunFolder(out_dir, config, store, dist)
    start = folder.begin(members, resume)
    scales = folder.input_scales(resume)
    for mem in members:
        mem.input_scale = scales[mem.name]
    calibration = use_group_sparse_scale(members, config, store, device, folder.record_dir(resume), resume)
    initialise(members, store, config, device, dist, fresh=start == 0)
    total = steps_per_epoch(store.n, config.batch_size) * config.epochs
    batches = _Batches(store, config, dist, total, device, prefetch)
    show = _Progress(config, total, start, progress and dist.is_main, on_step)
    folder.start_clock()
    logs: dict[str, float] = {}
    with dist.active():
        for step in range(start, total):
            batch = batches(step)
            logs = _step(members, config, batch, lr_at(step, total, config), batches.reduce_grads(batch))
            check_loss(step + 1, logs, folder.last_good)
            logs = folder.log(step, total, lr_at(step, total, config), logs, batches.rows(batch), batches.global_rows)
            folder.checkpoint(step + 1, total, members)
            show(step + 1, logs)
            batches.release(step)
    show.close()
    batches.close()
    return finish(members, config, folder, total, logs, calibration)


def check_trainable(store: PairedEmbeddings, config: TrainConfig, dist: Distributed) -> None:
    """Refuse a store or batch size no step could run on (before anything is written)."""
    if dist.world > min(config.batch_size, store.n):
        raise ConfigError(f"training field 'batch_size' is {config.batch_size} pairs over {store.n:,} rows; each of the {dist.world} ranks needs at least one row per step")
    if METHODS[config.method].paired:
        store.require_pairs(f"method {config.method}")
    if store.n < 1:
        raise DataError(f"{store.root}: the training split has no rows")
    if config.batch_size > store.n:
        raise ConfigError(f"{store.root}: training field 'batch_size' is {config.batch_size:,}, larger than the "
                          f"{store.n:,} rows of the training split (the last partial batch is dropped, so no step "
                          f"would run); use --batch-size {store.n} or less")


def initialise(members: list[_Member], store: PairedEmbeddings, config: TrainConfig, device: torch.device,
               dist: Distributed, fresh: bool) -> None:
    """A fresh run's decoder biases from 10,000 of each SAE's training rows; then every rank holds
    rank 0's weights (identical already: same seed or checkpoint; as DDP does)."""
    if fresh:
        for mem in members:
            sample = torch.cat([store.sample(m, 10_000, seed=config.seed) for m in mem.modalities])
            mem.sae.init_decoder_bias(sample.to(device) * mem.input_scale if mem.input_scale != 1.0 else sample.to(device))
    for mem in members:
        dist.broadcast_module(mem.sae)


class _Progress:
    """The progress bar (rank 0) and the ``on_step`` callback, after each step."""

    def __init__(self, config: TrainConfig, total: int, start: int, shown: bool,
                 on_step: Callable[[int, dict[str, float]], None] | None) -> None:
        self.shown, self.on_step = shown, on_step
        self.bar = tqdm(total=total, initial=start, disable=not shown, desc=f"train {config.method}", unit="step", dynamic_ncols=True)

    def __call__(self, done: int, logs: dict[str, float]) -> None:
        if self.on_step is not None:
            self.on_step(done, logs)
        if self.shown:
            mse = np.mean([v for k, v in logs.items() if k.startswith("mse_")])
            self.bar.set_postfix(loss=f"{logs['loss']:.4g}", mse=f"{mse:.4g}", L0=f"{logs['l0']:.1f}",
                                 dead=f"{logs['dead_frac']:.3f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def finish(members: list[_Member], config: TrainConfig, folder: RunFolder, total: int, logs: dict[str, float],
           calibration: dict | None) -> SAEPair:
    """Check the final weights, save the run (rank 0) and return the model in eval mode."""
    for mem in members:  # the returned model's forward gives fresh tensors again
        mem.sae.reuse_selection_memory, mem.sae._selection_buffer = False, None
    saes = {mem.name: mem.sae for mem in members}
    pair = SAEPair(config.method, saes["shared"], saes["shared"]) if "shared" in saes else SAEPair(config.method, saes.get("image"), saes.get("text"))
    check_weights(total, ((mem.name, mem.sae) for mem in members), folder.last_good)
    for mem in members:  # trained on input_scale * x: the saved and returned SAEs take raw rows
        mem.sae.fold_input_scale(mem.input_scale)
    folder.finish(members, total, logs, calibration)
    folder.dist.barrier()  # every rank returns once the run folder is complete
    for mem in members:
        mem.sae.eval()
    return pair


__all__ = ["train"]
