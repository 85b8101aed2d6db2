"""Per-class overlap and surface metrics of one case, from ``monai.metrics``.

Each foreground class is evaluated as its own binary mask (``pred == k`` against ``label == k``).
With a single foreground class every non-zero prediction voxel counts as that class, exactly as
the binary pipeline always did (masks from other tools are often stored as 0/255).

Metrics: Dice, IoU, precision, recall (from the confusion matrix), the 95th percentile Hausdorff
distance and the average symmetric surface distance in mm, and the normalised surface Dice (NSD,
Nikolov et al. 2021): the fraction of both surfaces that lies within ``tolerance_mm`` of the other
surface. Distances use the case's voxel spacing.

Empty masks never give a silent NaN; the ``flag`` says what happened:

* ``both_empty``: Dice, IoU, precision, recall and NSD 1; distances 0.
* ``empty_pred`` (reference has the class, prediction none): Dice, IoU, recall, NSD 0, precision 1
  (no false positives); distances = the grid's diagonal in mm (the worst possible).
* ``empty_label`` (prediction has the class, reference none): Dice, IoU, precision, NSD 0, recall
  1; distances = the grid's diagonal in mm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["CLASS_METRICS", "IMPLEMENTATION", "binary_metrics", "class_masks", "class_metrics"]

CLASS_METRICS = ("dice", "iou", "precision", "recall", "hd95_mm", "assd_mm", "nsd")
# Named in every summary: metric values differ between tools (surface extraction, percentiles).
IMPLEMENTATION = (
    "monai.metrics {monai}: compute_dice, compute_iou, get_confusion_matrix + compute_confusion_matrix_metric "
    "(precision, sensitivity), compute_hausdorff_distance (percentile 95), compute_average_surface_distance "
    "(symmetric), compute_surface_dice (NSD, tolerance {tol:g} mm); Euclidean distances in mm on the case's spacing"
)


def _onehot(mask: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(mask)
    return torch.stack([~t, t])[None].float()  # (1, 2, *spatial)


def binary_metrics(
    pred: np.ndarray, label: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0
) -> dict:
    """Metrics of one boolean prediction against its boolean reference on the same grid.

    Args:
        pred: the prediction's mask of one class (non-zero = the class).
        label: the reference mask, same shape.
        spacing: voxel size in mm per axis.
        tolerance_mm: the NSD tolerance.

    Returns:
        dict with the keys of :data:`CLASS_METRICS`, ``pred_voxels``, ``label_voxels``, ``flag``.

    Raises:
        ValueError: the shapes differ.
    """
    from monai.metrics import (
        compute_average_surface_distance,
        compute_confusion_matrix_metric,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        compute_surface_dice,
        get_confusion_matrix,
    )

    pred, label = np.asarray(pred) > 0, np.asarray(label) > 0
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    n_pred, n_label = int(pred.sum()), int(label.sum())
    out: dict = {"pred_voxels": n_pred, "label_voxels": n_label, "flag": ""}
    worst = float(math.sqrt(sum((s * float(sp)) ** 2 for s, sp in zip(pred.shape, spacing))))
    if n_pred == 0 and n_label == 0:
        out.update(dice=1.0, iou=1.0, precision=1.0, recall=1.0, hd95_mm=0.0, assd_mm=0.0, nsd=1.0)
        out["flag"] = "both_empty"
        return out
    if n_pred == 0 or n_label == 0:
        out.update(
            dice=0.0,
            iou=0.0,
            precision=1.0 if n_pred == 0 else 0.0,
            recall=1.0 if n_label == 0 else 0.0,
            hd95_mm=worst,
            assd_mm=worst,
            nsd=0.0,
            flag="empty_pred" if n_pred == 0 else "empty_label",
        )
        return out
    # Crop to the union's bounding box (+1 voxel): distances and overlaps are unchanged, work is not.
    idx = np.argwhere(pred | label)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, pred.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    p, y = _onehot(pred[box]), _onehot(label[box])
    sp = [float(s) for s in spacing]
    cm = get_confusion_matrix(p, y, include_background=False)
    out.update(
        dice=float(compute_dice(p, y, include_background=False)),
        iou=float(compute_iou(p, y, include_background=False)),
        precision=float(compute_confusion_matrix_metric("precision", cm)),
        recall=float(compute_confusion_matrix_metric("sensitivity", cm)),
        hd95_mm=float(compute_hausdorff_distance(p, y, include_background=False, percentile=95, spacing=sp)),
        assd_mm=float(
            compute_average_surface_distance(p, y, include_background=False, symmetric=True, spacing=sp)
        ),
        nsd=float(compute_surface_dice(p, y, [float(tolerance_mm)], include_background=False, spacing=sp)),
    )
    return out


def class_masks(pred: np.ndarray, label: np.ndarray, classes: Mapping[int, str]) -> dict[int, tuple]:
    """``{class value: (prediction mask, reference mask)}`` for each foreground class.

    With one class, every non-zero voxel is that class (the binary pipeline's ``> 0``); with several,
    class ``k`` is the voxels equal to ``k``.
    """
    pred, label = np.asarray(pred), np.asarray(label)
    if len(classes) == 1:
        return {next(iter(classes)): (pred > 0, label > 0)}
    return {k: (pred == k, label == k) for k in classes}


def class_metrics(
    pred: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float],
    classes: Mapping[int, str],
    tolerance_mm: float = 2.0,
) -> list[dict]:
    """One row of metrics per foreground class (``class`` = its name), see :func:`binary_metrics`.

    Args:
        pred: predicted label map (class values).
        label: reference label map (already mapped to class values), same shape.
        spacing: voxel size in mm per axis.
        classes: ``{class value: name}`` (:func:`pipeline.core.label_map.class_names`).
        tolerance_mm: the NSD tolerance.

    Raises:
        ValueError: the shapes differ.
    """
    if np.shape(pred) != np.shape(label):
        raise ValueError(f"prediction shape {np.shape(pred)} differs from label shape {np.shape(label)}")
    rows = []
    for k, (p, y) in class_masks(pred, label, classes).items():
        rows.append({"class": classes[k], **binary_metrics(p, y, spacing, tolerance_mm)})
    return rows
