"""Tumour detection: lesions as connected components, matched by overlap; case level and FROC.

A *lesion* is a 26-connected component of a class mask (``scipy.ndimage.label``). A reference
lesion is found (TP) when any predicted component overlaps it, else missed (FN); a predicted
component that overlaps no reference lesion is a false positive (FP). One predicted component
covering two reference lesions finds both; two predicted components on one lesion count once.

Case level: a case whose reference has the class is *positive*; it is detected when the predicted
class overlaps the reference (``lesion_tp > 0``). A negative case is a true negative when nothing is
predicted. Sensitivity = detected positives / positives, specificity = true negatives / negatives.

FROC: the predicted mask at each probability threshold ``t`` is ``probability >= t``; its points are
(mean FP lesions per case, lesion sensitivity) over the cases, one per threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "LESION_COLUMNS",
    "IMPLEMENTATION",
    "match_lesions",
    "froc_counts",
    "froc_columns",
    "case_detection",
    "lesion_detection",
    "froc_points",
]

LESION_COLUMNS = ("ref_lesions", "pred_lesions", "lesion_tp", "lesion_fp", "lesion_fn")
IMPLEMENTATION = "scipy {scipy} ndimage.label, 26-connectivity; matched by any overlap"


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components, diagonal neighbours included (26-connectivity in 3-D)."""
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    return labels, int(n)


def match_lesions(pred: np.ndarray, label: np.ndarray) -> dict:
    """Match the predicted components of one class to the reference ones by overlap.

    Args:
        pred: predicted mask of the class (non-zero = the class).
        label: reference mask of the class, same shape.

    Returns:
        ``{"ref_lesions", "pred_lesions", "lesion_tp", "lesion_fp", "lesion_fn"}`` (counts).

    Raises:
        ValueError: the shapes differ.
    """
    if np.shape(pred) != np.shape(label):
        raise ValueError(f"prediction shape {np.shape(pred)} differs from label shape {np.shape(label)}")
    return _match(*_components(label), pred)


def _match(ref: np.ndarray, n_ref: int, pred: np.ndarray) -> dict:
    """:func:`match_lesions` with the reference's components already labelled (FROC reuses them)."""
    hyp, n_hyp = _components(pred)
    both = (ref > 0) & (hyp > 0)
    found = np.unique(ref[both]).size  # reference lesions touched by a prediction
    true_pred = np.unique(hyp[both]).size  # predicted components touching a reference lesion
    return {
        "ref_lesions": n_ref,
        "pred_lesions": n_hyp,
        "lesion_tp": int(found),
        "lesion_fp": int(n_hyp - true_pred),
        "lesion_fn": int(n_ref - found),
    }


def froc_columns(thresholds: Sequence[float]) -> list[str]:
    """The metrics-table columns that hold FROC counts: ``froc_tp@t`` and ``froc_fp@t`` per threshold."""
    return [f"froc_{kind}@{t:g}" for t in thresholds for kind in ("tp", "fp")]


def froc_counts(probability: np.ndarray, label: np.ndarray, thresholds: Sequence[float]) -> dict:
    """Found reference lesions and false-positive components at each probability threshold.

    Args:
        probability: the class probability of one case, in [0, 1].
        label: the reference mask of the class, same shape.
        thresholds: probability thresholds.

    Returns:
        ``{"froc_tp@t": n, "froc_fp@t": n, ...}`` (the columns of :func:`froc_columns`).

    Raises:
        ValueError: the shapes differ.
    """
    if np.shape(probability) != np.shape(label):
        raise ValueError(
            f"probability shape {np.shape(probability)} differs from label shape {np.shape(label)}"
        )
    ref, n_ref = _components(label)  # once for all thresholds
    out = {}
    for t in thresholds:
        m = _match(ref, n_ref, np.asarray(probability) >= float(t))
        out[f"froc_tp@{t:g}"], out[f"froc_fp@{t:g}"] = m["lesion_tp"], m["lesion_fp"]
    return out


def case_detection(rows: pd.DataFrame) -> dict:
    """Case-level detection of one class from its metrics rows (one per case).

    Returns:
        ``positives``, ``detected``, ``negatives``, ``true_negatives``, ``sensitivity`` and
        ``specificity`` (None when there are no positive / negative cases).
    """
    pos = rows["label_voxels"] > 0
    hit = rows["lesion_tp"] > 0 if "lesion_tp" in rows else (rows["recall"] > 0) & pos
    tn = (~pos) & (rows["pred_voxels"] == 0)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return {
        "positives": n_pos,
        "detected": int((hit & pos).sum()),
        "negatives": n_neg,
        "true_negatives": int(tn.sum()),
        "sensitivity": float((hit & pos).sum() / n_pos) if n_pos else None,
        "specificity": float(tn.sum() / n_neg) if n_neg else None,
    }


def lesion_detection(rows: pd.DataFrame) -> dict:
    """Lesion-level totals of one class: TP/FP/FN, lesion sensitivity and FP lesions per case."""
    tp, fp, fn = (int(rows[c].sum()) for c in ("lesion_tp", "lesion_fp", "lesion_fn"))
    return {
        "reference_lesions": int(rows["ref_lesions"].sum()),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
        "fp_per_case": float(fp / len(rows)) if len(rows) else None,
    }


def froc_points(rows: pd.DataFrame, thresholds: Sequence[float]) -> dict:
    """FROC points of one class from the ``froc_*`` columns, or the reason there are none.

    Returns:
        ``{"points": [{"threshold", "fp_per_case", "sensitivity"}, ...]}``, or
        ``{"points": [], "skipped": reason}`` when the cases have no probabilities.
    """
    cols = froc_columns(thresholds)
    if not set(cols) <= set(rows) or rows[cols].isna().any().any() or rows.empty:
        return {
            "points": [],
            "skipped": "no class probabilities beside the predictions for every case "
            "(predict with --probabilities, or infer.save_probabilities: true)",
        }
    n_ref = int(rows["ref_lesions"].sum())
    points = []
    for t in thresholds:
        tp, fp = float(rows[f"froc_tp@{t:g}"].sum()), float(rows[f"froc_fp@{t:g}"].sum())
        points.append(
            {
                "threshold": float(t),
                "fp_per_case": fp / len(rows),
                "sensitivity": tp / n_ref if n_ref else None,
            }
        )
    return {"points": points}
