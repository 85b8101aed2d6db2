"""Write masks on the input scan's exact grid and in its format.

NIfTI inputs: the output reuses the input's NIfTI header (sform, qform and their codes), so the
mask opens exactly on top of the scan. NRRD/MHA inputs: ITK writes the spacing, origin and
direction read from the input's own header (bit-for-bit the same geometry). DICOM series (written
as NIfTI) and files without a reference: the geometry comes from the scan's RAS affine. Every file
is written through :func:`pipeline.core.fileio.atomic_write` (a killed writer's partial file is
removed when the same output is written again).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.core.constants import IMAGE_EXTENSIONS, NIFTI_EXTENSIONS
from pipeline.core.errors import ImageError
from pipeline.core.fileio import atomic_write
from pipeline.core.geometry import spacing_from_affine
from transforms.readers import itk_header_io

__all__ = [
    "MASK_EXTENSIONS",
    "PROBABILITY_TAG",
    "output_suffix",
    "output_path",
    "probability_paths",
    "save_like",
    "save_probabilities",
    "itk_geometry",
]

_ITK_EXTENSIONS = tuple(e for e in IMAGE_EXTENSIONS if e not in NIFTI_EXTENSIONS)  # written by ITK
# MetaImage with a detached data file (.mhd + .raw) is written as one .mha file
_ONE_FILE = {".mhd": ".mha"}
# <case>_prob<ext>: the pancreas probability beside the mask (--probabilities); with several classes
# one file per class, <case>_prob_<class name><ext>
PROBABILITY_TAG = "_prob"
# The endings a mask can have: the input's own, or NIfTI for a DICOM series.
MASK_EXTENSIONS: tuple[str, ...] = tuple(dict.fromkeys(_ONE_FILE.get(e, e) for e in IMAGE_EXTENSIONS))


def output_suffix(image_path: str | os.PathLike) -> str:
    """File ending for a prediction of ``image_path``: the input's format; NIfTI for a DICOM series."""
    name = str(image_path).lower()
    for ext in IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return _ONE_FILE.get(ext, ext)
    return NIFTI_EXTENSIONS[0]


def output_path(
    out_dir: str | os.PathLike, case_id: str, image_path: str | os.PathLike, tag: str = ""
) -> Path:
    """``out_dir/<case_id><tag><input's suffix>``."""
    return Path(out_dir) / f"{case_id}{tag}{output_suffix(image_path)}"


def probability_paths(
    out_dir: str | os.PathLike, case_id: str, image_path: str | os.PathLike, names: list[str]
) -> list[Path]:
    """Where ``--probabilities`` writes: ``<case>_prob<ext>`` for one class, else one
    ``<case>_prob_<name><ext>`` per class (``names``: the foreground classes, class 1 first)."""
    if len(names) == 1:
        return [output_path(out_dir, case_id, image_path, PROBABILITY_TAG)]
    return [output_path(out_dir, case_id, image_path, f"{PROBABILITY_TAG}_{n}") for n in names]


def save_probabilities(
    probability: np.ndarray,
    affine: np.ndarray,
    out_dir: str | os.PathLike,
    case_id: str,
    image_path: str | os.PathLike,
    names: list[str],
) -> list[Path]:
    """Write float32 probabilities beside the mask, one 3-D file per foreground class.

    One 3-D file per class rather than one 4-D file: 3D Slicer, ITK-SNAP and nibabel users open each
    as an ordinary volume on the scan's grid and threshold or overlay it, while a 4-D NIfTI is read
    by Slicer as a sequence and by many tools not at all. nnU-Net's ``.npz`` (all channels, with
    background) is for its own ensembling, not for viewing.

    Args:
        probability: (X, Y, Z) for one class, (K, X, Y, Z) for K classes, on the input's grid.
        affine, image_path: as :func:`save_like` (``image_path`` is the reference).
        out_dir, case_id: where, and the file stem.
        names: the foreground class names, class 1 first.

    Returns:
        The written paths, class 1 first.
    """
    arrays = [probability] if probability.ndim == 3 else list(probability)
    paths = probability_paths(out_dir, case_id, image_path, names)
    for array, path in zip(arrays, paths):
        save_like(array, affine, path, image_path)
    return paths


def itk_geometry(path: str | os.PathLike) -> dict:
    """Size, spacing, origin (LPS mm) and direction (3x3, columns = axes) from an ITK-readable
    file's header, without reading its voxels."""
    io = itk_header_io(path)
    n = io.GetNumberOfDimensions()
    return {
        "size": [int(io.GetDimensions(i)) for i in range(n)],
        "spacing": [float(io.GetSpacing(i)) for i in range(n)],
        "origin": [float(io.GetOrigin(i)) for i in range(n)],
        "direction": np.array([io.GetDirection(i) for i in range(n)], dtype=np.float64).T,
    }


def save_like(
    array: np.ndarray,
    affine: np.ndarray,
    out_path: str | os.PathLike,
    reference: str | os.PathLike | None = None,
    before_rename: Callable[[], object] | None = None,
) -> Path:
    """Save ``array`` (voxel order of the input file, i.e. as MONAI's readers return it) atomically.

    Args:
        array: the mask or probability map on the input's grid.
        affine: the input's RAS affine (MONAI's ``original_affine``/``affine`` of the loaded scan).
        out_path: target file; its suffix chooses the format.
        reference: the input file; a NIfTI or NRRD/MHA reference lends its header's geometry.
        before_rename: called once the file is complete under its temporary name, just before it
            is renamed to ``out_path`` (e.g. to record the case first: the file's presence then
            implies the record's).

    Returns:
        The written path.

    Raises:
        ImageError: ``array``'s shape is not the reference's.
        OutputError: the file cannot be written (nothing is left behind).
    """
    out_path = Path(out_path)
    array = np.asarray(array)
    ref = str(reference) if reference else ""

    def write(tmp: Path) -> None:
        if str(out_path).lower().endswith(NIFTI_EXTENSIONS):
            _save_nifti(array, affine, tmp, ref if ref.lower().endswith(NIFTI_EXTENSIONS) else "")
        else:
            _save_itk(array, affine, tmp, ref if ref.lower().endswith(_ITK_EXTENSIONS) else "")
        if before_rename is not None:
            before_rename()

    atomic_write(out_path, write)
    return out_path


def _check_shape(array: np.ndarray, shape, ref: str) -> None:
    if tuple(int(s) for s in shape[:3]) != tuple(array.shape[:3]):
        raise ImageError(
            f"{ref}: output shape {'x'.join(map(str, array.shape))} is not the scan's "
            f"{'x'.join(str(int(s)) for s in shape[:3])}"
        )


def _save_nifti(array: np.ndarray, affine: np.ndarray, tmp: Path, ref: str) -> None:
    import nibabel as nib

    if ref:
        hdr = nib.load(ref).header.copy()
        _check_shape(array, hdr.get_data_shape(), ref)
        img = nib.Nifti1Image(array, None, header=hdr)  # None: keep the reference's sform/qform as stored
        img.header.set_data_dtype(array.dtype)
        img.header.set_slope_inter(1.0, 0.0)
        img.header["cal_min"], img.header["cal_max"] = 0, 0
    else:
        aff = np.asarray(affine, dtype=np.float64)
        img = nib.Nifti1Image(array, aff)
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
        img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(tmp))


def _save_itk(array: np.ndarray, affine: np.ndarray, tmp: Path, ref: str) -> None:
    import itk

    if ref:
        geo = itk_geometry(ref)
        _check_shape(array, geo["size"], ref)
        spacing, origin, direction = geo["spacing"][:3], geo["origin"][:3], geo["direction"][:3, :3]
    else:
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
        spacing = spacing_from_affine(lps).tolist()
        origin, direction = lps[:3, 3].tolist(), lps[:3, :3] / spacing
    img = itk.image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0)))  # ITK arrays are (z, y, x)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction, dtype=np.float64)))
    itk.imwrite(img, str(tmp), compression=True)
