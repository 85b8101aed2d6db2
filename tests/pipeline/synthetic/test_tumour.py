"""Phantoms with pancreatic lesions: label 2, HU offset and size as specified, and the binary
phantoms unchanged."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import ndimage

from pipeline.core.errors import UsageError
from pipeline.synthetic.phantom import case_seed, make_phantom, write_phantoms
from pipeline.synthetic.tumour import DIAMETER_MM, OFFSET_HU

# sha256 of image, label and affine bytes, computed with main's code before lesions existed
# (commit c46377e): the default phantoms must stay bit-identical (same random streams).
BEFORE = {
    (0, (64, 64, 32)): "a74dc9525e24f4d82a224e97b44dec37aa8a9c02a951eaf83cf872c2c3f0cfaa",
    (7, None): "86f49fe965170faf91672116607d3ae7b823b9f1ca52ae8ea171140a76563f61",
}


def _hash(ph) -> str:
    return hashlib.sha256(ph.image.tobytes() + ph.label.tobytes() + ph.affine.tobytes()).hexdigest()


@pytest.mark.parametrize("seed,shape", list(BEFORE))
def test_default_phantoms_are_bit_identical_to_before_lesions(seed, shape):
    ph = make_phantom(seed, shape=shape)
    assert _hash(ph) == BEFORE[(seed, shape)] and ph.lesion is None


@pytest.fixture(scope="module")
def pairs():
    """(with lesion, without) for a few cases of write_phantoms' seeds, 48 slices to keep it quick."""
    out = []
    for i in range(4):
        seed = case_seed(0, i)
        out.append(
            (make_phantom(seed, shape=(160, 160, 48), tumour=True), make_phantom(seed, shape=(160, 160, 48)))
        )
    return out


def test_lesion_is_label_2_darker_than_parenchyma_by_the_drawn_offset(pairs):
    for tum, plain in pairs:
        les = tum.lesion
        assert les is not None and OFFSET_HU[0] <= les.offset_hu <= OFFSET_HU[1]
        assert set(np.unique(tum.label)) == {0, 1, 2} and set(np.unique(plain.label)) == {0, 1}
        # the same body: only the lesion's neighbourhood (and the duct) differs
        changed = tum.image != plain.image
        near = ndimage.binary_dilation((tum.label == 2) | (tum.label != plain.label), iterations=6)
        assert not (changed & ~near & (tum.label == plain.label)).any() or les.duct_radius_mm > 0
        # deep inside the lesion, where the plain case is parenchyma: the image is darker by the offset
        core = ndimage.binary_erosion(tum.label == 2, iterations=2) & (plain.label == 1)
        if core.sum() < 20:
            core = (tum.label == 2) & ndimage.binary_erosion(plain.label == 1, iterations=1)
        diff = float((tum.image[core].astype(float) - plain.image[core]).mean())
        assert core.any() and -les.offset_hu - 6 <= diff <= -les.offset_hu * 0.6, (diff, les.offset_hu)


def test_lesion_size_is_within_5_to_30_mm(pairs):
    for tum, _ in pairs:
        les = tum.lesion
        assert DIAMETER_MM[0] <= les.diameter_mm <= DIAMETER_MM[1]
        voxel = float(np.prod(tum.spacing))
        equivalent = (6 * (tum.label == 2).sum() * voxel / np.pi) ** (1 / 3)
        assert 0.4 * les.diameter_mm <= equivalent <= les.diameter_mm + max(tum.spacing)
        ijk = np.argwhere(tum.label == 2)
        world = ijk @ tum.affine[:3, :3].T + tum.affine[:3, 3]
        assert np.linalg.norm(world - les.centre, axis=1).max() <= les.diameter_mm / 2 + 1e-3
        assert ndimage.label(tum.label > 0)[1] == 1  # lesion and gland: one piece


def test_tumour_fraction_spreads_lesions_over_the_cases(tmp_path):
    rows = write_phantoms(tmp_path, n=4, seed=1, shape=(64, 64, 32), tumour_fraction=0.5)
    assert [r["tumour_mm"] > 0 for r in rows] == [False, True, False, True]
    assert {r["label_map"] for r in rows} == {"1:pancreas,2:tumour"}
    with pytest.raises(UsageError, match="tumour fraction"):
        write_phantoms(tmp_path, n=1, tumour_fraction=1.5)
