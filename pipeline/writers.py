"""Write masks on the input scan's exact grid and in its format.

NIfTI inputs: the output reuses the input's NIfTI header (sform, qform and their codes), so the
mask opens exactly on top of the scan. NRRD/MHA inputs and DICOM series (written as NIfTI):
ITK writes spacing, origin and direction derived from the scan's affine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["output_suffix", "output_path", "save_like"]

_NIFTI = (".nii.gz", ".nii")
_ITK = (".nrrd", ".mha", ".mhd", ".nhdr")


def output_suffix(image_path: str | os.PathLike) -> str:
    """File ending for a prediction of ``image_path``: the input's format; NIfTI for a DICOM series."""
    name = str(image_path).lower()
    for ext in (*_NIFTI, ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.endswith(ext):
            return {".nhdr": ".nrrd", ".mhd": ".mha"}.get(ext, ext)
    return ".nii.gz"


def output_path(
    out_dir: str | os.PathLike, case_id: str, image_path: str | os.PathLike, tag: str = ""
) -> Path:
    """``out_dir/<case_id><tag><input's suffix>``."""
    return Path(out_dir) / f"{case_id}{tag}{output_suffix(image_path)}"


def _tmp(path: Path) -> Path:
    # keep the real suffix so the writer picks the right format
    suffix = "".join(s for s in path.suffixes[-2:] if s in (".nii", ".gz", ".nrrd", ".mha"))
    return path.with_name(f".{path.name[: -len(suffix)] if suffix else path.name}.tmp{suffix}")


def save_like(
    array: np.ndarray,
    affine: np.ndarray,
    out_path: str | os.PathLike,
    reference: str | os.PathLike | None = None,
) -> Path:
    """Save ``array`` (voxel order of the input file, i.e. as MONAI's readers return it) atomically.

    Args:
        array: the mask or probability map on the input's grid.
        affine: the input's RAS affine (MONAI's ``original_affine``/``affine`` of the loaded scan).
        out_path: target file; its suffix chooses the format.
        reference: the input file; a NIfTI reference lends its header.

    Returns:
        The written path.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(out_path)
    array = np.asarray(array)
    try:
        if str(out_path).endswith(_NIFTI):
            _save_nifti(array, affine, tmp, reference)
        else:
            _save_itk(array, affine, tmp)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, reference) -> None:
    import nibabel as nib

    ref = str(reference) if reference else ""
    if ref.lower().endswith(_NIFTI):
        hdr = nib.load(ref).header.copy()
        img = nib.Nifti1Image(array, None, header=hdr)  # None: keep the reference's sform/qform as stored
        img.header.set_data_dtype(array.dtype)
        img.header.set_slope_inter(1.0, 0.0)
        img.header["cal_min"], img.header["cal_max"] = 0, 0
    else:
        img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
        img.set_qform(np.asarray(affine, dtype=np.float64), code=1)
        img.set_sform(np.asarray(affine, dtype=np.float64), code=1)
    nib.save(img, str(path))


def _save_itk(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import itk

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    img = itk.image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0)))  # ITK arrays are (z, y, x)
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
    itk.imwrite(img, str(path), compression=True)
