"""Loading CT scans and labels through MONAI's readers (:mod:`transforms.readers`), with checks
that name the file. Images become float32 HU; labels are put on the image's voxel grid.

The checks (:mod:`transforms.validate`, plus :func:`match_label_grid` here) are functions of their
own so that ``pancreas-seg check`` runs exactly what the loaders run: the header before any voxel
is allocated, then NaN or infinite voxels and the geometry again after reading (DICOM series only
get their geometry then), CT-looking intensities for scans, and the label's grid.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, Orientation

from pipeline.core.errors import ImageError
from pipeline.core.geometry import spacing_from_affine
from transforms.readers import read_header, reader_for
from transforms.validate import (
    AIR_MAX_HU,
    MAX_VOXELS,
    SPACING_RANGE_MM,
    check_ct_intensities,
    check_geometry,
    check_header,
    check_shape,
    warn_once,
)

__all__ = [
    "AIR_MAX_HU",
    "LoadCTd",
    "MAX_VOXELS",
    "SPACING_RANGE_MM",
    "check_ct_intensities",
    "check_geometry",
    "check_header",
    "describe_grid",
    "load_volume",
    "match_label_grid",
    "warn_once",
]


# Tolerance for "same grid" between an image and its label, as a fraction of the smallest voxel
# size: file formats store geometry in float32, so exact equality is too strict, while any real
# misalignment is a sizeable fraction of a voxel.
_GRID_TOL = 1e-2


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def describe_grid(img: MetaTensor) -> str:
    """``shape 512x512x20, spacing 0.977x0.977x2 mm, origin (x, y, z) mm RAS`` of a loaded volume."""
    aff = np.asarray(img.affine, dtype=np.float64)
    spacing = spacing_from_affine(aff)
    shape = "x".join(str(int(s)) for s in img.shape[1:])
    sp = "x".join(f"{v:.4g}" for v in spacing)
    org = ", ".join(f"{v:.2f}" for v in aff[:3, 3])
    return f"shape {shape}, spacing {sp} mm, origin ({org}) mm RAS"


def _to_channel_first_3d(img: MetaTensor, name: str) -> MetaTensor:
    """Check dimensionality and return a (1, X, Y, Z) tensor."""
    shape = tuple(int(s) for s in img.shape)
    if img.numel() == 0:
        header = [int(v) for v in np.asarray(img.meta.get("spatial_shape", shape))]
        shape = tuple(header) if len(header) and 0 in header else shape
    check_shape(shape, name)
    return img.reshape(1, *shape[:3])


def _clean_meta(meta: Mapping) -> dict:
    """Keep the geometry and the file name; drop reader-specific header fields.

    The reader's header values are numpy scalars and arrays (and DICOM tags), which
    ``torch.load(weights_only=True)`` refuses: a disk cache holding them would be recomputed on
    every read. Plain types and tensors load safely.
    """
    out = {
        "affine": torch.as_tensor(np.asarray(meta["affine"], dtype=np.float64)),
        "original_affine": torch.as_tensor(
            np.asarray(meta.get("original_affine", meta["affine"]), dtype=np.float64)
        ),
        "spatial_shape": [int(v) for v in np.asarray(meta.get("spatial_shape", []))],
        "filename_or_obj": str(meta.get("filename_or_obj", "")),
        "space": str(meta.get("space", "RAS")),
        "original_channel_dim": float("nan"),
    }
    return out


def load_volume(
    path: str | os.PathLike, name: str | None = None, dicom_series: str = "", dtype=torch.float32
):
    """Load one scan or label as a (1, X, Y, Z) MetaTensor with a RAS affine, checked.

    Args:
        path: a file or a DICOM series folder.
        name: how to name the file in errors (default: ``path``).
        dicom_series: SeriesInstanceUID to pick when a folder holds several series.
        dtype: output dtype; None keeps the file's type (used for labels, checked before casting).

    Returns:
        The volume as a channel-first ``MetaTensor``.

    Raises:
        ImageError: missing, unreadable, corrupt or truncated file; not 3-D; a zero-size axis;
            a header claiming more than :data:`MAX_VOXELS` (refused before reading); a broken
            geometry (:func:`check_geometry`); NaN or infinite voxels; a folder without DICOM.
    """
    p = Path(path)
    name = name or str(path)
    if not p.exists():
        raise ImageError(f"{name}: file not found")
    try:
        header = read_header(p, dicom_series)
    except ImageError as exc:  # re-named: read_header names the path
        raise ImageError(str(exc).replace(str(path), name, 1)) from None
    check_header(header, name, p)  # before a single voxel is allocated
    reader = reader_for(p, dicom_series, dtype, files=header.files)
    loader = LoadImage(reader=reader, image_only=True, dtype=None)
    try:
        img = loader(str(p), reader=reader)  # as the runtime reader, so its ImageError gets through
    except ImageError:
        raise
    except Exception as exc:  # readers raise anything from zlib.error to RuntimeError on bad files
        raise ImageError(f"{name}: cannot read image ({_one_line(exc)})") from None
    img = _to_channel_first_3d(img, name)
    img.meta = _clean_meta(img.meta)
    check_geometry(img.affine, name)  # DICOM series get their geometry only now
    # a sum is finite unless a voxel is NaN/Inf (CT values cannot overflow it): 20x cheaper than isfinite
    if img.dtype.is_floating_point and not bool(torch.isfinite(img.sum())):
        bad = int((~torch.isfinite(img)).sum())
        if bad:
            raise ImageError(f"{name}: image has {bad} NaN or infinite voxels")
    if dtype is not None and img.dtype != dtype:
        img = img.to(dtype)  # one cast, e.g. int16 -> float32
    return img


def match_label_grid(image: MetaTensor, label: MetaTensor, image_name: str, label_name: str) -> MetaTensor:
    """Put ``label`` on ``image``'s voxel grid (axis order/flips only) or raise if the grids differ.

    Raises:
        ImageError: the grids differ (the message states both).
    """
    codes = nib.orientations.aff2axcodes(np.asarray(image.affine))
    label_on_grid = label
    if nib.orientations.aff2axcodes(np.asarray(label.affine)) != codes:
        orient = Orientation(axcodes="".join(codes), labels=(("L", "R"), ("P", "A"), ("I", "S")))
        with orient.trace_transform(False):
            label_on_grid = orient(label)
    a_img = np.asarray(image.affine, dtype=np.float64)
    a_lbl = np.asarray(label_on_grid.affine, dtype=np.float64)
    min_spacing = float(spacing_from_affine(a_img).min())
    same = tuple(label_on_grid.shape[1:]) == tuple(image.shape[1:]) and np.allclose(
        a_img, a_lbl, rtol=0.0, atol=_GRID_TOL * min_spacing
    )
    if not same:
        raise ImageError(
            f"{label_name}: label grid differs from image {image_name}: label {describe_grid(label)}; "
            f"image {describe_grid(image)}"
        )
    label_on_grid.affine = image.affine.clone()  # the same grid to the last bit, so resampling agrees
    return label_on_grid


class LoadCTd(MapTransform):
    """Load a record's image (and label) with MONAI's readers, check them and align the label.

    The image becomes float32 HU, the label keeps its file type (checked by
    :class:`transforms.labels.MapLabelsd`). Entries that are already tensors are kept as they are.

    Args:
        keys: the record keys to load (``image_key`` first, then labels).
        image_key: the scan's key; the other keys are labels checked against its grid.
        dicom_series: SeriesInstanceUID to pick when a folder holds several series.
        allow_missing_keys: skip label keys that are absent (or empty strings) instead of raising;
            the image is always required.
        check_ct: run :func:`check_ct_intensities` on the image read from a file (an all-air scan
            is refused, a non-CT-looking one warned about once per process).

    Raises:
        ImageError: see :func:`load_volume`; also a label whose grid differs from the image's
            (the message states both grids), an all-air scan, and a required path that is missing
            from the record.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        image_key: str = "image",
        dicom_series: str = "",
        allow_missing_keys: bool = False,
        check_ct: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.dicom_series = dicom_series
        self.check_ct = check_ct

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        case = d.get("case_id", "?")
        names: dict[Hashable, str] = {}
        for key in self.keys:
            value = d.get(key)
            if value is None or (isinstance(value, str) and not value.strip()):
                d.pop(key, None)
                if key == self.image_key or not self.allow_missing_keys:
                    raise ImageError(f"case {case}: no {key} path given")
                continue
            if isinstance(value, torch.Tensor):
                names[key] = str(getattr(value, "meta", {}).get("filename_or_obj", key))
                continue
            names[key] = str(value)
            is_image = key == self.image_key
            d[key] = load_volume(
                value, dicom_series=self.dicom_series, dtype=torch.float32 if is_image else None
            )
            if is_image and self.check_ct:
                for message in check_ct_intensities(d[key], names[key]):
                    warn_once(message)
        if self.image_key in names:
            for key in names:
                if key != self.image_key:
                    d[key] = match_label_grid(d[self.image_key], d[key], names[self.image_key], names[key])
        return d
