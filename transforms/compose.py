"""``Compose`` that lets the pipeline's own errors through.

MONAI wraps every exception raised inside a chain in ``RuntimeError("applying transform ...")``. An
``ImageError`` naming a bad scan then reaches the user as a MONAI traceback; these helpers unwrap it
so the CLI can print its one line.
"""

from __future__ import annotations

import copy

from monai.transforms import Compose, Randomizable

from pipeline.core.errors import PipelineError

__all__ = ["CTCompose", "pipeline_error_from", "UnwrapErrorsMixin"]


def pipeline_error_from(exc: BaseException) -> PipelineError | None:
    """The ``PipelineError`` that ``exc`` wraps (through ``__cause__``/``__context__``), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, PipelineError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class CTCompose(Compose):
    """MONAI ``Compose`` that re-raises a wrapped :class:`PipelineError` as itself, and whose
    ``flatten()`` leaves the random state of its transforms alone.

    MONAI's ``flatten()`` builds a new ``Compose``, whose constructor re-seeds every random
    transform (from the global seed, or at random when none is set); MONAI calls it in
    ``Compose.inverse`` and ``PersistentDataset``, which would silently undo
    ``set_random_state(seed)``.
    """

    def flatten(self):
        randoms = [t for t in self.transforms if isinstance(t, Randomizable)]
        states = [copy.deepcopy(t.R) for t in randoms]
        flat = super().flatten()
        for t, state in zip(randoms, states):
            t.R = state
        return flat

    def __call__(self, input_, start=0, end=None, threading=False, lazy=None):
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        except RuntimeError as exc:
            err = pipeline_error_from(exc)
            if err is None:
                raise
            raise err from None


class UnwrapErrorsMixin:
    """For MONAI datasets: ``dataset[i]`` raises the :class:`PipelineError` itself, not MONAI's wrapper."""

    def __getitem__(self, index):
        try:
            return super().__getitem__(index)
        except RuntimeError as exc:
            err = pipeline_error_from(exc)
            if err is None:
                raise
            raise err from None
