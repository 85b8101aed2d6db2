"""Checkpoints: written atomically, read without pickling, checked against the network they claim to be.

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
import re
from pathlib import Path

import torch

from pipeline.config import ModelConfig
from pipeline.errors import CheckpointError, OutputError

__all__ = [
    "FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "model_config_from_checkpoint",
    "check_network",
    "load_network",
]

FORMAT = "pancreas-seg/1"
log = logging.getLogger("pancreas_seg")
_EPOCH_RE = re.compile(r"epoch_(\d+)\.pt$")


class _UnreadableCheckpoint(CheckpointError):
    """Truncated or corrupt (e.g. killed mid-write elsewhere): resume may fall back to an older one."""


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """Save ``payload`` (plus the format tag) to ``path`` via a temporary file and a rename.

    Raises:
        OutputError: it cannot be written (disk full, read-only folder); the temporary file is
            removed and an existing ``path`` keeps its old content.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # torch's writer hides a failed write's errno; Python's file keeps it
        torch.save({"format": FORMAT, **payload}, buffer)
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:160]
        raise OutputError(f"{path}: cannot write the checkpoint ({reason})") from None
    except BaseException:  # SIGTERM from torchrun, Ctrl-C: leave no partial file
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``).

    Raises:
        CheckpointError: missing, truncated/corrupt, needs pickling (untrusted), or not ours.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - classify below
        msg = str(exc)
        if "weights_only" in msg or "Unsupported global" in msg or "unpickl" in msg.lower():
            raise CheckpointError(
                f"{path}: refused: the file needs pickling to load (it may run code); only plain "
                "tensor checkpoints are accepted"
            ) from None
        first = msg.splitlines()[0][:120] if msg else type(exc).__name__
        raise _UnreadableCheckpoint(
            f"{path}: not a readable checkpoint (truncated or corrupt: {first})"
        ) from None
    if not isinstance(ckpt, dict) or "network" not in ckpt:
        raise CheckpointError(f"{path}: not a pancreas-seg checkpoint (no 'network' weights)")
    return ckpt


def latest_checkpoint(
    folder: str | os.PathLike, expect: ModelConfig | None = None
) -> tuple[Path, dict] | None:
    """The newest readable ``epoch_N.pt`` in ``folder`` and its contents, or None.

    A truncated or unreadable newest file is skipped with a warning and the previous one is used
    (a kill mid-write elsewhere). A file that is refused is not skipped: training on from an older
    one (or from scratch) would silently drop what the user meant to resume.

    Args:
        folder: a fold's ``checkpoints`` folder.
        expect: if given, the checkpoint must be of this network (see :func:`check_network`).

    Raises:
        CheckpointError: the newest file needs unpickling (untrusted), is not a pancreas-seg
            checkpoint, or is of another network than ``expect``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_RE.search(p.name))),
        reverse=True,
    )
    for _, path in found:
        try:
            ckpt = load_checkpoint(path)
        except _UnreadableCheckpoint as exc:
            log.warning("warning: %s; falling back to the previous checkpoint", exc)
            continue
        if expect is not None:
            check_network(ckpt, expect, str(path))
        return path, ckpt
    return None


def model_config_from_checkpoint(ckpt: dict, source: str = "checkpoint") -> ModelConfig:
    """Rebuild the :class:`ModelConfig` stored in a checkpoint."""
    stored = ckpt.get("model")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{source}: no model description in the checkpoint")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in stored.items() if k in known})


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def check_network(ckpt: dict, expect: ModelConfig, source: str = "checkpoint") -> ModelConfig:
    """Check that a checkpoint holds the network ``expect`` describes.

    Returns:
        The checkpoint's :class:`ModelConfig`.

    Raises:
        CheckpointError: no model description, another network (name, channels, classes, gates,
            deep supervision), or weights whose names or shapes do not fit that network.
    """
    mcfg = model_config_from_checkpoint(ckpt, source)
    keys = ("name", "channels", "out_channels", "in_channels", "spatial_dims")
    keys += ("gates_per_level", "deep_supervision", "multiclass_attention")
    for key in keys:
        got, want = _plain(getattr(mcfg, key)), _plain(getattr(expect, key))
        if got != want:
            raise CheckpointError(
                f"{source}: checkpoint is of another network ({key}={got!r}, expected {want!r})"
            )
    weights = ckpt.get("network")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{source}: the checkpoint's network weights are not a state dict of tensors")
    from models import build_model

    with torch.device("meta"):  # shapes only, nothing allocated
        wanted = {k: tuple(v.shape) for k, v in build_model(mcfg).state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in weights.items()}
    if stored != wanted:
        odd = sorted(set(stored) ^ set(wanted)) or [k for k in wanted if stored[k] != wanted[k]]
        raise CheckpointError(
            f"{source}: weights do not fit network {mcfg.name!r} ({len(odd)} tensors differ, e.g. {odd[0]})"
        )
    return mcfg


def load_network(path: str | os.PathLike, expect: ModelConfig | None = None, map_location="cpu"):
    """Build the network a checkpoint describes and load its weights.

    Args:
        path: checkpoint file.
        expect: if given, the checkpoint must be of this network (name, channels, classes).
        map_location: where tensors go.

    Returns:
        (network in eval mode, its ModelConfig, the checkpoint dict).

    Raises:
        CheckpointError: unreadable, untrusted, or of another network.
    """
    from models import build_model

    ckpt = load_checkpoint(path, map_location)
    mcfg = check_network(ckpt, expect, str(path)) if expect is not None else None
    mcfg = mcfg or model_config_from_checkpoint(ckpt, str(path))
    net = build_model(mcfg)
    try:
        net.load_state_dict(ckpt["network"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:160]
        raise CheckpointError(f"{path}: weights do not fit network {mcfg.name!r} ({first})") from None
    return net.eval(), mcfg, ckpt
