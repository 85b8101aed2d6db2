"""Voxel geometry shared by every layer: the voxel size of a voxel-to-world matrix."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["spacing_from_affine"]


def spacing_from_affine(affine: Any) -> np.ndarray:
    """The voxel size along each array axis: the length of each column of the affine's 3x3 part.

    Holds for any orientation (oblique too) and for RAS or LPS matrices alike (flipping world axes
    does not change a column's length).

    Args:
        affine: a 4x4 voxel-to-world matrix (or its 3x3 part): a NumPy array, a (CPU) torch
            tensor such as a ``MetaTensor``'s ``affine``, or nested lists.

    Returns:
        float64 array of shape (3,), in the affine's units (mm for medical images).
    """
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    return np.sqrt((a**2).sum(axis=0))
