"""Checkpoint files: written atomically (:mod:`pipeline.core.fileio`), read without pickling (which
network a checkpoint holds is checked by :mod:`models.restore`).

A checkpoint is a ``torch.save`` of a dict of tensors and plain values only::

    {"format": "pancreas-seg/1", "model": {model config}, "network": state_dict,
     "optimizer": ..., "lr_scheduler": ..., "trainer": {"epoch": .., "iteration": ..}, "metric": ..}

so :func:`load_checkpoint` can use ``torch.load(weights_only=True)``: a file that needs pickling
to load (and could run code) is refused.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.core.config import ModelConfig
from pipeline.core.errors import CheckpointError
from pipeline.core.fileio import atomic_write_bytes
from pipeline.core.layout import CheckpointLayout

__all__ = [
    "FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "load_checkpoint_bytes",
    "latest_checkpoint",
    "model_config_from_checkpoint",
]

FORMAT = "pancreas-seg/1"
log = logging.getLogger("pancreas_seg")


class _UnreadableCheckpoint(CheckpointError):
    """Truncated or corrupt (e.g. killed mid-write elsewhere): resume may fall back to an older one."""


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """Save ``payload`` (plus the format tag) to ``path`` atomically (:mod:`pipeline.core.fileio`).

    Raises:
        OutputError: it cannot be written (disk full, read-only folder); the temporary file is
            removed and an existing ``path`` keeps its old content.
    """
    buffer = io.BytesIO()  # torch's writer hides a failed write's errno; Python's file keeps it
    torch.save({"format": FORMAT, **payload}, buffer)
    return atomic_write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``).

    Raises:
        CheckpointError: missing, truncated/corrupt, needs pickling (untrusted), or not ours.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return _load(path, str(path), map_location)


def load_checkpoint_bytes(data: bytes, source: str, map_location: str | torch.device = "cpu") -> dict:
    """:func:`load_checkpoint` of a checkpoint held in memory (e.g. a member of a model package).

    Args:
        data: the bytes ``torch.save`` wrote.
        source: how to name it in errors, e.g. ``model.zip: folds/fold_0.pt``.
        map_location: where tensors go.

    Raises:
        CheckpointError: truncated/corrupt, needs pickling (untrusted), or not ours.
    """
    return _load(io.BytesIO(data), source, map_location)


def _load(file: Path | io.BytesIO, source: str, map_location: str | torch.device) -> dict:
    try:
        ckpt = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - classify below
        msg = str(exc)
        if "weights_only" in msg or "Unsupported global" in msg or "unpickl" in msg.lower():
            raise CheckpointError(
                f"{source}: refused: the file needs pickling to load (it may run code); only plain "
                "tensor checkpoints are accepted"
            ) from None
        first = msg.splitlines()[0][:120] if msg else type(exc).__name__
        raise _UnreadableCheckpoint(
            f"{source}: not a readable checkpoint (truncated or corrupt: {first})"
        ) from None
    if not isinstance(ckpt, dict) or "network" not in ckpt:
        raise CheckpointError(f"{source}: not a pancreas-seg checkpoint (no 'network' weights)")
    return ckpt


def latest_checkpoint(
    folder: str | os.PathLike, check: Callable[[dict, str], object] | None = None
) -> tuple[Path, dict] | None:
    """The newest readable ``epoch_N.pt`` in ``folder`` and its contents, or None.

    A truncated or unreadable newest file is skipped with a warning and the previous one is used
    (a kill mid-write elsewhere). A file that is refused is not skipped: training on from an older
    one (or from scratch) would silently drop what the user meant to resume.

    Args:
        folder: a fold's ``checkpoints`` folder (:attr:`pipeline.core.layout.FoldLayout.checkpoints`).
        check: if given, called as ``check(checkpoint, path)`` on the file found; it raises
            :class:`CheckpointError` when the checkpoint does not fit (e.g.
            :func:`models.restore.check_network` for another network).

    Raises:
        CheckpointError: the newest file needs unpickling (untrusted), is not a pancreas-seg
            checkpoint, or ``check`` refuses it.
    """
    for _, path in reversed(CheckpointLayout(Path(folder)).epochs()):
        try:
            ckpt = load_checkpoint(path)
        except _UnreadableCheckpoint as exc:
            log.warning("warning: %s; falling back to the previous checkpoint", exc)
            continue
        if check is not None:
            check(ckpt, str(path))
        return path, ckpt
    return None


def model_config_from_checkpoint(ckpt: dict, source: str = "checkpoint") -> ModelConfig:
    """Rebuild the :class:`ModelConfig` stored in a checkpoint."""
    stored = ckpt.get("model")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{source}: no model description in the checkpoint")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in stored.items() if k in known})
