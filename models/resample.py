"""Linear resampling for the network: the decoder's x2 upsampling, attention maps, deep supervision.

All resampling is linear (bilinear/trilinear) with ``align_corners=False``, the same function as
``F.interpolate``; the code here only computes it faster on a CPU:

- :func:`resize_to` keeps channels-last gradients channels-last (:class:`_Resize`), runs in the
  input's dtype under autocast, and resamples few-channel tensors one axis at a time by matrix
  products.
- :func:`upsample_concat` is the decoder's ``cat([skip, upsample(coarse)])`` for inference: the
  x2 upsampling written straight into the concatenated tensor, one axis at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["resize_to", "upsample_concat", "is_recording", "SEPARABLE_MAX_CHANNELS"]


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
    if is_recording():
        # sizes as the recorder sees them (symbolic), not Python ints baked into the graph
        return F.interpolate(x, size=list(size), mode=_MODES[x.dim()], align_corners=False)
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x  # the gating grid usually equals theta's grid: skip a useless interpolation
    with torch.autocast(x.device.type, enabled=False):
        if x.shape[1] <= SEPARABLE_MAX_CHANNELS and x.dim() in (4, 5):
            return _separable_resize(x, size)
        return _Resize.apply(x, size)


SEPARABLE_MAX_CHANNELS = 8


def is_recording() -> bool:
    """True while ``torch.jit.trace`` or an ONNX/``torch.export`` export records the network.

    The fast paths here and in the max pooling of :mod:`models.blocks` are Python-side (cached
    matrices, an autograd Function, writes into preallocated outputs, reshapes by sizes read as
    Python ints) that a recorded graph cannot keep for other input sizes; plain ``F.interpolate``
    and ``MaxPool3d`` record with symbolic sizes (TorchScript, ONNX ``Resize``/``MaxPool``).
    """
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting())


def _interpolation_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """:func:`_linear_weights`, cached (not while ``torch.compile`` traces: it builds its own constants)."""
    if torch.compiler.is_compiling():
        return _linear_weights(n_in, n_out, dtype, device)
    # A matrix first built under inference_mode would be an inference tensor, which autograd refuses
    # to save: training after inference in one process (cv, the tests) would then fail.
    with torch.inference_mode(False):
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


def upsample_concat(skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """``torch.cat([skip, resize_to(coarse, skip.shape[2:])], dim=1)``, computed faster for inference.

    When no gradient is recorded and ``skip`` is exactly twice ``coarse`` along every spatial axis
    (always so inside the U-Net), the x2 upsampling is done one axis at a time (:func:`_double`)
    and its last pass writes straight into the concatenated output, in ``skip``'s memory format.
    PyTorch's trilinear kernel followed by ``torch.cat`` made three passes over the largest
    tensor of the network; this makes one (a 32-channel 48^3 -> 96^3 bf16 channels-last
    upsampling with its concatenation: 22 ms -> 8 ms on 2 CPU cores). The values are those of
    ``F.interpolate`` up to float rounding (the intermediate passes round to the input's dtype:
    at most one bf16 ulp). Anything else (training, other sizes, ``torch.compile`` tracing)
    takes the plain path.

    Args:
        skip: ``(B, Cs, *S)`` skip features.
        coarse: ``(B, Cc, *S')`` coarser features of ``skip``'s dtype.

    Returns:
        ``(B, Cs + Cc, *S)``: the skip, then the upsampled coarse features.
    """
    size = tuple(skip.shape[2:])
    doubled = tuple(2 * s for s in coarse.shape[2:]) == size and min(coarse.shape[2:]) >= 2
    if (
        torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or is_recording()
        or not doubled
        or skip.dtype != coarse.dtype
        or skip.shape[0] != coarse.shape[0]
    ):
        return torch.cat([skip, resize_to(coarse, size)], dim=1)
    b, cs = skip.shape[:2]
    out = _empty_like_layout(skip, (b, cs + coarse.shape[1], *size))
    out[:, :cs].copy_(skip)
    y = coarse
    for dim in range(coarse.dim() - 1, 2, -1):  # last spatial axis first: the smallest passes first
        y = _double(y, dim)
    _double(y, 2, out=out[:, cs:])
    return out


def _empty_like_layout(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """An empty tensor of ``shape`` with ``x``'s dtype, device and memory format."""
    fmt = _CL_FORMATS[x.dim()] if _is_channels_last(x) else torch.contiguous_format
    return torch.empty(tuple(shape), dtype=x.dtype, device=x.device, memory_format=fmt)


def _double(x: torch.Tensor, dim: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` linearly upsampled x2 along ``dim`` (``align_corners=False``), into ``out`` if given.

    Output sample ``2k`` is ``0.75 x[k] + 0.25 x[k-1]`` and ``2k+1`` is ``0.75 x[k] + 0.25 x[k+1]``;
    at the borders the missing neighbour is ``x[k]`` itself (``F.interpolate``'s clamping).
    """
    n = x.shape[dim]
    if out is None:
        shape = list(x.shape)
        shape[dim] *= 2
        out = _empty_like_layout(x, shape)
    pairs = out.unflatten(dim, (n, 2))  # a view: pairs.select(dim + 1, 0) are the even samples
    even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    torch.lerp(x.narrow(dim, 1, n - 1), x.narrow(dim, 0, n - 1), 0.25, out=even.narrow(dim, 1, n - 1))
    torch.lerp(x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1), 0.25, out=odd.narrow(dim, 0, n - 1))
    even.narrow(dim, 0, 1).copy_(x.narrow(dim, 0, 1))
    odd.narrow(dim, n - 1, 1).copy_(x.narrow(dim, n - 1, 1))
    return out
