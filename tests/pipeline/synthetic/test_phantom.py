"""Synthetic CT phantoms: determinism, realistic HU, a label that needs context, geometry and files."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.core.errors import ImageError, UsageError
from pipeline.core.geometry import spacing_from_affine
from pipeline.synthetic.anatomy import Tissue
from pipeline.synthetic.phantom import ORIENTATIONS, _generate, make_phantom, save_phantom, write_phantoms

SMALL = (64, 64, 32)


def _world(ph, ijk: np.ndarray) -> np.ndarray:
    return ijk @ ph.affine[:3, :3].T + ph.affine[:3, 3]


def _centroid(ph) -> np.ndarray:
    return _world(ph, np.argwhere(ph.label).mean(0))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def realistic():
    """A case at the size the demo trains on (shape and spacing drawn from the seed)."""
    return _generate(7, None, None, None)


@pytest.fixture(scope="module")
def views():
    """One seed stored three ways on the same grid size and spacing."""
    return {o: _generate(5, (96, 96, 40), None, o) for o in ORIENTATIONS}


def test_same_seed_gives_identical_phantom_and_other_seeds_differ():
    a, b, c = make_phantom(3, SMALL), make_phantom(3, SMALL), make_phantom(4, SMALL)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert np.array_equal(a.affine, b.affine) and a.spacing == b.spacing and a.orientation == b.orientation
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.label, c.label)


def test_defaults_are_drawn_in_the_documented_ranges(realistic):
    ph, _ = realistic
    assert ph.image.dtype == np.int16 and ph.label.dtype == np.uint8 and ph.affine.dtype == np.float64
    assert ph.image.shape == ph.label.shape and ph.image.ndim == 3
    assert 160 <= ph.image.shape[0] <= 224 and 48 <= ph.image.shape[2] <= 80
    assert 0.6 <= ph.spacing[0] == ph.spacing[1] <= 1.0 and 1.0 <= ph.spacing[2] <= 5.0
    assert ph.orientation in ORIENTATIONS
    assert set(np.unique(ph.label)) == {0, 1}


def test_label_is_one_connected_pancreas_of_realistic_size_and_hu(realistic):
    ph, tissues = realistic
    lab = ph.label.astype(bool)
    assert np.array_equal(lab, tissues == Tissue.PANCREAS)
    assert ndimage.label(lab)[1] == 1
    volume_ml = lab.sum() * np.prod(ph.spacing) / 1000
    assert 20 < volume_ml < 150
    extent = np.ptp(_world(ph, np.argwhere(lab)), axis=0)
    assert extent.max() > 90  # head-to-tail, partly cut by the field of view at worst
    assert 40 <= ph.image[lab].mean() <= 110


@pytest.mark.parametrize(
    ("tissue", "lo", "hi"),
    [
        (Tissue.AIR, -1010, -985),
        (Tissue.FAT, -130, -70),
        (Tissue.LIVER, 40, 85),
        (Tissue.BONE_MARROW, 280, 450),
        (Tissue.ARTERY, 140, 260),
        (Tissue.MUSCLE, 30, 70),
    ],
)
def test_tissue_hu_is_plausible(realistic, tissue, lo, hi):
    ph, tissues = realistic
    core = ndimage.binary_erosion(tissues == tissue, iterations=2)  # away from partial volume
    assert core.sum() > 100
    assert lo <= ph.image[core].mean() <= hi


def test_bone_reaches_cortical_hu(realistic):
    ph, tissues = realistic
    bone = np.isin(tissues, [Tissue.BONE_CORTEX, Tissue.BONE_MARROW])
    assert np.percentile(ph.image[bone], 99) > 600


@pytest.mark.parametrize("shape", [None, (96, 96, 40)])
def test_hu_threshold_alone_cannot_segment_the_pancreas(realistic, shape):
    ph = realistic[0] if shape is None else make_phantom(11, shape)
    lab = ph.label.astype(bool)
    in_range = (ph.image >= 40) & (ph.image <= 110)
    assert _dice(in_range, lab) < 0.5
    # the confusers are close by, not only far away: bowel, vessels, organs within ~15 mm
    near = ndimage.binary_dilation(lab, iterations=int(15 / min(ph.spacing))) & ~lab
    assert (in_range & near).sum() > 0.5 * lab.sum()


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_affine_matches_spacing_and_orientation(orientation):
    ph = make_phantom(2, SMALL, spacing=(0.8, 0.8, 2.5), orientation=orientation)
    assert ph.orientation == orientation and ph.spacing == (0.8, 0.8, 2.5)
    rot = ph.affine[:3, :3]
    np.testing.assert_allclose(spacing_from_affine(rot), [0.8, 0.8, 2.5])
    np.testing.assert_allclose(rot[:, 2], [0, 0, 2.5])
    np.testing.assert_allclose(ph.affine[3], [0, 0, 0, 1])
    if orientation == "oblique":
        sin = abs(rot[1, 0]) / 0.8
        assert np.sin(np.radians(10)) - 1e-9 <= sin <= np.sin(np.radians(20)) + 1e-9
        assert nib.aff2axcodes(ph.affine)[2] == "S"
    else:
        assert nib.aff2axcodes(ph.affine) == tuple(orientation)
        assert np.count_nonzero(rot - np.diag(np.diag(rot))) == 0


def test_ras_and_lps_are_the_same_body_stored_in_another_order(views):
    (ras, _), (lps, _) = views["RAS"], views["LPS"]
    np.testing.assert_allclose(_centroid(ras), _centroid(lps), atol=1e-6)
    assert np.array_equal(lps.label, ras.label[::-1, ::-1, :])
    assert np.array_equal(lps.image, ras.image[::-1, ::-1, :])
    assert not np.array_equal(lps.label, ras.label)


def test_world_position_decides_the_tissue_on_an_oblique_grid(views):
    (ras, ras_t), (obl, obl_t) = views["RAS"], views["oblique"]
    np.testing.assert_allclose(_centroid(obl), _centroid(ras), atol=3.0)
    # look every oblique voxel up in the RAS grid at the same world point
    ijk = np.argwhere(np.ones(obl_t.shape, bool))
    src = np.rint((_world(obl, ijk) - ras.affine[:3, 3]) @ np.linalg.inv(ras.affine[:3, :3]).T).astype(int)
    inside = np.all((src >= 0) & (src < np.array(ras_t.shape)), axis=1)
    a, b = obl_t.reshape(-1)[inside], ras_t[tuple(src[inside].T)]
    assert inside.mean() > 0.5
    assert (a == b).mean() > 0.85  # differences only where the two grids sample a boundary differently
    pa, pb = a == Tissue.PANCREAS, b == Tissue.PANCREAS
    assert _dice(pa, pb) > 0.7


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_round_trip_keeps_arrays_and_affine_in_sform_and_qform(tmp_path, suffix):
    ph = make_phantom(1, (40, 36, 20), orientation="oblique")
    save_phantom(ph, tmp_path / f"img{suffix}", tmp_path / f"lab{suffix}")
    img, lab = nib.load(tmp_path / f"img{suffix}"), nib.load(tmp_path / f"lab{suffix}")
    assert np.asanyarray(img.dataobj).dtype == np.int16 and np.asanyarray(lab.dataobj).dtype == np.uint8
    assert np.array_equal(np.asanyarray(img.dataobj), ph.image)
    assert np.array_equal(np.asanyarray(lab.dataobj), ph.label)
    for loaded in (img, lab):
        assert int(loaded.header["sform_code"]) == 1 and int(loaded.header["qform_code"]) == 1
        np.testing.assert_allclose(loaded.header.get_sform(), ph.affine, atol=1e-4)
        np.testing.assert_allclose(loaded.header.get_qform(), ph.affine, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"img{suffix}", f"lab{suffix}"])


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_round_trip_keeps_arrays_and_lps_geometry(tmp_path, suffix):
    itk = pytest.importorskip("itk")
    ph = make_phantom(1, (40, 36, 20), orientation="oblique")
    save_phantom(ph, tmp_path / f"img{suffix}", tmp_path / f"lab{suffix}")
    for name, expected in (("img", ph.image), ("lab", ph.label)):
        im = itk.imread(str(tmp_path / f"{name}{suffix}"))
        assert np.array_equal(itk.array_from_image(im).transpose(2, 1, 0), expected)
        direction = itk.array_from_matrix(im.GetDirection()) * np.array(im.GetSpacing())
        lps = np.eye(4)
        lps[:3, :3], lps[:3, 3] = direction, np.array(im.GetOrigin())
        np.testing.assert_allclose(np.diag([-1, -1, 1, 1]) @ lps, ph.affine, atol=1e-6)


def test_write_phantoms_cycles_orientations_and_formats(tmp_path):
    rows = write_phantoms(tmp_path, n=4, seed=3, shape=(48, 48, 24), formats=("nii.gz", ".NRRD"))
    assert [r["case_id"] for r in rows] == [f"phantom_{i:03d}" for i in range(4)]
    assert [r["orientation"] for r in rows] == ["RAS", "LPS", "oblique", "RAS"]
    assert [r["image"] for r in rows][:2] == ["images/phantom_000.nii.gz", "images/phantom_001.nrrd"]
    assert len({r["subject_id"] for r in rows}) == 4
    assert len({r["spacing"] for r in rows}) > 1
    for r in rows:
        assert (tmp_path / r["image"]).is_file() and (tmp_path / r["label"]).is_file()
    assert not [p for p in tmp_path.rglob("*") if ".tmp." in p.name]
    lab = nib.load(tmp_path / rows[0]["label"])
    assert np.asanyarray(lab.dataobj).any()
    again = write_phantoms(tmp_path / "again", n=1, seed=3, shape=(48, 48, 24))
    first = nib.load(tmp_path / "again" / again[0]["image"])
    assert np.array_equal(
        np.asanyarray(first.dataobj), np.asanyarray(nib.load(tmp_path / rows[0]["image"]).dataobj)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"orientation": "RAI"},
        {"shape": (64, 64)},
        {"shape": (64, 64, 2)},
        {"spacing": (1.0, 0.0, 1.0)},
        {"spacing": (1.0, float("nan"), 1.0)},
        {"seed": -1},
        {"seed": 1.5},
        {"shape": (4, 4, 4), "spacing": (50.0, 50.0, 50.0)},  # too coarse to hold any pancreas voxel
    ],
)
def test_bad_arguments_raise_config_error(kwargs):
    args = {"seed": 0, "shape": (16, 16, 8)} | kwargs
    with pytest.raises(UsageError):
        make_phantom(**args)


def test_bad_formats_and_suffixes_are_named_errors(tmp_path):
    with pytest.raises(UsageError, match="png"):
        write_phantoms(tmp_path, n=1, formats=("png",))
    with pytest.raises(UsageError):
        write_phantoms(tmp_path, n=0)
    ph = make_phantom(0, (16, 16, 8))
    with pytest.raises(ImageError, match=r"lab\.png"):
        save_phantom(ph, tmp_path / "img.nii.gz", tmp_path / "lab.png")
    assert not list(tmp_path.iterdir())  # nothing half-written
