"""Small CT-like volumes for the transform tests, written with nibabel/ITK in the test's tmp_path."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.config import Config
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
TOTALSEG = DATA / "totalsegmentator"
DICOM_DIR = TOTALSEG / "ct_dicom"
DICOM_MASK = TOTALSEG / "ct_dicom_pancreas.nii.gz"
DCMQI_DIR = DATA / "dcmqi" / "ct_dicom_3slice"

needs_data = pytest.mark.skipif(not DICOM_DIR.is_dir(), reason="real CT test data not available")


def affine_for(spacing=(0.8, 0.8, 2.5), kind: str = "ras", origin=(-20.0, 15.0, -30.0)) -> np.ndarray:
    """A NIfTI (RAS) affine: ``ras`` axis-aligned, ``lps`` with x and y flipped, ``oblique`` rotated."""
    direction = np.eye(3)
    if kind == "lps":
        direction = np.diag([-1.0, -1.0, 1.0])
    elif kind == "oblique":
        a, b = np.radians(20.0), np.radians(10.0)
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        direction = rz @ rx
    aff = np.eye(4)
    aff[:3, :3] = direction @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def phantom(shape=(40, 36, 20), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """int16 HU volume (air around an elliptic body of soft tissue) and a uint8 blob label inside."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.75) ** 2 < 1
    img = np.where(body, 40, -1000).astype(np.int16) + rng.integers(-15, 15, shape).astype(np.int16)
    label = (((x - 0.1) / 0.45) ** 2 + ((y + 0.05) / 0.4) ** 2 + (z / 0.6) ** 2 < 1).astype(np.uint8)
    img[label > 0] += 60
    return img, label


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def small_config() -> Config:
    """Default config with a coarse grid and small patches for speed."""
    c = Config()
    c.data.target_spacing = [1.6, 1.6, 2.0]
    c.data.patch_size = [16, 16, 16]
    c.data.body_margin_mm = 2.0
    return c


@pytest.fixture
def cfg() -> Config:
    return small_config()


@pytest.fixture
def case(tmp_path: Path) -> dict:
    """A record for a 40x36x20 phantom at 0.8x0.8x2.5 mm with its label."""
    img, lbl = phantom()
    aff = affine_for()
    return {
        "case_id": "p01",
        "image": write_nifti(tmp_path / "p01.nii.gz", img, aff),
        "label": write_nifti(tmp_path / "p01_label.nii.gz", lbl, aff),
        "label_map": "",
    }
