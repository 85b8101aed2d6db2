"""Geometry steps that MONAI has but that we need a little differently: a body crop with its margin in
millimetres, and ``Spacingd`` with a fast inverse.

Both are subclasses of the MONAI transforms, so they record the same trace and ``Invertd`` inverts
them as it inverts the originals.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import CropForegroundd, Spacingd
from monai.utils import TraceKeys

from pipeline.core.geometry import spacing_from_affine

__all__ = ["BodyMask", "BodyCropd", "CTSpacingd", "resample_axis_aligned"]


def _spacing_of(img: torch.Tensor) -> np.ndarray:
    return spacing_from_affine(img.affine if isinstance(img, MetaTensor) else np.eye(4))


class BodyMask:
    """``select_fn`` for ``CropForegroundd``: voxels above ``threshold`` HU (all voxels if none is).

    A class rather than a lambda so that transform chains can be pickled (DataLoader workers).
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        mask = img > self.threshold
        return mask if bool(mask.any()) else torch.ones_like(mask)


class BodyCropd(CropForegroundd):
    """``CropForegroundd`` around the body (``source_key`` above ``threshold`` HU), margin in mm.

    Invertible like ``CropForegroundd`` (the inverse pads with zeros, i.e. background).

    Args:
        keys: keys to crop.
        source_key: the CT image, in HU.
        threshold: HU above which a voxel counts as body (air is about -1000 HU).
        margin_mm: kept around the body's bounding box on every side, converted to voxels of the
            source image; the box never grows beyond the image.
    """

    def __init__(
        self, keys, source_key: str = "image", threshold: float = -500.0, margin_mm: float = 10.0, **kwargs
    ):
        super().__init__(
            keys,
            source_key=source_key,
            select_fn=BodyMask(threshold),
            margin=0,
            allow_smaller=True,
            start_coord_key=None,
            end_coord_key=None,
            **kwargs,
        )
        self.margin_mm = float(margin_mm)

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict:
        spacing = _spacing_of(data[self.source_key])
        self.cropper.margin = [int(math.ceil(self.margin_mm / max(s, 1e-6))) for s in spacing]
        return super().__call__(data, lazy=lazy)


# Elements of one piece of an output in the 1-D resampling passes: the last pass of a long scan's
# inversion writes the whole original grid (1 GB of float32 for 512x512x1000), and interpolating it in
# one go holds three such tensors (both neighbours and the result); in pieces along the axis only one.
_PIECE_ELEMENTS = 1 << 24


def _resample_axis(
    t: torch.Tensor, axis: int, n_out: int, scale: float, offset: float, mode: str, padding: str
):
    """Resample dimension ``axis + 1`` of ``t`` at source coordinates ``scale * i + offset``."""
    n = t.shape[axis + 1]
    coords = torch.arange(n_out, dtype=torch.float64) * scale + offset
    if padding == "border":
        coords = coords.clamp(0, n - 1)  # as grid_sample: outside points take the edge value
    per_index = t.numel() // max(n, 1)  # elements of one output index along the axis
    step = max(1, _PIECE_ELEMENTS // max(per_index, 1))
    if n_out <= step:
        return _resample_coords(t, axis, coords, mode, padding)
    shape = list(t.shape)
    shape[axis + 1] = n_out
    out = torch.empty(shape, dtype=t.dtype)
    for start in range(0, n_out, step):  # the same values as one pass: each output index on its own
        piece = _resample_coords(t, axis, coords[start : start + step], mode, padding)
        out.narrow(axis + 1, start, piece.shape[axis + 1]).copy_(piece)
    return out


def _resample_coords(t: torch.Tensor, axis: int, coords: torch.Tensor, mode: str, padding: str):
    """``t`` along dimension ``axis + 1`` at the source coordinates ``coords``."""
    n = t.shape[axis + 1]
    view = [1] * t.ndim
    view[axis + 1] = -1

    def take(idx: torch.Tensor) -> torch.Tensor:
        # advanced indexing, not index_select: on CPU the latter is up to 30x slower on inner dims
        out = t[(slice(None),) * (axis + 1) + (idx.clamp(0, n - 1).long(),)]
        inside = (idx >= 0) & (idx <= n - 1)
        if padding == "zeros" and not bool(inside.all()):
            out = out * inside.to(out.dtype).view(view)  # outside points are 0
        return out

    if mode == "nearest":
        return take(torch.round(coords))  # half to even, as grid_sample's nearest
    lo = torch.floor(coords)
    return torch.lerp(take(lo), take(lo + 1), (coords - lo).to(t.dtype).view(view))


def resample_axis_aligned(
    img: torch.Tensor, scale, offset, out_shape, mode: str = "bilinear", padding_mode: str = "border"
) -> torch.Tensor:
    """Resample a (C, X, Y, Z) tensor where output voxel ``i`` along axis k reads source coordinate
    ``scale[k] * i + offset[k]`` (voxel centres at integer indices, as MONAI's resampling with
    ``align_corners=False``). Separable: three 1-D passes, no coordinate grid in memory; for linear
    interpolation the same result as trilinear ``grid_sample``.

    Args:
        img: channel-first tensor.
        scale: per-axis step in source voxels per output voxel.
        offset: per-axis source coordinate of output voxel 0.
        out_shape: output spatial shape.
        mode: ``"nearest"`` or ``"bilinear"`` (trilinear).
        padding_mode: ``"border"`` (clamp to the edge) or ``"zeros"``.

    Returns:
        The resampled (C, *out_shape) float32 tensor.
    """
    out = img.to(torch.float32)
    # shrinking axes first keeps the intermediate tensors small
    order = sorted(range(3), key=lambda a: int(out_shape[a]) / out.shape[a + 1])
    for axis in order:
        out = _resample_axis(
            out, axis, int(out_shape[axis]), float(scale[axis]), float(offset[axis]), mode, padding_mode
        )
    return out


class CTSpacingd(Spacingd):
    """``Spacingd`` whose inverse is fast for the usual case.

    The forward pass is MONAI's. The inverse maps the canonical grid back to the input grid; since
    ``Spacingd`` keeps the input's direction cosines, that map is a per-axis scale and shift, and
    :func:`resample_axis_aligned` does it in three 1-D passes. MONAI's inverse first builds a full
    coordinate grid with ``affine_grid`` (12 bytes per output voxel), about 6x slower for a
    512x512x200 target (``bench/preprocess_speed.py``). Other cases (rotations, reflection
    padding) fall back to MONAI's inverse.
    """

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._inverse_one(d[key])
        return d

    def _inverse_one(self, img: torch.Tensor) -> torch.Tensor:
        resampler = self.spacing_transform.sp_resample
        if not isinstance(img, MetaTensor) or not img.applied_operations or img.pending_operations:
            return self.spacing_transform.inverse(img)
        info = img.applied_operations[-1]
        extra = info.get(TraceKeys.EXTRA_INFO, {})
        mode, padding = extra.get("mode"), extra.get("padding_mode")
        if mode not in ("nearest", "bilinear") or padding not in ("border", "zeros"):
            return self.spacing_transform.inverse(img)
        src = np.asarray(img.affine, dtype=np.float64)
        dst = np.asarray(extra["src_affine"], dtype=np.float64)
        xform = np.linalg.solve(src, dst)  # output (original) voxel -> canonical voxel
        lin = xform[:3, :3]
        if not np.allclose(lin, np.diag(np.diag(lin)), atol=1e-6):
            return self.spacing_transform.inverse(img)
        transform = resampler.pop_transform(img)
        out_shape = [int(s) for s in transform[TraceKeys.ORIG_SIZE]]
        arr = resample_axis_aligned(img.as_tensor(), np.diag(lin), xform[:3, 3], out_shape, mode, padding)
        out = MetaTensor(arr, meta=dict(img.meta), applied_operations=list(img.applied_operations))
        out.affine = torch.as_tensor(dst, dtype=torch.float64)
        return out
