"""Loading: readers, geometry from the right header fields, and one-line errors that name the file."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.core.errors import ImageError, ManifestError
from tests.transforms.conftest import DCMQI_DIR, DICOM_DIR, affine_for, needs_data, phantom, write_nifti
from transforms import LoadCTd, MapLabelsd, build_infer_transforms, list_dicom_series, parse_label_map


def _one_line_error(exc_info, *parts: str) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, msg
    return msg


@pytest.mark.parametrize("stale_zooms", [False, True])
def test_nifti_uses_sform_when_qform_code_is_zero(tmp_path, stale_zooms):
    img, _ = phantom()
    good = affine_for(kind="lps")
    # a stale qform (code 0, must be ignored): other orientation and origin, same or other voxel size
    stale = np.diag([2.0, 2.0, 2.0, 1.0]) if stale_zooms else affine_for(kind="ras", origin=(0.0, 0.0, 0.0))
    nii = nib.Nifti1Image(img, good)
    nii.set_qform(stale, code=0)
    nii.set_sform(good, code=2)
    path = tmp_path / "s.nii.gz"
    nib.save(nii, str(path))
    hdr = nib.load(str(path)).header
    assert hdr["qform_code"] == 0 and hdr["sform_code"] == 2
    out = LoadCTd("image")({"image": str(path)})["image"]
    np.testing.assert_allclose(out.affine.numpy(), good, atol=1e-5)
    assert out.dtype == torch.float32 and tuple(out.shape) == (1, *img.shape)
    np.testing.assert_array_equal(out[0].numpy(), img)


def test_corrupt_truncated_nifti(tmp_path):
    img, _ = phantom()
    path = write_nifti(tmp_path / "cut.nii.gz", img, affine_for())
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ImageError) as ei:
        LoadCTd("image")({"image": path})
    _one_line_error(ei, "cut.nii.gz", "cannot read")


def test_garbage_file(tmp_path):
    path = tmp_path / "noise.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(ImageError) as ei:
        LoadCTd("image")({"image": str(path)})
    _one_line_error(ei, "noise.nii.gz")


def test_2d_image(tmp_path):
    path = write_nifti(tmp_path / "slice.nii.gz", np.zeros((32, 30), np.int16), np.eye(4))
    with pytest.raises(ImageError) as ei:
        LoadCTd("image")({"image": path})
    _one_line_error(ei, "slice.nii.gz", "2-D", "32x30")


def test_4d_with_several_time_points(tmp_path):
    path = write_nifti(tmp_path / "t.nii.gz", np.zeros((8, 8, 8, 3), np.int16), np.eye(4))
    with pytest.raises(ImageError) as ei:
        LoadCTd("image")({"image": path})
    _one_line_error(ei, "t.nii.gz", "4-D", "3 channels")


def test_zero_size_axis(tmp_path):
    path = write_nifti(tmp_path / "empty.nii.gz", np.zeros((0, 5, 5), np.int16), np.eye(4))
    with pytest.raises(ImageError) as ei:
        LoadCTd("image")({"image": path})
    _one_line_error(ei, "empty.nii.gz", "zero-size axis", "0x5x5")


def test_4d_with_one_time_point_is_a_volume(tmp_path):
    path = write_nifti(tmp_path / "t1.nii.gz", np.ones((8, 7, 6, 1), np.int16), np.eye(4))
    out = LoadCTd("image")({"image": path})["image"]
    assert tuple(out.shape) == (1, 8, 7, 6)


def test_nan_voxels(tmp_path):
    img = np.zeros((10, 10, 10), np.float32)
    img[2, 3, 4] = np.nan
    img[5, 5, 5] = np.inf
    path = write_nifti(tmp_path / "nan.nii.gz", img, np.eye(4))
    with pytest.raises(ImageError) as ei:
        LoadCTd("image")({"image": path})
    _one_line_error(ei, "nan.nii.gz", "2 NaN or infinite")


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(ImageError) as ei:
        LoadCTd("image")({"image": str(tmp_path / "nope.nii.gz")})
    _one_line_error(ei, "nope.nii.gz", "not found")
    empty = tmp_path / "series"
    empty.mkdir()
    (empty / "readme.txt").write_text("no dicom here")
    with pytest.raises(ImageError) as ei:
        LoadCTd("image")({"image": str(empty)})
    _one_line_error(ei, str(empty), "no DICOM")


def test_label_on_another_grid(tmp_path):
    img, lbl = phantom()
    image = write_nifti(tmp_path / "img.nii.gz", img, affine_for())
    label = write_nifti(tmp_path / "lbl.nii.gz", lbl[:, :, :18], affine_for(origin=(-20.0, 15.0, -25.0)))
    with pytest.raises(ImageError) as ei:
        LoadCTd()({"image": image, "label": label})
    msg = _one_line_error(
        ei, "lbl.nii.gz", "img.nii.gz", "40x36x20", "40x36x18", "0.8x0.8x2.5", "-25.00", "-30.00"
    )
    assert msg.count("origin") == 2 and msg.count("spacing") == 2


def test_label_stored_flipped_is_the_same_grid(tmp_path):
    img, lbl = phantom()
    aff = affine_for()
    flip = aff.copy()
    flip[:3, 1] *= -1
    flip[:3, 3] += aff[:3, 1] * (img.shape[1] - 1)  # same voxel centres, y axis reversed
    image = write_nifti(tmp_path / "img.nii.gz", img, aff)
    label = write_nifti(tmp_path / "lbl.nii.gz", lbl[:, ::-1, :].copy(), flip)
    out = LoadCTd()({"image": image, "label": label})
    np.testing.assert_array_equal(out["label"][0].numpy(), lbl)
    assert torch.equal(out["label"].affine, out["image"].affine)


def test_label_values_and_label_map(tmp_path):
    img, lbl = phantom()
    multi = lbl.copy()
    multi[lbl > 0] = 1
    multi[:5, :5, :5] = 2  # e.g. MSD tumour
    multi[-3:, -3:, -3:] = 7
    image = write_nifti(tmp_path / "img.nii.gz", img, affine_for())
    label = write_nifti(tmp_path / "lbl.nii.gz", multi, affine_for())
    chain = lambda m: MapLabelsd()(LoadCTd()({"image": image, "label": label, "label_map": m}))  # noqa: E731
    with pytest.raises(ImageError) as ei:
        chain("")
    _one_line_error(ei, "lbl.nii.gz", "unexpected values 2, 7")
    with pytest.raises(ImageError) as ei:
        chain("1:1,2:1")
    _one_line_error(ei, "unexpected values 7")
    out = chain("1:1,2:1,7:0")
    assert out["label"].dtype == torch.uint8 and "label_map" not in out
    expected = ((multi == 1) | (multi == 2)).astype(np.uint8)
    np.testing.assert_array_equal(out["label"][0].numpy(), expected)
    with pytest.raises(ManifestError):
        parse_label_map("1-1")
    with pytest.raises(ManifestError):
        parse_label_map("1:3")


@needs_data
def test_dicom_folder_with_two_series(tmp_path, cfg):
    folder = tmp_path / "two_series"
    shutil.copytree(DICOM_DIR, folder)
    for f in DCMQI_DIR.iterdir():
        shutil.copy(f, folder / f"dcmqi_{f.name}")
    series = list_dicom_series(folder)
    assert sorted(s["num_slices"] for s in series) == [3, 20]
    dcmqi_uid = next(s["uid"] for s in series if s["num_slices"] == 3)
    with pytest.raises(ImageError) as ei:
        LoadCTd("image")({"image": str(folder)})
    _one_line_error(
        ei, str(folder), "2 DICOM series", dcmqi_uid, "(3 slices)", "(20 slices)", "data.dicom_series"
    )

    cfg.data.dicom_series = dcmqi_uid
    raw = LoadCTd("image", dicom_series=dcmqi_uid)({"image": str(folder)})["image"]
    assert float(raw.min()) == -3024.0  # stored padding -2000 + RescaleIntercept -1024: rescale applied
    cfg.data.target_spacing = [4.0, 4.0, 1.0]
    out = build_infer_transforms(cfg)({"image": str(folder)})["image"]
    assert out.meta["spatial_shape"] == [512, 512, 3]
    # the 20-slice series has no SeriesInstanceUID (anonymised): ITK's series id picks it
    other = next(s["id"] for s in series if s["num_slices"] == 20)
    img = LoadCTd("image", dicom_series=other)({"image": str(folder)})["image"]
    assert tuple(img.shape) == (1, 512, 512, 20)
    with pytest.raises(ImageError) as ei:
        LoadCTd("image", dicom_series="1.2.3.4")({"image": str(folder)})
    _one_line_error(ei, "1.2.3.4", "not in folder")
