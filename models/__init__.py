"""Networks: the attention-gated U-Net of Oktay et al. 2018 and its plain U-Net baseline.

``MODELS`` maps a ``model.name`` to a constructor; :func:`build_model` builds the network of a
:class:`~pipeline.core.config.ModelConfig`, :func:`model_info` describes it (for ``pancreas-seg
model-info``);
:func:`~models.restore.network_from_checkpoint` rebuilds a trained one from a checkpoint's contents.
"""

from __future__ import annotations

from models.attention_gate import GridAttentionGate, MultiGateAttention
from models.attention_unet import AttentionUNet
from models.registry import MODELS, build_model, count_parameters, get_model, model_info
from models.restore import check_network, network_from_checkpoint

__all__ = [
    "AttentionUNet",
    "GridAttentionGate",
    "MultiGateAttention",
    "MODELS",
    "get_model",
    "build_model",
    "count_parameters",
    "model_info",
    "check_network",
    "network_from_checkpoint",
]
