"""Small building blocks of the attention-gated U-Net, for 2-D and 3-D.

Each block is a few lines with one ``forward``, as in MONAI's ``attentionunet.py``; the layer
choices follow the authors' ``models/networks/utils.py`` (``UnetConv3``, ``UnetUp3_CT``,
``UnetGridGatingSignal3``, ``UnetDsv3``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.resample import is_recording, resize_to, upsample_concat

__all__ = [
    "conv_type",
    "norm_type",
    "pool_type",
    "resize_to",
    "upsample_concat",
    "init_weights",
    "pointwise_conv",
    "ConvBlock",
    "GatingSignal",
    "UpBlock",
]


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def conv_type(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    _check_dims(spatial_dims)
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


def norm_type(spatial_dims: int) -> type[nn.Module]:
    """``nn.BatchNorm2d`` or ``nn.BatchNorm3d``."""
    _check_dims(spatial_dims)
    return nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d


def pool_type(spatial_dims: int) -> type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d`` (subclasses that pool 2^d blocks faster for inference)."""
    _check_dims(spatial_dims)
    return MaxPool3d if spatial_dims == 3 else MaxPool2d


class _HalvingMaxMixin:
    """Max pooling; without gradients, 2^d windows of stride 2 are taken one axis at a time.

    ``torch.maximum`` of the even and odd samples along each axis in turn gives the same values
    as PyTorch's kernel (NaN included) in the input's memory format, without computing the
    indices its CPU kernel always computes: 1.2 ms instead of 4.6 ms for a 16x96^3 bf16
    channels-last tensor on 2 cores. Training keeps PyTorch's kernel and its gradient.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        halving = (
            _each(self.kernel_size, 2)
            and _each(self.stride, 2)
            and _each(self.padding, 0)
            and _each(self.dilation, 1)
            and not self.ceil_mode
            and not self.return_indices
            and x.dim() >= 3
            and not any(s % 2 for s in x.shape[2:])
        )
        if not halving or torch.is_grad_enabled() or torch.compiler.is_compiling() or is_recording():
            return super().forward(x)  # type: ignore[misc]
        for dim in range(2, x.dim()):
            pairs = x.unflatten(dim, (x.shape[dim] // 2, 2))
            x = torch.maximum(pairs.select(dim + 1, 0), pairs.select(dim + 1, 1))
        return x


def _each(v: int | Sequence[int], n: int) -> bool:
    """``v`` (an int or one int per axis) is ``n`` on every axis."""
    return v == n if isinstance(v, int) else all(e == n for e in v)


class MaxPool2d(_HalvingMaxMixin, nn.MaxPool2d):
    """``nn.MaxPool2d``, faster for 2x2 windows without gradients."""


class MaxPool3d(_HalvingMaxMixin, nn.MaxPool3d):
    """``nn.MaxPool3d``, faster for 2x2x2 windows without gradients."""


def init_weights(module: nn.Module) -> None:
    """The authors' ``init_weights(init_type='kaiming')`` applied to every conv and batch norm.

    Conv weights: Kaiming normal (fan-in, gain for ReLU); conv biases keep PyTorch's default.
    Batch norm: weight ~ N(1, 0.02), bias 0.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class _PointwiseMixin:
    """A 1^d conv that runs as a matrix product on contiguous (NCDHW) inputs with few outputs.

    oneDNN's direct convolution is very slow for a 1^d conv to a handful of channels on
    contiguous 3-D inputs (deep-supervision heads and their fusion at full resolution: 60 ms
    forward, 260 ms backward for a 2x16x64^3 input on 2 cores, 10x a matrix product). Same
    parameters and state dict as the conv it subclasses; channels-last inputs use the conv.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_channels > 8 or not x.is_contiguous():
            return super().forward(x)  # type: ignore[misc]
        b, c = x.shape[:2]
        y = torch.matmul(self.weight.view(self.out_channels, c), x.view(b, c, -1))
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1).to(y.dtype)
        return y.view(b, self.out_channels, *x.shape[2:])


class _Pointwise2d(_PointwiseMixin, nn.Conv2d):
    pass


class _Pointwise3d(_PointwiseMixin, nn.Conv3d):
    pass


def pointwise_conv(spatial_dims: int, in_channels: int, out_channels: int, bias: bool = True) -> nn.Module:
    """A 1^d convolution (an ``nn.Conv2d``/``nn.Conv3d``), fast on contiguous inputs with few outputs."""
    _check_dims(spatial_dims)
    cls = _Pointwise3d if spatial_dims == 3 else _Pointwise2d
    return cls(in_channels, out_channels, kernel_size=1, bias=bias)


class ConvBlock(nn.Sequential):
    """Two × (conv 3^d, padding 1, bias → batch norm → [dropout] → ReLU): ``UnetConv3``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels of both convolutions.
        dropout: dropout probability after each batch norm; 0 adds no dropout module.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        conv, norm = conv_type(spatial_dims), norm_type(spatial_dims)
        layers: list[nn.Module] = []
        for cin in (in_channels, out_channels):
            layers += [conv(cin, out_channels, kernel_size=3, padding=1, bias=True), norm(out_channels)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class GatingSignal(nn.Sequential):
    """1^d conv + batch norm + ReLU on the bottleneck: ``UnetGridGatingSignal3``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: bottleneck channels.
        out_channels: gating-signal channels (the authors use ``in_channels``).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        conv, norm = conv_type(spatial_dims), norm_type(spatial_dims)
        super().__init__(
            conv(in_channels, out_channels, kernel_size=1), norm(out_channels), nn.ReLU(inplace=True)
        )


class UpBlock(nn.Module):
    """×2 linear upsampling of the coarser features, concatenation ``[skip, up]``, ConvBlock: ``UnetUp3_CT``.

    Args:
        spatial_dims: 2 or 3.
        skip_channels: channels of the (gated) skip connection.
        coarse_channels: channels of the coarser decoder (or bottleneck) features.
        out_channels: output channels.
        dropout: passed to the ConvBlock.
    """

    def __init__(
        self,
        spatial_dims: int,
        skip_channels: int,
        coarse_channels: int,
        out_channels: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv = ConvBlock(spatial_dims, skip_channels + coarse_channels, out_channels, dropout)

    def forward(self, skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        return self.conv(upsample_concat(skip, coarse))
