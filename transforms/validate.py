"""Checks of scans and labels that the loaders (:mod:`transforms.io`) and ``pancreas-seg check`` share.

- :func:`check_header`, from the header alone, before any voxel is allocated: dimensionality, a
  zero-size axis, a size over :data:`MAX_VOXELS` (a corrupt or hostile header), a truncated NIfTI,
  and :func:`check_geometry` (voxel sizes within :data:`SPACING_RANGE_MM`, an invertible affine);
- :func:`check_ct_intensities` for scans: an all-air volume is an error, a scan without negative
  values (MR, or CT without its rescale intercept) a warning.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from pipeline.core.constants import NIFTI_EXTENSIONS
from pipeline.core.errors import ImageError
from pipeline.core.geometry import spacing_from_affine
from transforms.readers import VolumeHeader

__all__ = [
    "AIR_MAX_HU",
    "MAX_VOXELS",
    "SPACING_RANGE_MM",
    "check_ct_intensities",
    "check_geometry",
    "check_header",
    "check_shape",
    "warn_once",
]

log = logging.getLogger("pancreas_seg")
# Largest volume a header may claim: 2^31 voxels (8.6 GB as float32; a 1024x1024x2048 scan). Real CT
# is far below (512x512x1000 is 0.26e9); a header beyond it is corrupt or hostile, and reading it
# would exhaust memory before failing.
MAX_VOXELS = 2**31
# Voxel sizes outside this range (mm) are broken headers for CT, e.g. 0 or 1e6 mm.
SPACING_RANGE_MM = (0.01, 100.0)
# A scan whose every voxel is at or below this is air only (the default body threshold).
AIR_MAX_HU = -500.0
_warned: set[str] = set()  # warnings already logged by this process (a dataset loads a file often)


def check_shape(shape: tuple[int, ...], name: str) -> None:
    """A single 3-D volume: no zero-size axis, three axes of at least 2, extra axes of size 1."""
    dims = "x".join(str(s) for s in shape)
    if not shape or any(s == 0 for s in shape):
        raise ImageError(f"{name}: image has a zero-size axis ({dims or 'no axes'})")
    if len(shape) < 3:
        raise ImageError(f"{name}: image is {len(shape)}-D ({dims}); expected a 3-D volume")
    extra = shape[3:]
    if any(s != 1 for s in extra):
        raise ImageError(
            f"{name}: image is {len(shape)}-D ({dims}) with {int(np.prod(extra))} channels/time points; "
            "expected a single 3-D volume"
        )
    if any(s < 2 for s in shape[:3]):
        raise ImageError(f"{name}: image is a single slice ({dims}); expected a 3-D volume")


def check_geometry(affine, name: str) -> None:
    """Check a voxel-to-world matrix: finite, voxel sizes within :data:`SPACING_RANGE_MM`, invertible.

    Raises:
        ImageError: NaN/infinite entries, a voxel size of 0 or outside the range, or parallel axes.
    """
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    if not np.isfinite(np.asarray(affine, dtype=np.float64)).all():
        raise ImageError(f"{name}: the header's voxel-to-world matrix has NaN or infinite entries")
    spacing = spacing_from_affine(a)
    lo, hi = SPACING_RANGE_MM
    if not ((spacing >= lo) & (spacing <= hi)).all():
        shown = "x".join(f"{v:.4g}" for v in spacing)
        raise ImageError(
            f"{name}: voxel size {shown} mm is not plausible for CT (expected {lo:g} to {hi:g} mm per axis); "
            "the header's spacing is broken"
        )
    # |det| of the unit-length axes: 1 for orthogonal axes, 0 when two axes are parallel
    if abs(float(np.linalg.det(a / spacing))) < 1e-3:
        raise ImageError(
            f"{name}: the header's voxel-to-world matrix is not invertible (two image axes point the same "
            "way); the geometry is broken"
        )


def _stored_size_problem(path: Path, header: VolumeHeader) -> str | None:
    """Why a NIfTI file holds fewer bytes than its header needs (truncated), or None.

    ``.nii``: the file size. ``.nii.gz``: the gzip trailer's length field (mod 2^32); only when it
    disagrees (a truncated file, or a multi-member gzip) is the stream decompressed to be sure.
    """
    need, low = header.data_bytes, path.name.lower()
    if need <= 0 or not low.endswith(NIFTI_EXTENSIONS):
        return None
    size = path.stat().st_size
    if low.endswith(".nii"):
        return (
            None
            if size >= need
            else f"cannot read image: file is truncated ({size} bytes; the header needs {need})"
        )
    with open(path, "rb") as f:
        f.seek(max(size - 4, 0))
        if size >= 18 and int.from_bytes(f.read(4), "little") == need % 2**32:
            return None
    got = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                got += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        return f"cannot read image: file is truncated or corrupt ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
    return (
        None
        if got >= need
        else f"cannot read image: file is truncated ({got} bytes of data; the header needs {need})"
    )


def check_header(header: VolumeHeader, name: str, path: str | os.PathLike | None = None) -> None:
    """Check what a header claims, before the voxels are read.

    Args:
        header: from :func:`transforms.readers.read_header`.
        name: how to name the file in errors.
        path: the file, to spot a truncated NIfTI (None: skip that check).

    Raises:
        ImageError: not a single 3-D volume, a zero-size axis, more than one value per voxel, more
            voxels than :data:`MAX_VOXELS`, a truncated file, or a broken geometry.
    """
    shape = tuple(int(s) for s in header.shape)
    n = float(np.prod([float(s) for s in shape])) * max(int(header.components), 1) if shape else 0.0
    if n > MAX_VOXELS:
        dims = "x".join(str(s) for s in shape)
        raise ImageError(
            f"{name}: the header claims {dims} voxels ({n:.3g}, {n * 4 / 1e9:.3g} GB as float32), over "
            f"the limit of {MAX_VOXELS:.3g}; refusing to read it (corrupt header?)"
        )
    check_shape(shape, name)
    if header.components > 1:
        raise ImageError(
            f"{name}: image has {header.components} values per voxel (colour or vector data); expected a "
            "grey-level CT volume"
        )
    if path is not None and (problem := _stored_size_problem(Path(path), header)):
        raise ImageError(f"{name}: {problem}")
    if header.affine is not None:
        check_geometry(header.affine, name)


def check_ct_intensities(img: torch.Tensor, name: str, air_max_hu: float = AIR_MAX_HU) -> list[str]:
    """Check that a loaded scan looks like CT in Hounsfield units.

    Args:
        img: the scan, in the values the file stores after rescaling.
        name: how to name the file in messages.
        air_max_hu: HU at or below which every voxel being means "air only".

    Returns:
        Warnings (empty or one): no negative values means it is not HU (MR, or CT saved without its
        rescale intercept): the HU window, the body crop and the model all assume CT.

    Raises:
        ImageError: every voxel is air: a blank or mis-scaled export with no body in it.
    """
    t = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
    lo, hi = (float(v) for v in torch.aminmax(t.reshape(-1)))
    if hi <= air_max_hu:
        raise ImageError(
            f"{name}: every voxel is air (values {lo:g} to {hi:g} HU, none above {air_max_hu:g}); "
            "the scan holds no body (a blank or mis-scaled export?)"
        )
    if lo >= 0:
        return [
            f"{name}: values {lo:g} to {hi:g} with none negative: does not look like CT in Hounsfield units "
            "(MR, or CT saved without its rescale intercept?); results will be meaningless"
        ]
    return []


def warn_once(message: str) -> None:
    """Log ``warning: message`` once per process (datasets load the same file every epoch)."""
    if message not in _warned:
        _warned.add(message)
        log.warning("warning: %s", message)
