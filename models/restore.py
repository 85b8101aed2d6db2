"""Networks back from checkpoint contents: check that a checkpoint holds the network a config
describes, and build that network with its weights.

Works on the checkpoint's dict (read by :func:`pipeline.core.checkpoint.load_checkpoint`), not on
files: reading stays in the pipeline.
"""

from __future__ import annotations

import torch
from torch import nn

from models.registry import build_model
from pipeline.core.checkpoint import model_config_from_checkpoint
from pipeline.core.config import ModelConfig
from pipeline.core.errors import CheckpointError

__all__ = ["check_network", "network_from_checkpoint"]

# What makes two networks different (dropout, say, does not).
_IDENTITY = (
    "name",
    "channels",
    "out_channels",
    "in_channels",
    "spatial_dims",
    "gates_per_level",
    "deep_supervision",
    "multiclass_attention",
)


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
    for key in _IDENTITY:
        got, want = _plain(getattr(mcfg, key)), _plain(getattr(expect, key))
        if got != want:
            raise CheckpointError(
                f"{source}: checkpoint is of another network ({key}={got!r}, expected {want!r})"
            )
    weights = ckpt.get("network")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{source}: the checkpoint's network weights are not a state dict of tensors")
    with torch.device("meta"):  # shapes only, nothing allocated
        wanted = {k: tuple(v.shape) for k, v in build_model(mcfg).state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in weights.items()}
    if stored != wanted:
        odd = sorted(set(stored) ^ set(wanted)) or [k for k in wanted if stored[k] != wanted[k]]
        raise CheckpointError(
            f"{source}: weights do not fit network {mcfg.name!r} ({len(odd)} tensors differ, e.g. {odd[0]})"
        )
    return mcfg


def network_from_checkpoint(
    ckpt: dict, expect: ModelConfig | None = None, source: str = "checkpoint"
) -> tuple[nn.Module, ModelConfig]:
    """Build the network a checkpoint describes and load its weights.

    Args:
        ckpt: the checkpoint's contents.
        expect: if given, the checkpoint must be of this network (see :func:`check_network`).
        source: the file it came from, for error messages.

    Returns:
        (network in eval mode, its ModelConfig).

    Raises:
        CheckpointError: no model description, or of another network.
    """
    mcfg = check_network(ckpt, expect, source) if expect is not None else None
    mcfg = mcfg or model_config_from_checkpoint(ckpt, source)
    net = build_model(mcfg)
    try:
        net.load_state_dict(ckpt["network"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:160]
        raise CheckpointError(f"{source}: weights do not fit network {mcfg.name!r} ({first})") from None
    return net.eval(), mcfg
