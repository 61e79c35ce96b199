"""The sparse autoencoder (paper eq. 3 and footnote 1).

Footnote 1 of the paper: experiments use TopK activations, bias terms and *separate* encoder and
decoder weights, so the model here is

    pre  = W_enc (x - b_dec) + b_enc                     pre:  [batch, m]
    z    = sigma(pre)  (TopK / BatchTopK / ReLU / JumpReLU) z:    [batch, m], at most k non-zero
    x_hat = sum_j z_j w_j + b_dec                         x_hat: [batch, d]

Weights are stored row-wise: ``W_enc[j]`` is the encoder row of latent j and ``W_dec[j]`` is the
decoder column w_j (a feature direction, kept at unit norm), both ``[m, d]``. Keeping the decoder
row-major lets ``decode`` be an ``embedding_bag`` over the k selected rows instead of a dense
``[batch, m] @ [m, d]`` product.

Training uses the sparse path (``forward``): the dense encoder product that *selects* the active
latents runs without autograd; only the k selected pre-activations are recomputed with a graph
(a gather of k encoder rows), and decoding is an ``embedding_bag``. Its output equals the dense
computation (tested in ``tests/test_sae.py``).

The activation sigma is a typed config of its own (:mod:`dualsae.models.activations`: TopK,
BatchTopK, ReLU), looked up by the name ``SAEConfig.activation`` that ``config.json`` stores; it
holds the selection and encoding logic, the SAE the maps they share.

SAEs trained by other libraries (:mod:`dualsae.models.formats`) may not subtract ``b_dec`` before the
encoder (SAELens with ``apply_b_dec_to_input: false``, dictionary_learning's JumpReLU): config field
``b_dec_on_input`` false gives ``pre = W_enc x + b_enc`` exactly, rather than folding ``W_enc b_dec``
into ``b_enc`` (which would round differently from the source library).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dualsae.core.codes import SparseCodes
from dualsae.core.distributed import all_sum
from dualsae.core.errors import CheckpointError, ConfigError
from dualsae.core.screened_topk import Selection, bf16_matmul_is_fast, screen_product
from dualsae.core.sparse_ops import (
    DecoderDots,
    Pattern,
    gather_pre,
    gather_pre_values,
    sort_rows,
    sparse_decode,
)
from dualsae.files.atomic import save_tensors, write_json
from dualsae.files.jsonfiles import read_json_object
from dualsae.files.tensorfiles import read_tensors
from dualsae.models.activations import activation_for
from dualsae.models.activations.base import SAEOutput
from dualsae.models.sae_config import SAEConfig

#: Smallest width (and batch) whose training selection runs through the certified bfloat16 screen
#: (dualsae.core.screened_topk); below it the float32 product is cheap enough (benchmarks/wide_step.py).
SCREEN_MIN_LATENTS = 16_384
SCREEN_MIN_ROWS = 64
SAE_FORMAT = "dualsae.sae/1"


def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-7) -> torch.Tensor:
    """Geometric median of the rows of ``x`` ([n, d] -> [d]) by Weiszfeld's algorithm."""
    x = x.double()
    y = x.mean(dim=0)
    for _ in range(iters):
        dist = (x - y).norm(dim=1).clamp_min(1e-12)
        w = 1.0 / dist
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() <= tol * max(1.0, y.norm().item()):
            y = y_new
            break
        y = y_new
    return y.float()


class SAE(nn.Module):
    """TopK / BatchTopK / ReLU / JumpReLU sparse autoencoder with separate encoder and decoder (eq. 3)."""

    def __init__(self, config: SAEConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if config.d is None or config.m is None:
            raise ConfigError(f"an SAE needs its config's d and m, found d={config.d}, m={config.m}")
        self.config = config
        #: The typed activation (TopK / BatchTopK / ReLU): the selection and encoding of sigma.
        self.activation = activation_for(config)
        d, m = config.d, config.m
        w = torch.randn(m, d, generator=generator)
        w = F.normalize(w, dim=1)
        self.W_dec = nn.Parameter(w.clone())
        # Encoder initialised as the decoder's transpose (Gao et al. 2024).
        self.W_enc = nn.Parameter(w.clone())
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.Parameter(torch.zeros(d))
        # BatchTopK inference threshold (Bussmann et al. 2024); negative means "not estimated yet".
        # JumpReLU: one threshold per latent instead (0: a fresh one acts as ReLU).
        per_latent = type(self.activation).per_latent_threshold
        self.register_buffer("threshold", torch.zeros(m) if per_latent else torch.tensor(-1.0))
        # Training samples since each latent last fired (for AuxK's dead-latent mask).
        self.register_buffer("samples_since_fired", torch.zeros(m, dtype=torch.long))
        # dtype of the training forward's selection product only (TrainConfig.selection_dtype):
        # with bfloat16 the [batch, m] product that *chooses* the latents runs in bfloat16 and the
        # chosen pre-activations are recomputed in float32, so values and gradients stay float32.
        self.selection_dtype = torch.float32
        # Training only: reuse one buffer for the selection product (see selection_pre_activations).
        self.reuse_selection_memory = False
        self._selection_buffer: torch.Tensor | None = None
        # Set by the trainer for one step: the sparse decodes' share of the projection's dots.
        self.decoder_dots: DecoderDots | None = None

    # ------------------------------------------------------------------ basic maps
    @property
    def d(self) -> int:
        return self.config.d

    @property
    def m(self) -> int:
        return self.config.m

    def input_offset(self) -> torch.Tensor:
        """What is subtracted from x before the encoder: ``b_dec``, or zeros when ``b_dec_on_input`` is false. -> [d]"""
        return self.b_dec if self.config.b_dec_on_input else torch.zeros_like(self.b_dec)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """pre = W_enc (x - b_dec) + b_enc (or W_enc x + b_enc, see ``b_dec_on_input``).  x: [batch, d] -> [batch, m]."""
        if not self.config.b_dec_on_input:
            return F.linear(x, self.W_enc, self.b_enc)
        return F.linear(x - self.b_dec, self.W_enc, self.b_enc)

    def gather_pre(self, x: torch.Tensor, idx: torch.Tensor, pre_all: torch.Tensor,
                   pattern: Pattern | None = None) -> torch.Tensor:
        """Pre-activations at selected latents with autograd.

        x: [batch, d]; idx: [batch, w] sorted per row; pre_all: [batch, m] computed without autograd.
        Returns [batch, w]. Only the w selected encoder rows take part in the backward pass, so it
        costs O(batch * w * d) instead of O(batch * m * d). ``pattern``: ``Pattern(idx, m)``, to
        share with the decoder of the same selection.
        """
        if self.selection_dtype != torch.float32:  # pre_all is approximate: recompute the w values
            with torch.no_grad():
                exact = torch.einsum("bd,bwd->bw", x - self.input_offset(), self.W_enc[idx]) + self.b_enc[idx]
            return gather_pre_values(x, self.W_enc, self.b_enc, self.input_offset(), idx, exact, pattern)
        return gather_pre(x, self.W_enc, self.b_enc, self.input_offset(), idx, pre_all, pattern)

    def selection_pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """pre [batch, m] for choosing latents, in ``selection_dtype`` (returned as float32).

        With ``reuse_selection_memory`` (the trainer's setting) the float32 product is written into
        one [batch, m] buffer kept from step to step, so the result is valid until the next call: a
        fresh output of that size every step costs its page faults each time (at batch 1,024 and
        m 8,192, 32 MB: 34 -> 27 ms for the product on 2 CPU threads).
        """
        if self.selection_dtype == torch.float32:
            if not self.reuse_selection_memory:
                return self.pre_activations(x)
            buf = self._selection_buffer
            shape = (x.shape[0], self.m)
            if buf is None or buf.shape != shape or buf.device != x.device or buf.dtype != self.W_enc.dtype:
                buf = self._selection_buffer = torch.empty(shape, dtype=self.W_enc.dtype, device=x.device)
            return torch.addmm(self.b_enc, x - self.input_offset(), self.W_enc.t(), out=buf)
        dt = self.selection_dtype
        return F.linear((x - self.input_offset()).to(dt), self.W_enc.to(dt), self.b_enc.to(dt)).float()

    def selection_screen(self, x: torch.Tensor) -> Selection | None:
        """The certified bfloat16 screen of the training selection (:mod:`dualsae.core.screened_topk`),
        or None where the float32 product runs instead: a float32 selection (``selection_dtype``) on a
        CPU with bfloat16 kernels, at least ``SCREEN_MIN_LATENTS`` latents and ``SCREEN_MIN_ROWS`` rows.

        x: [batch, d]. The selection made from it is the float32 product's; only the [batch, m] tensor
        handed to AuxK (``SAEOutput.pre_acts``) is the approximate bfloat16 one.
        """
        if self.selection_dtype != torch.float32:
            return None
        return self._screen(x, self.reuse_selection_memory)

    def _screen(self, x: torch.Tensor, reuse: bool) -> Selection | None:
        """The screen of ``pre_activations(x)`` where it pays (float32 weights and x, a CPU with bfloat16
        kernels, m >= SCREEN_MIN_LATENTS, batch >= SCREEN_MIN_ROWS), else None. ``reuse``: write the
        [batch, m] bfloat16 product into one buffer kept between calls (valid until the next)."""
        if (x.dtype != torch.float32 or self.W_enc.dtype != torch.float32 or self.m < SCREEN_MIN_LATENTS
                or x.shape[0] < SCREEN_MIN_ROWS or not bf16_matmul_is_fast(x.device)):
            return None
        xc = x - self.input_offset()
        W, b = self.W_enc.detach(), self.b_enc.detach()
        out = None
        if reuse:
            buf = self._selection_buffer
            shape = (x.shape[0], self.m)
            if buf is None or buf.shape != shape or buf.dtype != torch.bfloat16 or buf.device != x.device:
                buf = self._selection_buffer = torch.empty(shape, dtype=torch.bfloat16, device=x.device)
            out = buf
        screen = screen_product(xc, W, b, out=out)

        def exact(rows: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor:
            xr = xc if rows is None else xc.index_select(0, rows)
            return Pattern(idx, self.m).sampled_dots(xr, W) + b[idx]

        def dense(rows: torch.Tensor) -> torch.Tensor:
            return F.linear(xc.index_select(0, rows), W, b)

        return Selection(screen, exact, dense)

    def gather_pre_exact(self, x: torch.Tensor, idx: torch.Tensor, values: torch.Tensor,
                         pattern: Pattern | None = None) -> torch.Tensor:
        """As :meth:`gather_pre`, the forward values given (float32 pre-activations at idx, [batch, w],
        from the screened selection): the same gradients through the w selected encoder rows."""
        return gather_pre_values(x, self.W_enc, self.b_enc, self.b_dec, idx, values, pattern)

    def decode(self, codes: SparseCodes | torch.Tensor) -> torch.Tensor:
        """x_hat = sum_j z_j w_j + b_dec (eq. 3).

        codes: SparseCodes (``[batch, width]`` values/indices; never densified) or dense ``[batch, m]``.
        Returns [batch, d].
        """
        if isinstance(codes, SparseCodes):
            return self.decode_sparse(codes.values, codes.indices) + self.b_dec
        return codes @ self.W_dec + self.b_dec

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor, pattern: Pattern | None = None) -> torch.Tensor:
        """sum_j z_j w_j without the bias: an embedding_bag over the selected decoder rows. -> [batch, d]

        ``pattern``: ``Pattern(indices, m)`` of indices already sorted per row (shared with the encoder).
        """
        if values.shape[1] == 0:
            return torch.zeros(values.shape[0], self.d, dtype=self.W_dec.dtype, device=self.W_dec.device)
        if torch.is_grad_enabled() and (values.requires_grad or self.W_dec.requires_grad):
            if pattern is None:
                indices, values = sort_rows(indices, values)
            return sparse_decode(values.to(self.W_dec.dtype), indices, self.W_dec, pattern, self.decoder_dots)
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values.to(self.W_dec.dtype), mode="sum")

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode(self, x: torch.Tensor, dense: bool = False) -> SparseCodes | torch.Tensor:
        """Latent codes at inference. x: [batch, d] -> SparseCodes [batch, width] or dense [batch, m].

        TopK: the k largest pre-activations, ReLU'd. BatchTopK: pre-activations above the threshold
        estimated during training (Bussmann et al.), so the number of active latents varies per row.
        ReLU: all positive pre-activations.
        """
        x = x.to(self.W_enc.dtype)
        # Wide SAEs on a CPU with bfloat16 kernels: the same codes from the certified screen, ~2x faster
        # at m = 65,536 (benchmarks/encode_screen.py); the float32 product where it does not apply.
        screen = None if x.requires_grad else self._screen(x, reuse=False)
        codes = None if screen is None else self.activation.encode_screened(self, screen)
        if codes is None:
            codes = self.activation.encode(self, self.pre_activations(x))
        return codes.to_dense() if dense else codes

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat at inference. x: [batch, d] -> [batch, d]."""
        return self.decode(self.encode(x))

    # ------------------------------------------------------------------ training
    def forward(self, x: torch.Tensor) -> SAEOutput:
        """Training forward pass (sparse). x: [batch, d] -> SAEOutput.

        The dense product that chooses the active latents runs under ``no_grad``; the selected
        pre-activations are recomputed with autograd from k gathered encoder rows; decoding is an
        ``embedding_bag``. Gradients equal those of the dense computation. (ReLU is dense.) The
        activation does it: :meth:`dualsae.models.activations.base.Activation.forward`.
        """
        return self.activation.forward(self, x)

    @torch.no_grad()
    def update_fired(self, codes: SparseCodes) -> None:
        """Advance the dead-latent counters by one batch. codes: [batch, width]."""
        # Entries that did not fire (value 0) point at a spare slot m, so no boolean indexing is needed.
        fired = torch.zeros(self.m + 1, dtype=torch.int32, device=codes.indices.device)
        fired.index_fill_(0, torch.where(codes.values > 0, codes.indices, self.m).reshape(-1), 1)
        # Under torchrun: fired anywhere in the global batch, which has the ranks' rows together.
        fired = all_sum(fired[: self.m]) > 0
        rows = int(all_sum(torch.tensor(codes.batch, device=fired.device)).item())
        self.samples_since_fired.add_(rows).masked_fill_(fired, 0)

    def dead_mask(self) -> torch.Tensor:
        """[m] bool: latents that have not fired for ``dead_window`` training samples."""
        return self.samples_since_fired >= self.config.dead_window

    @torch.no_grad()
    def init_decoder_bias(self, sample: torch.Tensor) -> None:
        """Initialise b_dec from this SAE's training data. sample: [n, d]."""
        how = self.config.dec_bias_init
        if how == "zero" or sample.numel() == 0:
            self.b_dec.zero_()
        elif how == "mean":
            self.b_dec.copy_(sample.float().mean(0))
        else:
            self.b_dec.copy_(geometric_median(sample.float()))

    @torch.no_grad()
    def remove_parallel_grad(self, dots: torch.Tensor | None = None) -> None:
        """Project out the gradient component parallel to each decoder column (keeps unit norm to first order).

        dots: [m] ``<g_j, w_j>`` when the step's sparse decodes accumulated them (:class:`DecoderDots`);
        the projection is then one pass over the gradient instead of two. None: measured here.
        """
        g = self.W_dec.grad
        if g is None:
            return
        w = self.W_dec.data
        if dots is None:
            dots = torch.linalg.vecdot(g, w)
        # In place: g -= <g, w> w. (Row blocks that stay in cache halve the memory traffic on one
        # thread, but each block is a parallel region of its own, and on a loaded 2-core machine
        # those cost more than they save: measured, not kept.)
        g.addcmul_(w, dots.unsqueeze(1), value=-1.0)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Renormalise decoder columns to unit norm (after each optimizer step)."""
        w = self.W_dec.data
        w.div_(w.norm(dim=1, keepdim=True).clamp_min_(1e-12))

    @torch.no_grad()
    def fold_input_scale(self, factor: float) -> None:
        """Make this SAE, trained on rows ``factor * x``, work on the raw rows x (in place).

        TopK, BatchTopK, ReLU and JumpReLU are positively homogeneous and eq. 3 is affine, so with
        ``b_enc``, ``b_dec`` and the threshold (BatchTopK's scalar, JumpReLU's per latent) divided by ``factor``: pre(x) = pre'(factor x) / factor,
        z(x) = z'(factor x) / factor and x_hat(x) = x_hat'(factor x) / factor, the same latents
        selected. ``W_enc`` and the unit-norm decoder columns ``W_dec`` are unchanged. 1.0: nothing.
        """
        if factor == 1.0:
            return
        if not (factor > 0 and torch.isfinite(torch.tensor(factor))):
            raise ConfigError(f"an input scale must be a finite number > 0, found {factor}")
        self.b_enc.div_(factor)
        self.b_dec.div_(factor)
        t = self.threshold
        if t.numel() > 1 or float(t) >= 0:  # a negative scalar: BatchTopK's not estimated yet, and stays so
            t.div_(factor)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` (atomically each)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(folder / "model.safetensors", self.state_dict(), metadata={"format": SAE_FORMAT})
        write_json(folder / "config.json", {"format": SAE_FORMAT, "sae": self.config.to_dict()})

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "SAE":
        """Load an SAE saved by :meth:`save`; checks every tensor's name and shape."""
        folder = Path(folder)
        cfg_path = folder / "config.json"
        raw = read_json_object(cfg_path, "an SAE folder holds config.json and model.safetensors", CheckpointError)
        if "sae" not in raw:
            raise CheckpointError(f"{cfg_path}: expected field 'sae', found fields {sorted(raw)}")
        config = SAEConfig.from_dict(raw["sae"], source=str(cfg_path))
        if config.d is None or config.m is None:
            raise CheckpointError(f"{cfg_path}: SAE config fields 'd' and 'm' must be integers, found d={config.d}, m={config.m}")
        model = cls(config)
        model.load_state_dict(load_checked_tensors(folder / "model.safetensors", model.state_dict()))
        return model.to(device)


def load_checked_tensors(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read a safetensors file and check it has exactly the expected names and shapes."""

    tensors = read_tensors(path, CheckpointError)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {missing}")
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor(s) {extra}")
    for name, ref in expected.items():
        if tuple(tensors[name].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{path}: tensor '{name}' has shape {list(tensors[name].shape)}, expected {list(ref.shape)} from config.json"
            )
        tensors[name] = tensors[name].to(ref.dtype)
    return tensors


def n_params_for(d: int, m: int) -> int:
    """Parameter count of an SAE: two [m, d] matrices plus biases."""
    return 2 * m * d + m + d


__all__ = ["SAE", "SAEConfig", "SAEOutput", "geometric_median", "n_params_for"]
