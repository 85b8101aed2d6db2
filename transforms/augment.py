"""Spatial augmentation of a training patch: rotation, zoom and translation, from ``data.augment``.

Two recipes are expressible:

- ours (the defaults): rotation about the cranio-caudal axis (``RandRotated``) and an isotropic 3-D
  zoom (``RandZoomd``), each with its own probability, no translation;
- the authors' released code (``configs/paper.yaml``): rotation ±15°, translation ±10 % and in-plane
  zoom 0.7-1.3 with the x and y factors drawn independently, applied to every sample. When every
  enabled step has probability 1 and the zoom is ``in_plane``, the three are one ``RandAffined``: one
  interpolation, as the authors' single torchsample affine. Otherwise each step is its own transform,
  drawn with its own probability.

MONAI's affine maps output voxels to input voxels, so an ``in_plane`` factor ``s`` scales the
sampling grid (``s = 1.3`` shows 1.3x the field of view: the content shrinks by 1/1.3), as in
torchsample's affine; ``RandZoomd`` (``isotropic``) magnifies by its factor.

Speed: each ``RandAffined`` resamples in float32 on a cached identity grid of the patch size.
MONAI's ``Resample`` computes in float64 by default: it converts the patch and its 3xN sampling
grid to float64 and back; the cached grid saves building the identity grid on every call. Together
they halve the step's time on a 160x160x96 patch. The drawn parameters are the same; intensities
differ from a float64 resampling by float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.transforms import RandAffined, RandRotated, RandZoomd

from pipeline.core.config import AugmentConfig

__all__ = ["spatial_augmentation", "translation_voxels"]

_MODES = ("bilinear", "nearest")  # image, label


def translation_voxels(aug: AugmentConfig, patch: Sequence[int]) -> list[float]:
    """The largest shift per axis in voxels: ``augment.translate_frac`` times the patch size."""
    return [float(f) * int(p) for f, p in zip(aug.translate_frac, patch)]


def _in_plane_scale(aug: AugmentConfig) -> list:
    """``RandAffined`` scale_range: x and y factors drawn independently in ``scale_range``, z fixed.

    MONAI adds 1 to what it draws, hence the ``- 1``.
    """
    lo, hi = (float(v) - 1.0 for v in aug.scale_range)
    return [(lo, hi), (lo, hi), (0.0, 0.0)]


def _affine(keys: list[str], patch: Sequence[int], prob: float, device, **ranges) -> RandAffined:
    """``RandAffined`` on patches of size ``patch``: float32 resampling, cached identity grid."""
    step = RandAffined(
        keys,
        spatial_size=[int(p) for p in patch],
        prob=prob,
        mode=_MODES,
        padding_mode="border",
        cache_grid=True,
        device=device,
        **ranges,
    )
    step.rand_affine.resampler.dtype = torch.float32  # MONAI's Resample defaults to float64
    return step


def spatial_augmentation(
    aug: AugmentConfig, keys: list[str], patch: Sequence[int], device: torch.device | None = None
) -> list:
    """The spatial augmentation steps of one patch; steps with no effect are left out.

    Args:
        aug: the ``data.augment`` section, checked when the config was loaded.
        keys: ``[image, label]``: the image is interpolated linearly, the label nearest.
        patch: the patch size (``data.patch_size``), the unit of ``translate_frac``; the affine
            steps expect patches of exactly this size (the patch sampler cuts them).
        device: where the affine steps keep their sampling grid (the patches' device); None: CPU.

    Returns:
        MONAI dictionary transforms, in the order rotation, zoom, translation (or one fused affine).
    """
    radians = math.radians(aug.rotate_deg)
    rotate = aug.rotate_prob > 0 and aug.rotate_deg > 0
    zoom = aug.scale_prob > 0 and list(aug.scale_range) != [1.0, 1.0]
    shift = translation_voxels(aug, patch)
    translate = aug.translate_prob > 0 and any(v > 0 for v in shift)
    probs = [
        p
        for on, p in ((rotate, aug.rotate_prob), (zoom, aug.scale_prob), (translate, aug.translate_prob))
        if on
    ]
    if probs and all(p == 1.0 for p in probs) and (aug.scale_mode == "in_plane" or not zoom):
        return [
            _affine(
                keys,
                patch,
                1.0,
                device,
                rotate_range=[0.0, 0.0, radians] if rotate else None,
                scale_range=_in_plane_scale(aug) if zoom else None,
                translate_range=shift if translate else None,
            )
        ]
    steps: list = []
    if rotate:
        # range_z rotates in the plane of the first two axes, i.e. about the cranio-caudal axis
        steps.append(
            RandRotated(
                keys,
                range_z=radians,
                prob=aug.rotate_prob,
                mode=_MODES,
                padding_mode="border",
                keep_size=True,
            )
        )
    if zoom and aug.scale_mode == "isotropic":
        steps.append(
            RandZoomd(
                keys,
                prob=aug.scale_prob,
                min_zoom=aug.scale_range[0],
                max_zoom=aug.scale_range[1],
                mode=("trilinear", "nearest"),
                keep_size=True,
            )
        )
    elif zoom:
        steps.append(_affine(keys, patch, aug.scale_prob, device, scale_range=_in_plane_scale(aug)))
    if translate:
        steps.append(_affine(keys, patch, aug.translate_prob, device, translate_range=shift))
    return steps
