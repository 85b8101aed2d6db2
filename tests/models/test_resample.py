"""models.resample and the pooling fast path: the inference shortcuts compute the plain function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.blocks import MaxPool2d, MaxPool3d, pool_type
from models.resample import resize_to, upsample_concat

CL = {4: torch.channels_last, 5: torch.channels_last_3d}


def _plain(skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    mode = "trilinear" if skip.dim() == 5 else "bilinear"
    return torch.cat([skip, F.interpolate(coarse, size=skip.shape[2:], mode=mode, align_corners=False)], 1)


@pytest.mark.parametrize(
    "coarse_shape",
    [(2, 3, 5, 7, 3), (1, 4, 2, 2, 2), (1, 6, 8, 4, 6), (2, 3, 5, 7)],  # odd sizes, the smallest, 2-D
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_concat_equals_interpolate_and_cat(coarse_shape, channels_last):
    b, c, *s = coarse_shape
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(*coarse_shape, generator=g, dtype=torch.float64)
    skip = torch.randn(b, 2, *(2 * n for n in s), generator=g, dtype=torch.float64)
    if channels_last:
        coarse, skip = (t.contiguous(memory_format=CL[t.dim()]) for t in (coarse, skip))
    with torch.no_grad():
        out = upsample_concat(skip, coarse)
    torch.testing.assert_close(out, _plain(skip, coarse), rtol=0, atol=1e-12)
    assert out.is_contiguous(memory_format=CL[out.dim()] if channels_last else torch.contiguous_format)


def test_upsample_concat_in_bf16_stays_within_rounding():
    g = torch.Generator().manual_seed(1)
    coarse = torch.randn(1, 8, 6, 6, 6, generator=g).to(torch.bfloat16)
    skip = torch.randn(1, 4, 12, 12, 12, generator=g).to(torch.bfloat16)
    with torch.no_grad():
        out = upsample_concat(skip, coarse).float()
    ref = _plain(skip.double(), coarse.double()).float()
    assert torch.equal(out[:, :4], ref[:, :4])  # the skip is copied, not recomputed
    torch.testing.assert_close(out, ref, rtol=2**-7, atol=2**-7)  # about one bf16 ulp


def test_upsample_concat_with_gradients_takes_the_plain_path():
    coarse = torch.randn(1, 3, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(1, 2, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    out = upsample_concat(skip, coarse)
    ref = _plain(skip, coarse)
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(ref)
    grads = torch.autograd.grad((out * w).sum(), (skip, coarse))
    ref_grads = torch.autograd.grad((ref * w).sum(), (skip, coarse))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)


def test_upsample_concat_other_factors_fall_back():
    """Not exactly x2 (here x3 and x1.5): the plain resampling, same values."""
    coarse = torch.randn(1, 3, 4, 4, 4, dtype=torch.float64)
    for size in ((12, 12, 12), (6, 8, 6)):
        skip = torch.randn(1, 2, *size, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(
                upsample_concat(skip, coarse), _plain(skip, coarse), rtol=0, atol=1e-12
            )


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool_fast_path_equals_pytorch(dims, channels_last):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, *(6, 4, 8)[:dims], generator=g).to(torch.bfloat16)
    x.view(-1)[[3, 50, 77]] = float("nan")  # NaN wins a window, as in PyTorch's kernel
    if channels_last:
        x = x.contiguous(memory_format=CL[x.dim()])
    pool = pool_type(dims)(kernel_size=2)
    assert isinstance(pool, MaxPool3d if dims == 3 else MaxPool2d)
    ref = (F.max_pool3d if dims == 3 else F.max_pool2d)(x, 2)
    with torch.no_grad():
        y = pool(x)
    assert torch.equal(y.isnan(), ref.isnan()) and ref.isnan().any()
    assert torch.equal(y.nan_to_num(), ref.nan_to_num())
    if channels_last:
        assert y.is_contiguous(memory_format=CL[y.dim()])


def test_max_pool_with_gradients_or_other_windows_is_pytorchs():
    x = torch.randn(1, 2, 6, 6, 6, requires_grad=True)
    y = MaxPool3d(kernel_size=2)(x)
    y.sum().backward()
    assert y.grad_fn is not None and x.grad.sum() == y.numel()  # one winner per window
    with torch.no_grad():
        for kwargs in ({"kernel_size": 3}, {"kernel_size": 2, "stride": 1}, {"kernel_size": 2, "padding": 1}):
            torch.testing.assert_close(MaxPool3d(**kwargs)(x), torch.nn.MaxPool3d(**kwargs)(x))
        odd = torch.randn(1, 2, 5, 6, 6)
        torch.testing.assert_close(MaxPool3d(kernel_size=2)(odd), F.max_pool3d(odd, 2))


def test_training_after_inference_in_one_process():
    """The cached interpolation matrices must not be inference tensors (cv trains after predicting)."""
    x = torch.randn(1, 2, 5, 6, 7)
    with torch.inference_mode():
        resize_to(x, (9, 10, 11))
    y = x.clone().requires_grad_(True)
    resize_to(y, (9, 10, 11)).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()
