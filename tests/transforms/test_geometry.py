"""Geometry: one canonical grid from every format, and exact inversion back to the input grid."""

from __future__ import annotations

import itk
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Spacingd

from tests.transforms.conftest import DICOM_DIR, DICOM_MASK, affine_for, needs_data, phantom, write_nifti
from transforms import LoadCTd, build_infer_transforms, invert_to_original
from transforms.geometry import CTSpacingd


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def dicom_formats(tmp_path_factory):
    """The DICOM series folder and the same scan written by ITK as NIfTI, NRRD and MHA."""
    if not DICOM_DIR.is_dir():
        pytest.skip("real CT test data not available")
    folder = tmp_path_factory.mktemp("formats")
    names = itk.GDCMSeriesFileNames.New(Directory=str(DICOM_DIR))
    image = itk.imread(list(names.GetInputFileNames()))
    paths = {"dicom": str(DICOM_DIR)}
    for fmt, suffix in (("nifti", ".nii.gz"), ("nrrd", ".nrrd"), ("mha", ".mha")):
        paths[fmt] = str(folder / f"scan{suffix}")
        itk.imwrite(image, paths[fmt], compression=True)
    return paths


@needs_data
def test_every_format_gives_the_same_canonical_volume(dicom_formats, cfg):
    cfg.data.target_spacing = [3.0, 3.0, 3.0]
    chain = build_infer_transforms(cfg)
    outs = {fmt: chain({"image": path})["image"] for fmt, path in dicom_formats.items()}
    ref = outs.pop("dicom")
    assert ref.shape[1] < 512 / 3 + 1 and ref.shape[3] == 14  # 3 mm grid, cropped to the body
    assert 0.0 <= float(ref.min()) and float(ref.max()) <= 1.0
    for fmt, out in outs.items():
        assert out.shape == ref.shape, fmt
        np.testing.assert_allclose(out.affine.numpy(), ref.affine.numpy(), atol=1e-4, err_msg=fmt)
        np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-4, err_msg=fmt)


@needs_data
def test_dicom_and_flipped_mask_line_up(cfg):
    # native spacing (no interpolation) and a window wide enough to read back HU
    cfg.data.target_spacing = [0.9765625, 0.9765625, 2.0]
    cfg.data.window_hu = [-2000.0, 4000.0]
    out = build_infer_transforms(cfg, with_label=True)({"image": str(DICOM_DIR), "label": str(DICOM_MASK)})
    hu = out["image"].numpy() * 6000.0 - 2000.0
    mask = out["label"].numpy() > 0
    assert mask.sum() == 1327
    assert 45.0 < hu[mask].mean() < 75.0  # pancreas, ~61 HU; misaligned arrays give ~ -132 HU


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique"])
@pytest.mark.parametrize("spacing, min_dice", [([0.7, 0.7, 1.0], 0.98), ([1.6, 1.6, 2.0], 0.9)])
def test_inversion_restores_grid_and_label(tmp_path, cfg, kind, spacing, min_dice):
    """Shape and affine come back exactly; the label comes back whole. On a grid at least as fine
    as the input the round trip loses nothing (Dice >= 0.98); on a coarser grid the lower bound
    reflects the detail lost at 1.6 mm, for a blob only ~12 voxels across."""
    img, lbl = phantom()
    aff = affine_for(kind=kind)
    rec = {
        "image": write_nifti(tmp_path / "img.nii.gz", img, aff),
        "label": write_nifti(tmp_path / "lbl.nii.gz", lbl, aff),
    }
    cfg.data.target_spacing = spacing
    chain = build_infer_transforms(cfg, with_label=True)
    out = chain(rec)
    assert out["image"].shape != (1, *img.shape)  # really resampled
    for nearest in (True, False):
        back = invert_to_original({**out, "pred": out["label"].clone()}, chain, nearest=nearest)
        pred = back["pred"]
        assert tuple(pred.shape) == (1, *img.shape)
        np.testing.assert_allclose(pred.affine.numpy(), aff, atol=1e-4)
        assert not pred.applied_operations
        dice = _dice(pred[0].numpy() >= 0.5, lbl)
        assert dice >= min_dice, (kind, nearest, dice)


@needs_data
def test_inversion_of_dicom_series(cfg):
    cfg.data.target_spacing = [2.0, 2.0, 2.0]
    chain = build_infer_transforms(cfg, with_label=True)
    out = chain({"image": str(DICOM_DIR), "label": str(DICOM_MASK)})
    # the mask on the DICOM grid: what the prediction must come back to
    original = LoadCTd()({"image": str(DICOM_DIR), "label": str(DICOM_MASK)})
    back = invert_to_original({**out, "pred": out["label"].float()}, chain, nearest=False)["pred"]
    assert back.shape == original["image"].shape == (1, 512, 512, 20)
    np.testing.assert_allclose(back.affine.numpy(), original["image"].affine.numpy(), atol=1e-4)
    truth = original["label"][0].numpy()
    assert truth[:, :, 4:].sum() == 0  # the mask reaches only the lowest 4 slices
    pred = back[0].numpy() >= 0.5
    assert pred[:, :, 5:].sum() == 0
    assert _dice(pred, truth) >= 0.8  # a 1327-voxel mask through a 2 mm grid and back


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_fast_spacing_inverse_matches_monai(mode, padding_mode):
    gen = torch.Generator().manual_seed(0)
    aff = torch.as_tensor(affine_for(spacing=(0.7, 0.9, 2.5), kind="oblique"))
    img = MetaTensor(torch.rand(2, 23, 19, 11, generator=gen), affine=aff)
    kw = {"pixdim": (1.3, 1.1, 1.7), "mode": mode, "padding_mode": padding_mode, "dtype": np.float32}
    ours, theirs = CTSpacingd("x", **kw), Spacingd("x", **kw)
    fwd_ours, fwd_theirs = ours({"x": img})["x"], theirs({"x": img})["x"]
    assert torch.equal(fwd_ours, fwd_theirs)
    a = ours.inverse({"x": fwd_ours})["x"]
    b = theirs.inverse({"x": fwd_theirs})["x"]
    assert a.shape == b.shape == img.shape
    assert torch.allclose(a.affine, b.affine)
    if mode == "nearest":  # ties may round either way in float32: allow a few voxels
        assert (a != b).float().mean() < 0.01
    else:
        torch.testing.assert_close(a.as_tensor(), b.as_tensor(), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "mode,padding", [("bilinear", "border"), ("bilinear", "zeros"), ("nearest", "zeros")]
)
def test_resampling_in_pieces_gives_the_same_values(monkeypatch, mode, padding):
    """A long scan's inversion is interpolated in pieces along each axis (to bound its memory): the
    values must be those of one pass, to the bit."""
    import transforms.geometry as geometry

    img = torch.rand(2, 7, 9, 11)
    args = ([1.6, 0.45, 0.7], [-0.8, 0.1, 0.3], [5, 21, 17], mode, padding)
    whole = geometry.resample_axis_aligned(img, *args)
    monkeypatch.setattr(geometry, "_PIECE_ELEMENTS", 40)  # a few output indices per piece
    pieces = geometry.resample_axis_aligned(img, *args)
    assert pieces.shape == whole.shape == (2, 5, 21, 17)
    assert torch.equal(pieces, whole)
