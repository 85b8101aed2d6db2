"""Dataset fingerprint: spacings, shapes and foreground HU statistics of the training cases, and the
target spacing and patch size they suggest (after nnU-Net's ``DatasetFingerprintExtractor`` and
``ExperimentPlanner``).

The JSON written by ``pancreas-seg fingerprint`` is what ``data.intensity: fingerprint`` (nnU-Net's
CT normalisation) and ``data.spacing_from_fingerprint`` use: the config reads it when it is loaded
(:mod:`pipeline.core.fingerprint`, which also has :func:`read_fingerprint`). Spacings and shapes are
given in the axis order of ``data.orientation`` (the order the chains resample in).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.transforms import Orientationd

from pipeline.core.config import Config
from pipeline.core.config_checks import AXIS_LABELS
from pipeline.core.errors import ManifestError
from pipeline.core.fileio import atomic_write_text
from pipeline.core.fingerprint import read_fingerprint
from pipeline.core.geometry import spacing_from_affine
from transforms.compose import CTCompose
from transforms.geometry import BodyCropd
from transforms.io import LoadCTd
from transforms.labels import MapLabelsd

__all__ = [
    "FINGERPRINT_VERSION",
    "ANISO_THRESHOLD",
    "compute_fingerprint",
    "suggest_target_spacing",
    "suggest_patch_size",
    "write_fingerprint",
    "read_fingerprint",
]

FINGERPRINT_VERSION = 1
ANISO_THRESHOLD = 3.0  # nnU-Net: an axis is low-resolution when its spacing is > 3x the finest
PERCENTILES = (0.5, 50.0, 99.5)
_DIVISOR = 16  # the network pools four times


def suggest_target_spacing(
    spacings: Sequence[Sequence[float]], aniso_threshold: float = ANISO_THRESHOLD
) -> list[float]:
    """Median spacing per axis; for anisotropic data the low-resolution axis gets a finer value.

    nnU-Net's rule: when the median's coarsest axis is more than ``aniso_threshold`` times its
    finest, that axis takes the 10th percentile of the cases' spacings along it (so thin-slice
    scans are not thrown away), but never finer than the other axes. nnU-Net also requires the
    coarse axis to have few voxels; we leave that condition out.

    Args:
        spacings: one (sx, sy, sz) per case, in mm.
        aniso_threshold: ratio above which the data count as anisotropic.

    Returns:
        The target spacing in mm.
    """
    arr = np.asarray(spacings, dtype=np.float64).reshape(-1, 3)
    target = np.median(arr, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    if target[worst] > aniso_threshold * target.min():
        low = float(np.percentile(arr[:, worst], 10))
        target[worst] = max(low, float(max(target[i] for i in others)))
    return [float(v) for v in target]


def suggest_patch_size(
    extents_mm: Sequence[Sequence[float]], target_spacing: Sequence[float], budget_voxels: int
) -> list[int]:
    """A patch with the same physical extent on each axis and ``budget_voxels`` voxels, no larger than
    the median (body-cropped) volume, each side a multiple of 16 (a simplified nnU-Net rule).

    Args:
        extents_mm: one physical size (mm) per case, in the canonical axis order.
        target_spacing: the spacing the patch is sampled at.
        budget_voxels: how many voxels a patch may have (the memory the model was sized for).

    Returns:
        Patch size in voxels.
    """
    spacing = np.asarray(target_spacing, dtype=np.float64)
    median_vox = np.median(np.asarray(extents_mm, dtype=np.float64).reshape(-1, 3), axis=0) / spacing
    cap = np.maximum(np.ceil(median_vox / _DIVISOR) * _DIVISOR, _DIVISOR)
    patch = np.zeros(3)
    free = [0, 1, 2]
    budget = float(budget_voxels)
    while free:  # give the budget to the axes not yet capped, equal extent in mm
        rel = 1.0 / spacing[free]
        scale = (budget / np.prod(rel)) ** (1.0 / len(free))
        trial = rel * scale
        capped = [a for a, v in zip(free, trial) if v >= cap[a]]
        if not capped:
            patch[free] = trial
            break
        for a in capped:
            patch[a] = cap[a]
            budget /= cap[a]
            free.remove(a)
    out = np.maximum(np.floor(patch / _DIVISOR) * _DIVISOR, _DIVISOR)
    return [int(v) for v in np.minimum(out, cap)]


def _stats(values: np.ndarray) -> dict:
    p005, p50, p995 = np.percentile(values, PERCENTILES)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(p50),
        "percentile_00_5": float(p005),
        "percentile_50_0": float(p50),
        "percentile_99_5": float(p995),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def compute_fingerprint(records: Sequence[dict], cfg: Config, samples_per_case: int = 10_000) -> dict:
    """Spacings, shapes and foreground HU statistics of ``records``, with suggested spacing and patch.

    Foreground HU are pooled from a seeded sample of ``samples_per_case`` voxels per labelled case
    (with replacement, as nnU-Net), so big scans never pile up in memory and every case weighs the
    same.

    Args:
        records: dicts with ``case_id``, ``image`` and optionally ``label`` and ``label_map``.
        cfg: the config (``data.orientation``, body crop settings, ``data.patch_size`` as the voxel
            budget of the suggested patch, ``train.seed``).
        samples_per_case: foreground voxels drawn per case.

    Returns:
        The fingerprint dict (see :func:`write_fingerprint`).

    Raises:
        ManifestError: no records.
        ImageError: a scan or label cannot be used (see :class:`transforms.io.LoadCTd`).
    """
    records = list(records)
    if not records:
        raise ManifestError("fingerprint: no cases given")
    keys = ["image", "label"]
    steps = [
        LoadCTd(keys, dicom_series=cfg.data.dicom_series, allow_missing_keys=True),
        MapLabelsd("label"),
        Orientationd(
            keys,
            axcodes=str(cfg.data.orientation).upper(),
            labels=AXIS_LABELS,
            allow_missing_keys=True,
        ),
    ]
    load = CTCompose(steps)  # lets the loaders' ImageError through, not MONAI's RuntimeError wrapper
    crop = BodyCropd("image", threshold=cfg.data.body_threshold_hu, margin_mm=cfg.data.body_margin_mm)
    cases, samples = [], []
    for i, rec in enumerate(records):
        d = load(dict(rec))
        image = d["image"]
        spacing = spacing_from_affine(image.affine)
        shape = [int(s) for s in image.shape[1:]]
        cropped = [int(s) for s in crop({"image": image})["image"].shape[1:]] if cfg.data.body_crop else shape
        case = {
            "case_id": str(rec.get("case_id", i)),
            "spacing": spacing.tolist(),
            "shape": shape,
            "shape_after_crop": cropped,
        }
        if "label" in d:
            fg = image.as_tensor()[d["label"].as_tensor() > 0].numpy().astype(np.float64)
            case["foreground_voxels"] = int(fg.size)
            if fg.size:
                rng = np.random.default_rng([int(cfg.train.seed), i])
                samples.append(rng.choice(fg, samples_per_case, replace=True))
                case["foreground_intensity"] = _stats(fg)
        cases.append(case)
    spacings = [c["spacing"] for c in cases]
    target = suggest_target_spacing(spacings)
    extents = [np.asarray(c["shape_after_crop"]) * np.asarray(c["spacing"]) for c in cases]
    budget = int(np.prod(cfg.data.patch_size))
    pooled = np.concatenate(samples) if samples else None
    return {
        "version": FINGERPRINT_VERSION,
        "orientation": cfg.data.orientation,
        "num_cases": len(cases),
        "num_labelled_cases": len(samples),
        "samples_per_case": int(samples_per_case),
        "spacings": spacings,
        "shapes": [c["shape"] for c in cases],
        "shapes_after_crop": [c["shape_after_crop"] for c in cases],
        "median_spacing": [float(v) for v in np.median(np.asarray(spacings), axis=0)],
        "foreground_intensity": {**_stats(pooled), "num_samples": int(pooled.size)}
        if pooled is not None
        else None,
        "suggested_target_spacing": target,
        "suggested_patch_size": suggest_patch_size(extents, target, budget),
        "cases": cases,
    }


def write_fingerprint(fp: dict, path: str | os.PathLike) -> Path:
    """Write the fingerprint as indented JSON, atomically (temporary name, then rename).

    Returns:
        The path written.

    Raises:
        OutputError: it cannot be written (nothing half-written is left).
    """
    return atomic_write_text(path, json.dumps(fp, indent=2) + "\n")
