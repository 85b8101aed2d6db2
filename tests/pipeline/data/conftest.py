"""Helpers of the manifest and importer tests: the shared real DICOM series, and tiny NIfTI files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import SHARED_DATA

DICOM_DIR = SHARED_DATA / "totalsegmentator" / "ct_dicom"
needs_dicom = pytest.mark.skipif(
    not DICOM_DIR.is_dir(), reason="shared real CT data (../shared/data) not present"
)


def nifti(path: Path) -> Path:
    """An 8x8x4 zero volume at ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), np.eye(4)), str(path))
    return path
