"""Small building blocks of the attention-gated U-Net, for 2-D and 3-D.

Each block is a few lines with one ``forward``, as in MONAI's ``attentionunet.py``; the layer
choices follow the authors' ``models/networks/utils.py`` (``UnetConv3``, ``UnetUp3_CT``,
``UnetGridGatingSignal3``, ``UnetDsv3``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = [
    "conv_type",
    "norm_type",
    "pool_type",
    "resize_to",
    "init_weights",
    "fold_batch_norm",
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
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    _check_dims(spatial_dims)
    return nn.MaxPool3d if spatial_dims == 3 else nn.MaxPool2d


class _Resize(torch.autograd.Function):
    """Linear resampling whose backward keeps the gradient's channels-last layout.

    The gradient reaching an upsampling through ``torch.cat`` is a channel slice; PyTorch's own
    backward then falls back to the slow contiguous (NCDHW) kernel, which cost more than the
    convolution next to it in a channels-last training step. Making the slice channels-last
    contiguous first made it ~10x faster (2x32x64^3, bf16).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:  # type: ignore[override]
        ctx.in_size = tuple(x.shape)
        ctx.channels_last = _is_channels_last(x)
        return F.interpolate(x, size=size, mode=_MODES[x.dim()], align_corners=False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        fmt = _CL_FORMATS[grad.dim()] if ctx.channels_last else torch.contiguous_format
        grad = grad.contiguous(memory_format=fmt)
        backward = _BACKWARDS[grad.dim()]
        return backward(grad, list(grad.shape[2:]), list(ctx.in_size), False), None


_MODES = {4: "bilinear", 5: "trilinear"}
_CL_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}
_BACKWARDS = {
    4: torch.ops.aten.upsample_bilinear2d_backward,
    5: torch.ops.aten.upsample_trilinear3d_backward,
}


def _is_channels_last(x: torch.Tensor) -> bool:
    return (
        x.dim() in _CL_FORMATS
        and x.is_contiguous(memory_format=_CL_FORMATS[x.dim()])
        and not x.is_contiguous()
    )


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Linear resampling of ``x`` to the spatial ``size`` (no-op when it already has that size).

    Runs in x's dtype even under autocast (autocast would cast to float32 and back, two extra
    passes over the largest tensors of the network; a 0.25/0.75 blend loses nothing in bf16 that
    the next bf16 convolution would not). ``align_corners=False`` (the modern PyTorch default);
    the authors' code was written for PyTorch 0.3, whose ``F.upsample`` behaved as
    ``align_corners=True`` - a sub-voxel shift on the factor-2 grids of a U-Net. Tensors with
    at most :data:`SEPARABLE_MAX_CHANNELS` channels (attention maps, deep-supervision heads) are
    resampled one axis at a time by matrix products with the interpolation weights: the same
    values as ``F.interpolate`` up to float rounding, 5-10x faster for them on a CPU.
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x  # the gating grid usually equals theta's grid: skip a useless interpolation
    with torch.autocast(x.device.type, enabled=False):
        if x.shape[1] <= SEPARABLE_MAX_CHANNELS and x.dim() in (4, 5):
            return _separable_resize(x, size)
        return _Resize.apply(x, size)


SEPARABLE_MAX_CHANNELS = 8


def _interpolation_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """:func:`_linear_weights`, cached (not while ``torch.compile`` traces: it builds its own constants)."""
    if torch.compiler.is_compiling():
        return _linear_weights(n_in, n_out, dtype, device)
    return _cached_linear_weights(n_in, n_out, dtype, device)


def _linear_weights(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(n_out, n_in)`` weights of 1-D linear interpolation as ``F.interpolate`` computes it.

    ``align_corners=False`` without antialiasing: source coordinate ``(i + 0.5) * n_in / n_out
    - 0.5``, clamped at 0, blended between its floor and the next sample (the last sample
    repeats at the border). Each row sums to 1.
    """
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = (src - lo).clamp(0, 1)
    rows = torch.arange(n_out)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(dtype=dtype, device=device)


_cached_linear_weights = lru_cache(maxsize=64)(_linear_weights)


def _separable_resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Linear resampling of a 4-D/5-D ``x`` as one matrix product per spatial axis (contiguous output)."""
    b, c, *spatial = x.shape
    mats = [_interpolation_matrix(i, o, x.dtype, x.device) for i, o in zip(spatial, size)]
    y = torch.matmul(x.contiguous(), mats[-1].t())  # last axis: (..., W) @ (W, W')
    if len(spatial) == 3:
        y = torch.matmul(mats[1], y)  # middle axis: (H', H) @ (..., H, W')
    # first axis: (D', D) @ (D, rest) for each (batch, channel)
    y = torch.matmul(mats[0], y.reshape(b, c, spatial[0], -1))
    return y.reshape(b, c, *size)


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
            if not isinstance(conv, (nn.Conv2d, nn.Conv3d)) or not isinstance(
                bn, (nn.BatchNorm2d, nn.BatchNorm3d)
            ):
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
        up = resize_to(coarse, skip.shape[2:])
        return self.conv(torch.cat([skip, up], dim=1))
