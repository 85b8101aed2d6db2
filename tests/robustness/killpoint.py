"""``python -m tests.robustness.killpoint ARGV...``: ``pancreas-seg ARGV`` that SIGKILLs itself at a
chosen write, for the kill tests (``test_interrupt.py``); the product code knows nothing of it.

The kill point comes from the environment, ``PANCREAS_SEG_TEST_KILL="WHEN N GLOB"``: the ``N``-th
call of :func:`pipeline.core.fileio.atomic_write` (every output goes through it) whose absolute
target path matches ``GLOB`` (``fnmatch``, ``*`` spans folders) kills the process

* ``after``: right after the file was renamed into place;
* ``inside``: once the temporary file is complete, before the rename (mid-write, as far as the
  file's readers can tell; for a mask, after its case record).

SIGKILL runs no handler, no ``finally`` and no ``atexit``: what is on disk then is what any kill at
that instruction would leave. Without the variable the command just runs.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pipeline.cli
import pipeline.inference.batch  # noqa: F401 - loaded now, so the patch below reaches its imports
import pipeline.training.train  # noqa: F401
import pipeline.workflows.cv  # noqa: F401
from pipeline.core import fileio

__all__ = ["ENV", "install"]

ENV = "PANCREAS_SEG_TEST_KILL"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(spec: str) -> None:
    """Replace ``atomic_write`` everywhere it was imported by one that kills at ``spec``."""
    when, n, pattern = spec.split(maxsplit=2)
    if when not in ("after", "inside"):
        raise ValueError(f"{ENV}={spec!r}: WHEN must be 'after' or 'inside'")
    target, seen = int(n), 0
    original = fileio.atomic_write

    def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
        nonlocal seen
        if not fnmatch.fnmatch(os.path.abspath(path), pattern):
            return original(path, write)
        seen += 1
        if seen != target:
            return original(path, write)
        if when == "inside":
            return original(path, lambda tmp: (write(tmp), _die()))
        written = original(path, write)
        _die()
        return written

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("pipeline"):
            for name, value in list(vars(module).items()):
                if value is original:
                    setattr(module, name, atomic_write)


if __name__ == "__main__":
    if os.environ.get(ENV):
        install(os.environ[ENV])
    sys.argv = ["pancreas-seg", *sys.argv[1:]]
    sys.exit(pipeline.cli.main())
