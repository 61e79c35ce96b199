"""dualsae: modality-specific sparse autoencoders and post-hoc cross-modal alignment.

Implements "modality-specific SAEs + post-hoc alignment" (paper Sec. 5) and the baselines it is
compared with (shared SAE, group-sparse loss, Iso-Energy alignment loss), on joint embeddings of
vision-language models.

The public API (the README's Python example uses it)::

    from dualsae import PairedEmbeddings, TrainConfig, train, align, AlignedPair, load

* :class:`PairedEmbeddings` opens a store (``image.npy``/``text.npy``/``meta.jsonl`` or clip-retrieval
  output); :class:`TrainConfig` (``from_preset``) and :func:`train` train one of the four methods;
  :func:`align` aligns a specific pair post hoc (eqs. 5-7) into an :class:`AlignedPair`;
  :func:`load` opens any folder dualsae writes that holds a model (run, aligned folder, bare SAE).
* Other libraries' SAEs: :func:`load_sae` reads a SAELens, sparsify, overcomplete, dictionary_learning
  or dualsae SAE folder; :func:`imported_pair` makes two of them a pair for :func:`align`.
* Using a pair: :func:`translate`, :func:`steer`, :func:`latents_for` (:mod:`dualsae.use`) and
  :func:`top_examples` (:mod:`dualsae.evaluation.top_rows`).

Everything else is importable from its subpackage; the layers are described in DESIGN.md and
checked by the import-linter contract in pyproject.toml.
"""

from dualsae.alignment.confidence import ConfidenceOptions
from dualsae.alignment.post_hoc import AlignmentResult, align
from dualsae.core.errors import CheckpointError, ConfigError, DataError, DualSAEError
from dualsae.evaluation.top_rows import top_examples
from dualsae.models.aligned import AlignedPair
from dualsae.models.formats import imported_pair, load_sae
from dualsae.models.load import load_model as load
from dualsae.models.pair import SAEPair
from dualsae.models.sae import SAE, SAEConfig
from dualsae.store.paired import PairedEmbeddings
from dualsae.training.config import TrainConfig
from dualsae.training.trainer import train
from dualsae.use.steering import steer
from dualsae.use.translation import latents_for, translate

__version__ = "0.1.0"

__all__ = [
    "PairedEmbeddings", "TrainConfig", "train", "align", "AlignedPair", "load",
    "AlignmentResult", "ConfidenceOptions", "SAE", "SAEConfig", "SAEPair",
    "translate", "steer", "latents_for", "top_examples", "load_sae", "imported_pair",
    "DualSAEError", "ConfigError", "DataError", "CheckpointError", "__version__",
]
