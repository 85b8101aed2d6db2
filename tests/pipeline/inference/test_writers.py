from __future__ import annotations

import itk
import nibabel as nib
import numpy as np
import pytest

from pipeline.inference.writers import output_suffix, save_like


def _oblique_affine():
    c, s = np.cos(0.3), np.sin(0.3)
    a = np.eye(4)
    a[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.7, 0.9, 2.5])
    a[:3, 3] = [-120.5, 33.25, 410.0]
    return a


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_saved_mask_has_the_reference_geometry(tmp_path, suffix):
    from monai.transforms import LoadImage

    affine = _oblique_affine()
    ref = tmp_path / "scan.nii.gz"
    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), affine)
    img.set_qform(None, code=0)  # like the real files: sform only
    img.set_sform(affine, code=2)
    nib.save(img, str(ref))
    mask = (np.arange(120).reshape(6, 5, 4) % 3 == 0).astype(np.uint8)
    out = save_like(mask, affine, tmp_path / f"mask{suffix}", reference=ref)
    assert not list(tmp_path.glob(".*tmp*"))
    loaded = LoadImage(image_only=True)(str(out))
    np.testing.assert_array_equal(np.asarray(loaded), mask)
    np.testing.assert_allclose(np.asarray(loaded.affine), affine, atol=1e-5)
    if suffix == ".nii.gz":
        hdr = nib.load(str(out)).header
        assert int(hdr["sform_code"]) == 2 and int(hdr["qform_code"]) == 0
        assert hdr.get_data_dtype() == np.uint8
    else:
        im = itk.imread(str(out))
        assert tuple(itk.size(im)) == (6, 5, 4)


def test_output_suffix_follows_input_format(tmp_path):
    assert output_suffix("a/b/scan.nii.gz") == ".nii.gz"
    assert output_suffix("scan.NRRD") == ".nrrd"
    assert output_suffix("scan.mhd") == ".mha"
    assert output_suffix(tmp_path) == ".nii.gz"  # a DICOM series folder
