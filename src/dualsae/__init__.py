"""dualsae: modality-specific sparse autoencoders and post-hoc cross-modal alignment.

Implements "modality-specific SAEs + post-hoc alignment" (paper Sec. 5) and the baselines it is
compared with (shared SAE, group-sparse loss, Iso-Energy alignment loss), on joint embeddings of
vision-language models.
"""

from dualsae.core.errors import CheckpointError, ConfigError, DataError, DualSAEError

__version__ = "0.1.0"

__all__ = ["DualSAEError", "ConfigError", "DataError", "CheckpointError", "__version__"]
