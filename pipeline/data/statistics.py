"""Study measurements of a label map on its own scan: volume, attenuation, extent, position, border.

One row per case and foreground class (:data:`STAT_COLUMNS`), measured on the input's own grid:

* ``volume_ml`` = voxel count x the grid's voxel volume (|det| of the affine's 3x3 part, so
  anisotropic and oblique grids are exact), in millilitres (1 mL = 1000 mm^3).
* ``hu_*`` from the scan's values as the readers return them (DICOM rescale slope/intercept applied
  by ITK; NIfTI scl_slope/scl_inter by nibabel), never the resampled or windowed copy.
* ``bbox_{x,y,z}_mm``: the extent of the class's voxels along the world R-L, A-P and S-I axes,
  whole voxels included (a single voxel of 1 x 1 x 2 mm is 1 x 1 x 2 mm).
* ``centroid_{r,a,s}_mm``: the centre of mass of the voxel centres, RAS world coordinates.
* ``touches_border``: a class voxel lies on the first or last index of any array axis (the first
  or last slice, or the in-plane edge): the organ may be cut off. Flagged, never zeroed.
* ``slice_thickness_mm``: the voxel spacing along the array axis closest to the S-I direction
  (from the grid, i.e. slice positions, not the DICOM SliceThickness tag).
* ``study_instance_uid``, ``series_instance_uid``, ``acquisition_date`` (ISO): DICOM series only
  (AcquisitionDate, else SeriesDate, else StudyDate); empty otherwise.

Used by inference (``statistics.csv`` beside the masks), evaluation (the reference's statistics
and volume errors) and ``pancreas-seg statistics`` (masks of any tool).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.core.errors import writing
from pipeline.core.fileio import atomic_write, atomic_write_text
from transforms.io import load_volume, match_label_grid
from transforms.readers import choose_series

__all__ = [
    "STAT_COLUMNS",
    "DICOM_COLUMNS",
    "measure",
    "voxel_volume_mm3",
    "slice_thickness_mm",
    "dicom_metadata",
    "measure_files",
    "UNITS",
    "write_statistics",
]

DICOM_COLUMNS = ("study_instance_uid", "series_instance_uid", "acquisition_date")
STAT_COLUMNS: tuple[str, ...] = (
    "case_id",
    "label",
    "label_value",
    "voxels",
    "volume_ml",
    "hu_mean",
    "hu_median",
    "hu_std",
    "hu_p05",
    "hu_p95",
    "bbox_x_mm",
    "bbox_y_mm",
    "bbox_z_mm",
    "centroid_r_mm",
    "centroid_a_mm",
    "centroid_s_mm",
    "touches_border",
    "slice_thickness_mm",
    *DICOM_COLUMNS,
)
_HU_KEYS = ("hu_mean", "hu_median", "hu_std", "hu_p05", "hu_p95")
# The unit of each numeric column, written into statistics.json beside the rows.
UNITS: dict[str, str] = {
    "voxels": "count",
    "volume_ml": "mL",
    **{c: "HU" for c in _HU_KEYS},
    **{c: "mm" for c in STAT_COLUMNS if c.endswith("_mm")},
    "acquisition_date": "ISO date",
}


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """The volume of one voxel in mm^3: |det| of the affine's 3x3 part (any orientation)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def slice_thickness_mm(affine: np.ndarray) -> float:
    """The spacing of the array axis whose direction is closest to the S-I (world z) axis."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    lengths = np.sqrt((a**2).sum(axis=0))
    axis = int(np.argmax(np.abs(a[2]) / lengths))
    return float(lengths[axis])


def _empty_row(case_id: str, name: str, value: int) -> dict:
    row = {c: math.nan for c in STAT_COLUMNS}
    row.update(case_id=case_id, label=name, label_value=value, voxels=0, volume_ml=0.0)
    row.update(bbox_x_mm=0.0, bbox_y_mm=0.0, bbox_z_mm=0.0, touches_border=False)
    return row


def measure(
    mask: np.ndarray,
    image: np.ndarray | None,
    affine: np.ndarray,
    classes: Mapping[int, str],
    case_id: str = "",
    dicom: Mapping[str, str] | None = None,
) -> list[dict]:
    """The rows of :data:`STAT_COLUMNS` for each foreground class of ``mask`` on its scan.

    Args:
        mask: integer label map (X, Y, Z), the scan's voxel order.
        image: the scan's values on the same grid (HU), or None (the ``hu_*`` columns are NaN).
        affine: the grid's 4x4 voxel-to-RAS matrix (mm).
        classes: ``{label value: name}``, e.g. :func:`pipeline.core.label_map.class_names`; one row
            each, in this order (a class without voxels gets a row with 0 voxels).
        case_id: written into every row.
        dicom: the :data:`DICOM_COLUMNS` values (:func:`dicom_metadata`); empty when None.

    Returns:
        One dict per class.

    Raises:
        ValueError: ``image`` and ``mask`` differ in shape.
    """
    from scipy import ndimage

    mask = np.asarray(mask)
    if mask.ndim == 4:
        mask = mask[0]
    if image is not None:
        image = np.asarray(image)
        image = image[0] if image.ndim == 4 else image
        if image.shape != mask.shape:
            raise ValueError(f"image shape {image.shape} differs from mask shape {mask.shape}")
    aff = np.asarray(affine, dtype=np.float64)
    vox_ml = voxel_volume_mm3(aff) / 1000.0
    # the world extent of one voxel along R, A and S: the sum of its edges' projections
    footprint = np.abs(aff[:3, :3]).sum(axis=1)
    thickness = slice_thickness_mm(aff)
    meta = {c: str((dicom or {}).get(c, "") or "") for c in DICOM_COLUMNS}
    top = max([int(k) for k in classes] + [0])
    # one pass over the whole mask for every class's box; the rest works on the boxes only
    labels = mask if np.issubdtype(mask.dtype, np.integer) and mask.min(initial=0) >= 0 else None
    boxes = ndimage.find_objects(labels if labels is not None else mask.astype(np.int64).clip(0), top)
    rows = []
    for value, name in classes.items():
        value = int(value)
        box = boxes[value - 1] if 0 < value <= len(boxes) else None
        row = _empty_row(case_id, name, value)
        row["slice_thickness_mm"] = thickness
        row.update(meta)
        if box is not None:
            sel = mask[box] == value
            n, low, high, centroid = _world_box(sel, box, aff)
            extent = high - low + footprint
            row.update(voxels=n, volume_ml=n * vox_ml)
            row.update(bbox_x_mm=extent[0], bbox_y_mm=extent[1], bbox_z_mm=extent[2])
            row.update(centroid_r_mm=centroid[0], centroid_a_mm=centroid[1], centroid_s_mm=centroid[2])
            row["touches_border"] = any(s.start == 0 or s.stop == size for s, size in zip(box, mask.shape))
            if image is not None:
                hu = image[box][sel].astype(np.float64)  # 8 bytes per voxel of the class
                p05, p50, p95 = np.percentile(hu, [5, 50, 95])
                row.update(hu_mean=hu.mean(), hu_median=p50, hu_std=hu.std(), hu_p05=p05, hu_p95=p95)
        rows.append({c: _plain(row[c]) for c in STAT_COLUMNS})
    return rows


_CHUNK_VOXELS = 4_000_000  # voxels of a class turned into world coordinates at once


def _world_box(
    sel: np.ndarray, box: tuple, aff: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Voxel count, lowest and highest world coordinate (R, A, S) of the voxel centres, and centroid.

    ``sel`` is the class's mask inside ``box`` (slices of the whole grid). Works through the box in
    slabs of the last axis, so a class of 100 M voxels (a broken model's mask over a whole-body scan)
    needs a few hundred MB, not 72 bytes per voxel for its index and coordinate arrays.
    """
    low, high, total, n = np.full(3, np.inf), np.full(3, -np.inf), np.zeros(3), 0
    plane = max(1, sel.shape[0] * sel.shape[1])
    step = max(1, _CHUNK_VOXELS // plane)
    for z0 in range(0, sel.shape[2], step):
        idx = np.nonzero(sel[:, :, z0 : z0 + step])
        if not idx[0].size:
            continue
        starts = (box[0].start, box[1].start, box[2].start + z0)
        ijk = np.stack([i + s for i, s in zip(idx, starts)]).astype(np.float64)  # (3, chunk)
        world = aff[:3, :3] @ ijk + aff[:3, 3:4]
        low, high = np.minimum(low, world.min(axis=1)), np.maximum(high, world.max(axis=1))
        total += world.sum(axis=1)
        n += int(idx[0].size)
    return n, low, high, total / max(n, 1)


def _plain(v):
    """numpy scalars as Python numbers (the rows go into JSON)."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v)
    return v


def _iso_date(text: str) -> str:
    t = "".join(ch for ch in str(text) if ch.isdigit())
    return f"{t[:4]}-{t[4:6]}-{t[6:8]}" if len(t) >= 8 else ""


def dicom_metadata(path: str | os.PathLike, dicom_series: str = "") -> dict:
    """StudyInstanceUID, SeriesInstanceUID and acquisition date (ISO) of a DICOM series folder.

    The date is AcquisitionDate, else SeriesDate, else StudyDate. Read from one file's header
    (ITK/GDCM, no pixel data); a folder with several series is resolved as the loaders resolve it.

    Args:
        path: the scan; anything but a folder gives empty values.
        dicom_series: ``data.dicom_series`` (the series to pick in a folder holding several).

    Returns:
        ``{column: value}`` for :data:`DICOM_COLUMNS` (empty strings when absent).
    """
    import itk

    out = {c: "" for c in DICOM_COLUMNS}
    p = Path(path)
    if not p.is_dir():
        return out
    files = [f for f in sorted(p.iterdir()) if f.is_file() and not f.name.startswith(".")]
    first = None
    if not dicom_series:  # the common case, one series: any slice's header names it
        io = itk.GDCMImageIO.New()
        first = next((str(f) for f in files if io.CanReadFile(str(f))), None)
    if first is None:
        first = choose_series(p, dicom_series)["files"][0]
    io = itk.GDCMImageIO.New()
    io.SetFileName(first)
    io.ReadImageInformation()
    meta = io.GetMetaDataDictionary()

    def tag(key: str) -> str:
        return str(meta[key]).strip().rstrip("\x00").strip() if meta.HasKey(key) else ""

    out["study_instance_uid"] = tag("0020|000d")
    out["series_instance_uid"] = tag("0020|000e")
    out["acquisition_date"] = next(
        (d for d in (_iso_date(tag(k)) for k in ("0008|0022", "0008|0021", "0008|0020")) if d), ""
    )
    return out


def measure_files(
    image_path: str | os.PathLike,
    mask_path: str | os.PathLike,
    classes: Mapping[int, str],
    case_id: str = "",
    dicom_series: str = "",
) -> list[dict]:
    """:func:`measure` of a mask file on its scan (a file or a DICOM series folder).

    The mask is brought onto the scan's voxel grid through orientation (axis order and flips), so a
    mask stored in another orientation than its scan is measured correctly.

    Raises:
        ImageError: a file cannot be read, or the mask's grid is not the scan's (both grids named).
    """
    import torch

    image = load_volume(image_path, dicom_series=dicom_series, dtype=torch.float32)
    mask = load_volume(mask_path, dtype=None)
    mask = match_label_grid(image, mask, str(image_path), str(mask_path))
    m = np.asarray(mask[0])
    if not np.issubdtype(m.dtype, np.integer):
        m = np.rint(m).astype(np.int32)  # a float-typed label file
    return measure(
        m,
        np.asarray(image[0]),
        np.asarray(image.affine),
        classes,
        case_id,
        dicom_metadata(image_path, dicom_series),
    )


def write_statistics(
    table,
    csv_path: str | os.PathLike,
    json_path: str | os.PathLike | None = None,
    units: Mapping[str, str] | None = None,
) -> Path:
    """Write a statistics table as CSV (and as JSON: ``{"units": {...}, "rows": [...]}``), atomically.

    Args:
        table: a DataFrame of :data:`STAT_COLUMNS` rows (more columns are kept after them).
        csv_path: the CSV.
        json_path: the JSON, or None for none.
        units: units of extra columns, merged with :data:`UNITS`.

    Raises:
        OutputError: a file cannot be written (nothing half-written is left).
    """
    import json

    cols = [c for c in STAT_COLUMNS if c in table.columns] + [
        c for c in table.columns if c not in STAT_COLUMNS
    ]
    table = table[cols]
    with writing(csv_path):
        atomic_write(csv_path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
    if json_path is not None:
        all_units = {**UNITS, **(units or {})}
        rows = json.loads(table.to_json(orient="records"))
        text = json.dumps(
            {"units": {c: u for c, u in all_units.items() if c in cols}, "rows": rows}, indent=1
        )
        with writing(json_path):
            atomic_write_text(json_path, text)
    return Path(csv_path)
