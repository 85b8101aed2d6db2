"""The one place that builds the transform chains for training, validation and inference.

Every chain starts with the same deterministic steps, so a scan lands on the same canonical grid
whatever its format: load (:class:`~transforms.io.LoadCTd`), map labels, reorient to
``data.orientation``, crop to the body (``data.body_crop``), resample to the target spacing, normalise
intensities. The geometric steps are MONAI's invertible transforms, so :func:`invert_to_original`
brings a prediction back to the input's exact grid with ``Invertd``. The body crop comes before the
resampling: it is computed on the original grid in HU, and resampling (and its inverse) then work on
the smaller box.

The training chain adds patch sampling and augmentation; everything before the first random
transform is deterministic, so ``CacheDataset``/``PersistentDataset`` cache it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import (
    Invertd,
    Orientationd,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
    ToDeviced,
)

from pipeline.core.config import Config
from pipeline.core.config_checks import AXIS_LABELS
from pipeline.core.constants import AIR_HU
from transforms.augment import spatial_augmentation
from transforms.compose import CTCompose
from transforms.geometry import BodyCropd, CTSpacingd
from transforms.intensity import build_intensity
from transforms.io import LoadCTd
from transforms.labels import MapLabelsd
from transforms.sampling import ForegroundIndicesd, RandClassesCropFromIndicesd, RandPosNegCropFromIndicesd

__all__ = [
    "build_train_transforms",
    "build_val_transforms",
    "build_infer_transforms",
    "invert_to_original",
    "augmentation_device",
    "INDICES_KEY",
]

INDICES_KEY = "label_indices"  # the label's foreground indices, cached with the volume


def _canonical_steps(cfg: Config, keys: list[str], label_required: bool) -> list:
    """Load, map labels, reorient, body crop, resample: the deterministic geometry of every chain.

    The values are checked when the config is loaded; ``data.target_spacing`` already holds the
    fingerprint's suggestion when ``data.spacing_from_fingerprint`` is true.
    """
    spacing = [float(s) for s in cfg.data.target_spacing]
    orientation = str(cfg.data.orientation).upper()
    labels = [k for k in keys if k != "image"]
    allow_missing = not label_required  # labels only: LoadCTd always requires the image
    steps: list = [
        LoadCTd(keys, image_key="image", dicom_series=cfg.data.dicom_series, allow_missing_keys=allow_missing)
    ]
    if labels:
        steps.append(MapLabelsd(labels, allow_missing_keys=allow_missing, class_names=cfg.data.class_names))
    steps.append(
        Orientationd(keys, axcodes=orientation, labels=AXIS_LABELS, allow_missing_keys=allow_missing)
    )
    if cfg.data.body_crop:
        steps.append(
            BodyCropd(
                keys,
                source_key="image",
                threshold=cfg.data.body_threshold_hu,
                margin_mm=cfg.data.body_margin_mm,
                allow_missing_keys=allow_missing,
            )
        )
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    steps.append(
        CTSpacingd(keys, pixdim=spacing, mode=modes, dtype=np.float32, allow_missing_keys=allow_missing)
    )
    return steps


def build_infer_transforms(cfg: Config, with_label: bool = False) -> CTCompose:
    """Whole-volume chain for inference: the image (and label) on the canonical grid, normalised.

    Args:
        cfg: the pipeline config (``data`` section).
        with_label: also load, map and resample ``"label"`` (nearest); records without one are fine.

    Returns:
        An invertible ``Compose`` (a :class:`~transforms.compose.CTCompose`: it raises the pipeline's
        ``ImageError`` itself, not MONAI's ``RuntimeError`` wrapper); pass it to
        :func:`invert_to_original` with the prediction.
    """
    keys = ["image", "label"] if with_label else ["image"]
    return CTCompose([*_canonical_steps(cfg, keys, label_required=False), build_intensity(cfg, "image")])


def build_val_transforms(cfg: Config) -> CTCompose:
    """Whole-volume chain for sliding-window validation: image and label on the canonical grid."""
    keys = ["image", "label"]
    return CTCompose([*_canonical_steps(cfg, keys, label_required=True), build_intensity(cfg, "image")])


def _augmentation(cfg: Config, keys: list[str], device: torch.device | None = None) -> list:
    """Seeded augmentation of one patch, from ``data.augment``; steps with no effect are left out."""
    aug = cfg.data.augment
    steps: list = []
    if aug.flip_prob > 0:
        steps += [RandFlipd(keys, prob=aug.flip_prob, spatial_axis=axis) for axis in (0, 1)]  # in-plane axes
    steps += spatial_augmentation(aug, keys, cfg.data.patch_size, device)  # rotation, zoom, translation
    if aug.intensity_prob > 0 and aug.intensity_shift > 0:
        steps.append(RandShiftIntensityd("image", offsets=aug.intensity_shift, prob=aug.intensity_prob))
    if aug.intensity_prob > 0 and aug.intensity_scale > 0:
        steps.append(RandScaleIntensityd("image", factors=aug.intensity_scale, prob=aug.intensity_prob))
    if aug.noise_std > 0 and aug.noise_prob > 0:
        steps.append(RandGaussianNoised("image", prob=aug.noise_prob, mean=0.0, std=aug.noise_std))
    return steps


def build_train_transforms(cfg: Config, device: torch.device | str | None = None) -> CTCompose:
    """Training chain: canonical grid, padding to the patch size, patches around the pancreas,
    augmentation. Seeded with ``train.seed``.

    Each volume yields a list of ``data.samples_per_volume`` patch dicts of ``data.patch_size``;
    a fraction ``data.pos_fraction`` of them is centred on a label voxel. With several classes that
    fraction is shared equally between the classes (``RandCropByLabelClassesd``, as nnU-Net
    oversamples each foreground class): a tumour of a few hundred voxels would otherwise be the
    centre of almost no patch. One class keeps ``RandCropByPosNegLabeld`` (the same draws as before).
    The label's foreground indices are cached with the volume (:mod:`transforms.sampling`).

    Args:
        cfg: the pipeline config (``data``, ``train.seed``).
        device: where the augmentation runs (:func:`augmentation_device`): ``ToDeviced`` moves the
            patches there right after they are cut, before the first random augmentation step.
            ``None`` (the default) leaves them where they are loaded, on the CPU.
    """
    keys = ["image", "label"]
    patch = [int(v) for v in cfg.data.patch_size]
    pos = float(cfg.data.pos_fraction)
    device = torch.device(device) if device is not None else None
    steps = [
        *_canonical_steps(cfg, keys, label_required=True),
        # volumes smaller than a patch: pad the image with air and the label with background
        SpatialPadd("image", spatial_size=patch, value=AIR_HU),
        SpatialPadd("label", spatial_size=patch, value=0),
        build_intensity(cfg, "image"),
        ForegroundIndicesd("label", indices_key=INDICES_KEY, num_classes=len(cfg.data.class_names)),
        # --- first random transform: everything above is cached by make_dataset ---
        _patch_sampler(cfg, keys, patch, pos),
        *([ToDeviced(keys, device=device)] if device is not None else []),
        *_augmentation(cfg, keys, device),
    ]
    chain = CTCompose(steps)
    chain.set_random_state(seed=int(cfg.train.seed))
    return chain


def augmentation_device(cfg: Config, device: torch.device | str) -> torch.device | None:
    """The device the training augmentation runs on: ``device`` when it is CUDA and the chain runs
    in the training process (``data.num_workers`` 0), else ``None`` (the CPU, in the workers): CUDA
    cannot be used in forked DataLoader worker processes.

    Whole volumes stay cached on the CPU: only the patches of the current batch are moved, so the
    GPU memory does not grow with the number of cached cases and a disk cache holds no CUDA tensors.
    """
    device = torch.device(device)
    return device if device.type == "cuda" and int(cfg.data.num_workers) == 0 else None


def _patch_sampler(cfg: Config, keys: list[str], patch: list[int], pos: float):
    """Patches centred on foreground (each class alike) with probability ``pos``, else on background."""
    n = int(cfg.data.samples_per_volume)
    k = len(cfg.data.class_names)
    if k == 1:
        return RandPosNegCropFromIndicesd(
            keys,
            label_key="label",
            indices_key=INDICES_KEY,
            spatial_size=patch,
            pos=pos,
            neg=1.0 - pos,
            num_samples=n,
        )
    # warn=False: a case without tumour has no voxel of that class; MONAI then draws from the others
    return RandClassesCropFromIndicesd(
        keys,
        label_key="label",
        indices_key=INDICES_KEY,
        spatial_size=patch,
        ratios=[1.0 - pos] + [pos / k] * k,
        num_classes=k + 1,
        num_samples=n,
        warn=False,
    )


def invert_to_original(
    data: dict, infer_transforms: CTCompose, keys: Sequence[str] = ("pred",), nearest: bool = True
) -> dict:
    """Bring predictions from the canonical grid back to the input image's grid.

    Args:
        data: the dict that ``infer_transforms`` returned (its ``"image"`` carries the applied
            operations) plus the predictions under ``keys``: channel-first tensors on the canonical grid.
        infer_transforms: the chain from :func:`build_infer_transforms` that produced ``data``.
        keys: prediction keys to invert.
        nearest: nearest-neighbour interpolation (labels); False for probabilities (linear).

    Returns:
        A new dict with each prediction on the original grid: the loaded image's shape, and a meta
        affine equal to the original affine.
    """
    keys = list(keys)
    inverter = Invertd(
        keys=keys,
        transform=infer_transforms,
        orig_keys=["image"] * len(keys),
        nearest_interp=nearest,
        to_tensor=True,
    )
    return inverter(dict(data))
