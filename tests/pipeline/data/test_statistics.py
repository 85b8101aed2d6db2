"""Study measurements of a mask on its scan: exact volume and HU on anisotropic, oblique and DICOM grids."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.errors import ImageError
from pipeline.data.statistics import (
    STAT_COLUMNS,
    measure,
    measure_files,
    slice_thickness_mm,
    write_statistics,
)
from tests.pipeline.data.conftest import DICOM_DIR, needs_dicom

PANCREAS = {1: "pancreas"}


def _oblique_affine(spacing=(0.7, 0.9, 2.5), origin=(-30.0, 12.0, 40.0)) -> np.ndarray:
    c, s = math.cos(math.radians(25)), math.sin(math.radians(25))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array(
        [[1, 0, 0], [0, 0.96, -0.28], [0, 0.28, 0.96]]
    )
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def _box_case(shape=(40, 36, 20), lo=(5, 6, 3), hi=(15, 18, 9)):
    """A mask of one box (label 1) plus a smaller box of label 2, and an image with known HU."""
    mask = np.zeros(shape, np.uint8)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    mask[box] = 1
    mask[20:24, 20:22, 10:12] = 2
    rng = np.random.default_rng(0)
    image = rng.normal(-500, 200, shape).astype(np.float32)
    image[mask == 1] = np.linspace(20, 80, int((mask == 1).sum()), dtype=np.float32)
    image[mask == 2] = -10.0
    return mask, image, box


def test_volume_hu_centroid_are_exact_on_an_oblique_anisotropic_grid():
    mask, image, box = _box_case()
    aff = _oblique_affine()
    rows = measure(mask, image, aff, {1: "pancreas", 2: "tumour"}, "c1")
    assert [r["label"] for r in rows] == ["pancreas", "tumour"] and list(rows[0]) == list(STAT_COLUMNS)
    n = int((mask == 1).sum())
    assert rows[0]["voxels"] == n == 10 * 12 * 6
    assert rows[0]["volume_ml"] == pytest.approx(n * 0.7 * 0.9 * 2.5 / 1000, rel=1e-12)
    hu = image[mask == 1].astype(np.float64)
    assert rows[0]["hu_mean"] == pytest.approx(hu.mean()) and rows[0]["hu_median"] == pytest.approx(50.0)
    assert rows[0]["hu_p05"] == pytest.approx(np.percentile(hu, 5))
    ijk = np.argwhere(mask == 1).mean(0)
    centroid = aff[:3, :3] @ ijk + aff[:3, 3]
    got = [rows[0][f"centroid_{a}_mm"] for a in "ras"]
    np.testing.assert_allclose(got, centroid, atol=1e-9)
    assert rows[1]["voxels"] == 16 and rows[1]["hu_mean"] == pytest.approx(-10.0) and rows[1]["hu_std"] == 0
    assert rows[0]["slice_thickness_mm"] == pytest.approx(2.5)
    assert not rows[0]["touches_border"]


def test_coordinates_are_the_same_when_worked_out_in_slabs(monkeypatch):
    """A huge class is turned into world coordinates a few slices at a time; the numbers do not change."""
    import pipeline.data.statistics as stats

    rng = np.random.default_rng(3)
    mask = (rng.random((30, 28, 24)) > 0.6).astype(np.uint8)  # scattered: every slab has voxels
    mask[:, :, 5:8] = 0  # and some slabs have none
    aff, image = _oblique_affine(), rng.normal(40, 10, mask.shape).astype(np.float32)
    whole = measure(mask, image, aff, PANCREAS)[0]
    monkeypatch.setattr(stats, "_CHUNK_VOXELS", 30 * 28 * 2)  # slabs of 2 slices
    sliced = measure(mask, image, aff, PANCREAS)[0]
    assert sliced["voxels"] == whole["voxels"] == int(mask.sum())
    for key in ("bbox_x_mm", "bbox_y_mm", "bbox_z_mm"):
        assert sliced[key] == whole[key]  # min and max: exact
    for a in "ras":
        assert sliced[f"centroid_{a}_mm"] == pytest.approx(whole[f"centroid_{a}_mm"], abs=1e-9)
    ijk = np.argwhere(mask == 1).mean(0)
    np.testing.assert_allclose(
        [sliced[f"centroid_{a}_mm"] for a in "ras"], aff[:3, :3] @ ijk + aff[:3, 3], atol=1e-9
    )


def test_bbox_is_the_extent_in_mm_and_a_missing_class_gets_an_empty_row():
    mask, image, _ = _box_case()
    aff = np.diag([-0.8, -0.8, 3.0, 1.0])  # LPS-stored axes: extents are lengths, not signed
    rows = measure(mask, image, aff, {1: "pancreas", 3: "class_3"})
    assert [rows[0][f"bbox_{a}_mm"] for a in "xyz"] == pytest.approx([10 * 0.8, 12 * 0.8, 6 * 3.0])
    assert rows[1]["voxels"] == 0 and rows[1]["volume_ml"] == 0 and math.isnan(rows[1]["hu_mean"])
    assert math.isnan(measure(mask, None, aff, PANCREAS)[0]["hu_mean"])  # no scan: no HU


@pytest.mark.parametrize(
    "lo,hi,touches",
    [
        ((5, 6, 3), (15, 18, 9), False),
        ((0, 6, 3), (15, 18, 9), True),
        ((5, 6, 3), (15, 18, 20), True),
        ((5, 6, 1), (15, 36, 19), True),
        ((1, 1, 1), (39, 35, 19), False),
    ],
)
def test_touches_border_both_ways(lo, hi, touches):
    mask = np.zeros((40, 36, 20), np.uint8)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1
    row = measure(mask, None, np.eye(4), PANCREAS)[0]
    assert row["touches_border"] is touches
    assert row["voxels"] == int(np.prod(np.subtract(hi, lo)))  # flagged, never zeroed


def test_slice_thickness_is_the_spacing_of_the_axis_nearest_s_i():
    aff = np.zeros((4, 4))
    aff[0, 2], aff[1, 0], aff[2, 1], aff[3, 3] = 0.8, 0.8, 5.0, 1.0  # sagittal-stored: axis 1 is S-I
    assert slice_thickness_mm(aff) == pytest.approx(5.0)


def _write_dicom_series(folder: Path, hu: np.ndarray, spacing=(0.75, 0.75, 2.0)) -> None:
    """A CT series (LPS, axial) whose stored values are HU + 1024 with RescaleIntercept -1024."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"s{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.PatientID, ds.AcquisitionDate, ds.StudyDate = "p1", "20240131", "20240130"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-100.0, -90.0, 50.0 + k * spacing[2]]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (y), column spacing (x)
        ds.SliceThickness, ds.InstanceNumber = spacing[2], k + 1
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.ascontiguousarray((hu[:, :, k].T + 1024).astype(np.uint16)).tobytes()  # rows = y
        ds.save_as(str(folder / f"s{k:03d}.dcm"), enforce_file_format=True)
    return study, series


def test_dicom_series_with_rescale_intercept_gives_hu_and_uids(tmp_path):
    pytest.importorskip("pydicom")
    shape = (32, 28, 6)
    hu = np.full(shape, -1000, np.int16)
    mask = np.zeros(shape, np.uint8)
    mask[10:20, 8:15, 1:4] = 1
    hu[mask == 1] = 45
    hu[12, 9, 2] = 145  # mean = 45 + 100 / n
    study, series = _write_dicom_series(tmp_path / "ct", hu)
    # the mask in NIfTI, RAS: x and y flipped relative to the series' LPS voxel order
    lps = np.diag([0.75, 0.75, 2.0, 1.0])
    lps[:3, 3] = [-100.0, -90.0, 50.0]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    flipped = mask[::-1, ::-1, :]
    aff = ras.copy()
    aff[:3, 3] = ras[:3, :3] @ [shape[0] - 1, shape[1] - 1, 0] + ras[:3, 3]
    aff[:3, 0] *= -1
    aff[:3, 1] *= -1
    nib.save(nib.Nifti1Image(np.ascontiguousarray(flipped), aff), str(tmp_path / "mask.nii.gz"))
    row = measure_files(tmp_path / "ct", tmp_path / "mask.nii.gz", PANCREAS, "ct")[0]
    n = 10 * 7 * 3
    assert row["voxels"] == n and row["volume_ml"] == pytest.approx(n * 0.75 * 0.75 * 2.0 / 1000)
    assert row["hu_mean"] == pytest.approx(45 + 100 / n) and row["hu_median"] == 45
    assert (row["study_instance_uid"], row["series_instance_uid"]) == (study, series)
    assert row["acquisition_date"] == "2024-01-31" and row["slice_thickness_mm"] == pytest.approx(2.0)


def test_a_mask_on_another_grid_is_refused_naming_both(tmp_path):
    img = nib.Nifti1Image(np.zeros((8, 8, 4), np.float32) - 100, np.eye(4))
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 5), np.uint8), np.eye(4)), str(tmp_path / "m.nii.gz"))
    with pytest.raises(ImageError, match="m.nii.gz: label grid differs from image"):
        measure_files(tmp_path / "ct.nii.gz", tmp_path / "m.nii.gz", PANCREAS)


def test_write_statistics_csv_and_json_with_units(tmp_path):
    import json

    import pandas as pd

    mask, image, _ = _box_case()
    table = pd.DataFrame(measure(mask, image, np.eye(4), PANCREAS, "c1"))
    write_statistics(table, tmp_path / "s.csv", tmp_path / "s.json")
    back = pd.read_csv(tmp_path / "s.csv")
    assert list(back.columns) == list(STAT_COLUMNS) and back["voxels"][0] == 720
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["units"]["volume_ml"] == "mL" and data["rows"][0]["label"] == "pancreas"


@needs_dicom
@pytest.mark.slow
def test_real_dicom_series_and_its_pancreas_mask():
    row = measure_files(DICOM_DIR, DICOM_DIR.parent / "ct_dicom_pancreas.nii.gz", PANCREAS, "ct")[0]
    aff = nib.load(DICOM_DIR.parent / "ct_dicom_pancreas.nii.gz").affine
    assert row["voxels"] == 1327
    assert row["volume_ml"] == pytest.approx(1327 * abs(np.linalg.det(aff[:3, :3])) / 1000, rel=1e-4)
    assert 55 < row["hu_mean"] < 67  # shared/data README: about 61 (about -132 when the grids are misread)
    assert row["touches_border"]  # the mask reaches the series' lowest slice
    assert row["acquisition_date"] == "2022-12-08"
