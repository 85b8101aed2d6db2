"""Voxel spacing from a voxel-to-world matrix, whatever its orientation or type."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.core.geometry import spacing_from_affine


def test_spacing_of_an_oblique_flipped_affine_in_any_container():
    angle = np.deg2rad(30.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.7, 2.5])
    affine[:3, 3] = [-120.0, 40.0, 300.0]  # the origin plays no part
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    expected = [0.8, 0.7, 2.5]
    for value in (affine, lps, affine[:3, :3], torch.as_tensor(affine, dtype=torch.float32), affine.tolist()):
        got = spacing_from_affine(value)
        assert got.shape == (3,) and got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=1e-6)
