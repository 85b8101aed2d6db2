"""Inference-time rewrites of a trained network: the same function, fewer passes over memory.

:func:`prepare_for_inference` returns an eval-mode copy with every batch norm folded into the
convolution before it (:func:`fold_batch_norm`) and every convolution followed by a ReLU run as
one fused oneDNN operator on CPUs (:func:`fuse_conv_relu`). The copy keeps the state-dict keys
of the original and must not be trained.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["prepare_for_inference", "fold_batch_norm", "fuse_conv_relu"]

_CONVS = (nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm2d, nn.BatchNorm3d)


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with batch norms folded and conv + ReLU fused (``model`` is untouched)."""
    return fuse_conv_relu(fold_batch_norm(model), copy_model=False)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with each batch norm folded into the conv before it.

    In every ``nn.Sequential``, a conv directly followed by a batch norm becomes one conv with
    ``W' = s W`` and ``b' = s (b - mean) + beta`` (``s = gamma / sqrt(var + eps)``, running
    statistics), and the batch norm an ``nn.Identity``: the same function in eval mode, one pass
    over the activations fewer. This also holds for the gates' output transform, where alpha
    multiplies the conv output before the batch norm: alpha is one number per voxel and the batch
    norm is affine per channel. The copy is in eval mode and must not be trained.

    Args:
        model: any module; only adjacent (conv, batch norm) pairs in ``nn.Sequential`` are folded.

    Returns:
        A folded deep copy (``model`` itself is left unchanged).
    """
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if not isinstance(conv, _CONVS) or not isinstance(bn, _NORMS):
                continue
            if bn.running_mean is None or bn.running_var is None:
                continue  # batch statistics even in eval mode: nothing to fold
            with torch.no_grad():
                weight, bias = fuse_conv_bn_weights(
                    conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
                )
            conv.weight = weight
            conv.bias = bias
            seq[i + 1] = nn.Identity()
    return model


def fuse_conv_relu(model: nn.Module, copy_model: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` in which each conv followed by a ReLU computes both at once.

    In every ``nn.Sequential``, a conv followed by a ReLU, with only identities or dropouts (no-ops
    in eval mode) between them, becomes a :class:`ConvReLU3d`/:class:`ConvReLU2d` holding the
    same parameters, and the ReLU an ``nn.Identity``. Without gradients on a CPU the fused conv
    runs oneDNN's convolution with a ReLU post-op, which saves one pass over its output
    (``torch.ops.mkldnn._convolution_pointwise``, the kernel ``torch.compile`` uses for the
    same pattern); elsewhere, or where that operator is missing, it runs conv then ReLU.

    Args:
        model: any module; typically the output of :func:`fold_batch_norm`.
        copy_model: work on a deep copy (False: rewrite ``model`` itself).

    Returns:
        The rewritten module, in eval mode.
    """
    model = (copy.deepcopy(model) if copy_model else model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i, conv in enumerate(seq):
            if type(conv) not in _CONVS or conv.padding_mode != "zeros":
                continue
            j = i + 1
            while j < len(seq) and isinstance(seq[j], (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout3d)):
                j += 1
            if j < len(seq) and type(seq[j]) is nn.ReLU:
                seq[i] = _fused(conv)
                seq[j] = nn.Identity()
    return model


# oneDNN's fused convolution, or None where this PyTorch build has no oneDNN or not this operator
_POINTWISE = (
    getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
    if torch.backends.mkldnn.is_available()
    else None
)


class _ConvReLUMixin:
    """``relu(conv(x))``; one oneDNN call when no gradient is recorded on a CPU (see :func:`fuse_conv_relu`)."""

    _cast: tuple | None = None  # (key, weight, bias): the weights cast once to autocast's dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _POINTWISE is None or not self._fusable(x):
            return torch.relu(super().forward(x))  # type: ignore[misc]
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if dtype not in (torch.float32, torch.bfloat16):
            return torch.relu(super().forward(x))  # type: ignore[misc]
        weight, bias = self._weights(dtype)
        return _POINTWISE(
            x.to(dtype),
            weight,
            bias,
            list(self.padding),
            list(self.stride),
            list(self.dilation),
            self.groups,
            "relu",
            [],
            "",
        )

    def _fusable(self, x: torch.Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and not isinstance(self.padding, str)
        )

    def _weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self.weight, self.bias
        if w.dtype == dtype and (b is None or b.dtype == dtype):
            return w, b
        key = (dtype, w.data_ptr(), w._version) + (() if b is None else (b.data_ptr(), b._version))
        if self._cast is None or self._cast[0] != key:
            self._cast = (key, w.to(dtype), None if b is None else b.to(dtype))
        return self._cast[1], self._cast[2]


class ConvReLU2d(_ConvReLUMixin, nn.Conv2d):
    """A 2-D conv fused with the ReLU after it (same parameters as the ``nn.Conv2d``)."""


class ConvReLU3d(_ConvReLUMixin, nn.Conv3d):
    """A 3-D conv fused with the ReLU after it (same parameters as the ``nn.Conv3d``)."""


def _fused(conv: nn.Module) -> nn.Module:
    cls = ConvReLU3d if isinstance(conv, nn.Conv3d) else ConvReLU2d
    fused = cls.__new__(cls)
    # the same parameters, buffers and hyper-parameters (the module's own dicts copied, not shared)
    fused.__dict__ = {k: v.copy() if isinstance(v, dict) else v for k, v in conv.__dict__.items()}
    return fused
