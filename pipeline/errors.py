"""Named errors for problems a user can fix.

Every error raised for bad input derives from :class:`PipelineError`. The CLI prints
``ClassName: message`` on one line and exits non-zero; the message must name the file (or
config key) and the problem, so a user can act on it without a traceback.
"""

from __future__ import annotations

__all__ = [
    "PipelineError",
    "ConfigError",
    "ManifestError",
    "ImageError",
    "CheckpointError",
]


class PipelineError(Exception):
    """Base class for user-facing errors (bad input, bad config, bad files)."""


class ConfigError(PipelineError):
    """A config file, key or value is invalid."""


class ManifestError(PipelineError):
    """A manifest is malformed or refers to files that cannot be used."""


class ImageError(PipelineError):
    """A scan or label file cannot be read or is not usable (corrupt, wrong dimensionality, NaNs, ...)."""


class CheckpointError(PipelineError):
    """A checkpoint is missing, truncated, untrusted or of another network."""
