"""Atomic file writes: a temporary file beside the target, then ``os.replace``.

A reader (or a re-run after a kill, a full disk, or torchrun stopping the job) sees either the old
file or the complete new one, never a half-written file; the temporary file is removed on any error.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipeline.core.errors import writing

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a unique temporary path beside ``path``, then rename it to ``path``.

    The temporary name keeps ``path``'s suffix (``.csv``, ``.nii.gz``, ...) for writers that pick
    the format from it, and is unique per call, so concurrent writers never share it.

    Returns:
        ``path`` (absolute).

    Raises:
        OutputError: the file cannot be written (full disk, read-only folder); names the file.
    """
    path = Path(os.path.abspath(path))
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    with writing(path):  # disk full, read-only folder: an OutputError naming the file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            fh.write(text)

    return atomic_write(path, write)
