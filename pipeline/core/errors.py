"""Named errors for problems a user can fix.

Every error raised for bad input derives from :class:`PipelineError`. The CLI prints
``ClassName: message`` on one line and exits non-zero; the message must name the file (or
config key) and the problem, so a user can act on it without a traceback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = [
    "PipelineError",
    "ConfigError",
    "UsageError",
    "BusyError",
    "ManifestError",
    "ImageError",
    "CheckpointError",
    "OutputError",
    "MemoryLimitError",
    "writing",
]


class PipelineError(Exception):
    """Base class for user-facing errors (bad input, bad config, bad files)."""


class ConfigError(PipelineError):
    """A config file, key or value is invalid.

    Args:
        message: one line naming the key (or file) and the problem.
        key: the config key at fault (``train.loss``), when there is one; :func:`pipeline.core.config.load_config`
            uses it to say whether the value came from the file or from ``--set``.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class UsageError(PipelineError):
    """An argument of a command (or of the function behind it) is invalid: a bad value, options that
    do not go together, or a path that names the wrong kind of thing; as argparse's own usage errors,
    but found after parsing."""


class BusyError(PipelineError):
    """Another process is working in the same run folder or fold right now; nothing was changed."""


class ManifestError(PipelineError):
    """A manifest is malformed or refers to files that cannot be used."""


class ImageError(PipelineError):
    """A scan or label file cannot be read or is not usable (corrupt, wrong dimensionality, NaNs, ...)."""


class CheckpointError(PipelineError):
    """A checkpoint is missing, truncated, untrusted or of another network."""


class OutputError(PipelineError, OSError):
    """An output cannot be written (disk full, read-only or missing folder, no permission); nothing
    half-written is left behind. Also an ``OSError``, so code that handles failed writes still does."""


class MemoryLimitError(PipelineError):
    """A scan would need more memory than ``infer.max_memory_gb`` allows, even split into z-slabs."""


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into an :class:`OutputError` naming it.

    A failed ``write()`` carries no file name (``No space left on device`` alone); the one line
    the user sees must say which output could not be written.
    """
    try:
        yield
    except OutputError:
        raise  # already names its file
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
