"""User-facing errors.

Every error a user can cause (bad file, bad field, bad flag) is raised as :class:`DualSAEError`
with a one-line message naming the file, the field, what was expected and what was found. The CLI
prints the message on one line and exits non-zero; library users can catch the class.
"""

from __future__ import annotations


class DualSAEError(Exception):
    """An error the user can act on; ``str(err)`` is a complete one-line explanation."""


class ConfigError(DualSAEError):
    """A configuration value is out of range, unknown, or inconsistent with another."""


class DataError(DualSAEError):
    """An embedding store or dataset file is missing, malformed or inconsistent."""


class CheckpointError(DualSAEError):
    """A saved model or run folder is missing tensors, has wrong shapes, or a different config."""
