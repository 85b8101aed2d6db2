"""The metrics rows of one case: one per class, with lesion and FROC counts for detection classes."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.core.config import EvalConfig
from pipeline.core.errors import ImageError
from pipeline.evaluation.lesions import froc_counts, match_lesions
from pipeline.evaluation.metrics import class_masks, class_metrics
from transforms.io import load_volume

__all__ = ["load_probability", "case_rows"]


def load_probability(path: str | os.PathLike, shape: Sequence[int]) -> np.ndarray:
    """A class probability map in RAS orientation, checked against the prediction's grid size.

    Raises:
        ImageError: unreadable, or its shape differs from the prediction's.
    """
    from monai.transforms import Orientation

    prob = Orientation("RAS")(load_volume(path))
    if tuple(prob.shape[1:]) != tuple(shape):
        raise ImageError(
            f"{path}: probability shape {tuple(prob.shape[1:])} differs from the prediction's {tuple(shape)}"
        )
    return np.asarray(prob[0])


def case_rows(
    pred: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float],
    classes: Mapping[int, str],
    settings: EvalConfig | None = None,
    probabilities: Mapping[int, str | os.PathLike] | None = None,
) -> list[dict]:
    """Metrics rows of one case (see :mod:`pipeline.evaluation.metrics`), one per class.

    Rows of a detection class (``eval.detection_classes``) also get the lesion counts of
    :func:`pipeline.evaluation.lesions.match_lesions`, and, when ``probabilities`` has a file for
    the class, the FROC counts at ``eval.froc_thresholds``.

    Args:
        pred: predicted label map; label: reference label map (class values); same shape.
        spacing: voxel size in mm.
        classes: ``{class value: name}``.
        settings: the ``eval`` settings (None: defaults).
        probabilities: ``{class value: probability file}`` of the case, where written.

    Raises:
        ImageError: a probability file cannot be read or is on another grid.
        ValueError: the shapes of ``pred`` and ``label`` differ.
    """
    s = settings or EvalConfig()
    rows = class_metrics(pred, label, spacing, classes, s.nsd_tolerance_mm)
    wanted = {n.lower() for n in s.detection_classes}
    masks = class_masks(pred, label, classes)
    for (k, (p, y)), row in zip(masks.items(), rows):
        if classes[k].lower() not in wanted:
            continue
        row.update(match_lesions(p, y))
        path = (probabilities or {}).get(k)
        if path is not None and os.path.exists(path):
            row.update(froc_counts(load_probability(path, np.shape(pred)), y, s.froc_thresholds))
    return rows
