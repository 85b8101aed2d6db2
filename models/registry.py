"""The model registry: ``model.name`` to a network, and a description of it (``pancreas-seg model-info``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from models.attention_unet import AttentionUNet
from pipeline.core.errors import ConfigError

__all__ = [
    "MODELS",
    "get_model",
    "build_model",
    "count_parameters",
    "model_info",
]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "attention_unet": partial(AttentionUNet, attention=True),
    "unet": partial(AttentionUNet, attention=False),
}


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the network registered as ``name`` with constructor ``kwargs``.

    Raises:
        ConfigError: ``name`` is not in :data:`MODELS`, or ``kwargs`` do not fit the network.
    """
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r}: unknown model (known: {', '.join(sorted(MODELS))})")
    try:
        return MODELS[name](**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {name}: {exc}") from None


def _kwargs(model_cfg: Any) -> dict[str, Any]:
    kwargs = dict(
        spatial_dims=model_cfg.spatial_dims,
        in_channels=model_cfg.in_channels,
        out_channels=model_cfg.out_channels,
        channels=tuple(model_cfg.channels),
        deep_supervision=model_cfg.deep_supervision,
        dropout=model_cfg.dropout,
    )
    if model_cfg.name != "unet":
        kwargs["gates_per_level"] = model_cfg.gates_per_level
        if getattr(model_cfg, "multiclass_attention", False):
            kwargs["attention_channels"] = model_cfg.out_channels
    return kwargs


def build_model(model_cfg: Any) -> nn.Module:
    """The network described by a :class:`~pipeline.core.config.ModelConfig`.

    ``"attention_unet"`` is :class:`AttentionUNet`; ``"unet"`` is the same class with
    ``attention=False``. ``multiclass_attention`` gives each gate one attention map per output channel (per class, background
    included, or per region), each scaling its own group of the skip's channels.

    Raises:
        ConfigError: unknown ``model_cfg.name`` or invalid shape settings.
    """
    return get_model(model_cfg.name, **_kwargs(model_cfg))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_info(model_cfg: Any) -> dict[str, Any]:
    """A JSON-able description of the configured network.

    Returns:
        ``name``, ``class``, ``parameters``, ``channels``, ``levels``, ``attention``,
        ``gated_levels`` (1 = full resolution), ``gates_per_level``, ``gates`` (total),
        ``attention_channels``, ``deep_supervision`` (number of heads), ``input_multiple`` (every
        spatial size must be a multiple of it), ``spatial_dims``, ``in_channels``,
        ``out_channels``, ``parameters_by_part``.

    Raises:
        ConfigError: as :func:`build_model`.
    """
    model = build_model(model_cfg)
    parts: dict[str, int] = {}
    for name, child in model.named_children():
        parts[name] = count_parameters(child)
    n_levels = len(model.channels)
    gated = list(range(2, n_levels)) if model.attention else []
    attention_channels = 1
    if model.attention:
        attention_channels = model.gates[0].gate.attention_channels
    return {
        "name": model_cfg.name,
        "class": type(model).__name__,
        "parameters": count_parameters(model),
        "parameters_by_part": parts,
        "spatial_dims": model.spatial_dims,
        "in_channels": model.in_channels,
        "out_channels": model.out_channels,
        "channels": list(model.channels),
        "levels": n_levels,
        "attention": model.attention,
        "gated_levels": gated,
        "gates_per_level": model.gates_per_level,
        "gates": model.gates_per_level * len(gated),
        "attention_channels": attention_channels,
        "deep_supervision": {"enabled": model.deep_supervision, "heads": len(model.heads)},
        "input_multiple": model.divisor,
    }
