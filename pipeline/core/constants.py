"""Values more than one layer needs, spelled once: the HU of air and the image file endings.

They live in the base layer because :mod:`transforms` (which may import only ``pipeline.core``)
needs them as much as the pipeline's stages do.
"""

from __future__ import annotations

__all__ = ["AIR_HU", "NIFTI_EXTENSIONS", "IMAGE_EXTENSIONS"]

# Air in Hounsfield units: what images are padded with before intensity scaling, and what a view
# without a scan is filled with (it shows black in any CT window).
AIR_HU = -1024.0

# NIfTI endings, read with nibabel; everything else in IMAGE_EXTENSIONS goes through ITK.
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")

# Every image file ending a manifest or `infer --input` may name (matched case-insensitively); a
# DICOM series is given as its folder instead. ".nii.gz" comes before ".nii" on purpose: the first
# ending that matches is the one stripped from a file name.
IMAGE_EXTENSIONS: tuple[str, ...] = (*NIFTI_EXTENSIONS, ".nrrd", ".mha", ".mhd")
