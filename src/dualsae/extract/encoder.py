"""The dual encoder of a vision-language model: any Hugging Face ``transformers`` checkpoint with image and
text towers (CLIP, MetaCLIP, OpenCLIP, SigLIP, SigLIP2), from a local folder or a hub id
(``HF_HUB_OFFLINE=1`` works with a folder), with its processors and compute dtype.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from dualsae.core.distributed import resolve_device
from dualsae.core.errors import ConfigError, DataError
from dualsae.extract.records import _first_line

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _looks_local(model_id: str) -> bool:
    """A path, not a hub id ('org/name'): starts with / . ~, ends with /, or has more than one /."""
    return model_id.startswith(("/", ".", "~")) or model_id.endswith("/") or model_id.count("/") > 1


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """auto -> fp16 on CUDA (the encoders are trained in mixed precision), fp32 on CPU."""
    if dtype == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return dtype


def _accepted_kwargs(fn: Callable, inputs: dict) -> dict:
    """Keep the inputs ``fn`` names as parameters (tokenizers may add e.g. ``token_type_ids``)."""
    params = inspect.signature(fn).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return {k: v for k, v in inputs.items() if k in names}


def _as_embeddings(out: Any, modality: str, model_name: str) -> torch.Tensor:
    """[b, d] from ``get_*_features``: a tensor (transformers 4.x) or an output object whose
    ``pooler_output`` holds the projected embedding (transformers 5.x, e.g. CLIP, SigLIP)."""
    if isinstance(out, torch.Tensor):
        return out
    for name in (f"{modality}_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise ConfigError(f"{model_name}: get_{modality}_features returned {type(out).__name__} without "
                      f"'{modality}_embeds' or 'pooler_output'; expected a tensor [batch, d]")


class DualEncoder:
    """A transformers dual encoder with its processor; embeds PIL images and captions.

    All ``embed_*`` methods return float32 numpy arrays [b, d], L2-normalised when ``normalize``.
    """

    def __init__(self, model: Any, image_processor: Any, tokenizer: Any, name: str,
                 device: torch.device, dtype: str = "fp32", normalize: bool = True, text_padding: str | None = None):
        self.model, self.image_processor, self.tokenizer = model, image_processor, tokenizer
        self.name, self.device, self.dtype, self.normalize = name, device, dtype, normalize
        self.torch_dtype = DTYPES[dtype]
        self.text_padding, self.text_max_length = self._text_settings(text_padding)

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, model_id: str, device: str = "auto", dtype: str = "auto", normalize: bool = True) -> "DualEncoder":
        """Load ``AutoModel`` + ``AutoProcessor`` from a hub id or a local folder."""
        from transformers import AutoModel

        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        path = Path(model_id)
        if not path.exists() and _looks_local(model_id):
            raise DataError(f"{path}: no such model folder; expected a local transformers model folder (save_pretrained) or a hub id 'org/name'")
        if path.exists() and not (path / "config.json").is_file():
            raise DataError(f"{path}: has no config.json; expected a transformers model folder (the output of save_pretrained)")
        try:
            model = AutoModel.from_pretrained(model_id, dtype=DTYPES[dt])
        except Exception as e:  # noqa: BLE001 - truncated weights raise safetensors/torch errors of many types
            raise ConfigError(f"cannot load model '{model_id}' with AutoModel: {_first_line(e)}") from None
        for fn in ("get_image_features", "get_text_features"):
            if not callable(getattr(model, fn, None)):
                raise ConfigError(f"{model_id}: {type(model).__name__} has no {fn}; expected a dual encoder "
                                  f"(CLIP, MetaCLIP, SigLIP, SigLIP2, ...) with get_image_features and get_text_features")
        image_processor, tokenizer, padding = _load_processors(model_id)
        model.to(dev).eval()
        return cls(model, image_processor, tokenizer, model_id, dev, dt, normalize, padding)

    def _text_settings(self, padding: str | None) -> tuple[str, int | None]:
        """Padding and truncation length for captions.

        SigLIP-family text towers pool the *last* position and were trained on captions padded to
        the full length, so their processors require ``padding="max_length"``; CLIP-style towers
        pool the EOS token and take the attention mask, so padding to the longest caption in the
        batch gives the same embeddings faster. Captions are truncated to the position-embedding
        count of the text tower (77 for CLIP, 64 for SigLIP). ``padding`` (e.g. from the
        processor's own defaults) overrides the rule."""
        cfg = self.model.config
        text_cfg = getattr(cfg, "text_config", None) or cfg
        limits = [getattr(text_cfg, "max_position_embeddings", None), getattr(self.tokenizer, "model_max_length", None)]
        limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
        max_length = min(limits) if limits else None
        if padding is None:
            padding = "max_length" if "siglip" in str(getattr(cfg, "model_type", "")) else "longest"
        if padding == "max_length" and max_length is None:
            raise ConfigError(f"{self.name}: the text tower needs padding to a fixed length but neither the config nor the tokenizer gives a maximum length")
        return padding, max_length

    def info(self) -> dict:
        import transformers

        cfg = self.model.config
        return {"model": self.name, "model_class": type(self.model).__name__,
                "model_type": getattr(cfg, "model_type", None), "transformers_version": transformers.__version__,
                "device": str(self.device), "compute_dtype": self.dtype,
                "text_padding": self.text_padding, "text_max_length": self.text_max_length}

    # ---------------------------------------------------------------- images
    def prepare_image(self, image: Any) -> dict[str, torch.Tensor]:
        """Processor outputs for one PIL image, each with a leading batch dim of 1 (thread-safe)."""
        feats = self.image_processor(images=[image], return_tensors="pt")
        return {k: v for k, v in feats.items() if isinstance(v, torch.Tensor)}

    def _finish(self, x: torch.Tensor) -> np.ndarray:
        x = x.float()
        if self.normalize:
            x = torch.nn.functional.normalize(x, dim=-1)
        return x.cpu().numpy()

    @torch.inference_mode()
    def embed_prepared(self, prepared: Sequence[dict[str, torch.Tensor]]) -> np.ndarray:
        """prepared: outputs of :meth:`prepare_image`; returns [len(prepared), d] float32."""
        batch = {k: torch.cat([p[k] for p in prepared], dim=0) for k in prepared[0]}
        batch = {k: (v.to(self.device, self.torch_dtype) if v.is_floating_point() else v.to(self.device)) for k, v in batch.items()}
        fn = self.model.get_image_features
        return self._finish(_as_embeddings(fn(**_accepted_kwargs(fn, batch)), "image", self.name))

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """PIL images -> [b, d] float32."""
        return self.embed_prepared([self.prepare_image(im) for im in images])

    # ---------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        kw: dict[str, Any] = {"padding": self.text_padding, "return_tensors": "pt"}
        if self.text_max_length is not None:
            kw.update(truncation=True, max_length=self.text_max_length)
        return dict(self.tokenizer(list(texts), **kw))

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> [b, d] float32 (truncated to the text tower's maximum length)."""
        tokens = {k: v.to(self.device) for k, v in self.tokenize(texts).items() if isinstance(v, torch.Tensor)}
        fn = self.model.get_text_features
        return self._finish(_as_embeddings(fn(**_accepted_kwargs(fn, tokens)), "text", self.name))

    def embed_texts_batched(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        parts = [self.embed_texts(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return np.concatenate(parts, axis=0)


def _load_processors(model_id: str) -> tuple[Any, Any, str | None]:
    """(image processor, tokenizer, text padding the processor asks for or None) from
    ``AutoProcessor``, falling back to ``AutoImageProcessor`` + ``AutoTokenizer``."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    image_processor = tokenizer = padding = None
    try:
        processor = AutoProcessor.from_pretrained(model_id)
        image_processor = getattr(processor, "image_processor", None)
        tokenizer = getattr(processor, "tokenizer", None)
        # e.g. Siglip2Processor.text_kwargs = {"padding": "max_length", ...}
        defaults = getattr(type(processor), "text_kwargs", None)
        if isinstance(defaults, dict) and isinstance(defaults.get("padding"), str):
            padding = defaults["padding"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # some checkpoints ship a tokenizer and an image processor without a processor
    try:
        if image_processor is None:
            image_processor = AutoImageProcessor.from_pretrained(model_id)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(model_id)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{model_id}: cannot load the image processor and tokenizer: {_first_line(e)}") from None
    return image_processor, tokenizer, padding
