"""Per-case metrics on the original grid, and nnU-Net-style summaries.

Metrics (from ``monai.metrics``, foreground class only): Dice, IoU, precision, recall, the 95th
percentile Hausdorff distance and the average symmetric surface distance, both in mm using the
grid's spacing (the paper's "surface distance").

Empty masks never give a silent NaN. The ``flag`` column says what happened and the values are
defined as follows:

* ``both_empty``: Dice, IoU, precision and recall 1; distances 0.
* ``empty_pred`` (label has pancreas, prediction none): Dice, IoU, recall 0, precision 1 (no
  false positives); distances = the grid's diagonal in mm (the worst possible).
* ``empty_label`` (prediction has pancreas, label none): Dice, IoU, precision 0, recall 1;
  distances = the grid's diagonal in mm.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.core.errors import ImageError, ManifestError, writing
from pipeline.core.fileio import atomic_write
from pipeline.core.geometry import spacing_from_affine
from pipeline.core.layout import RunLayout
from transforms import MapLabelsd
from transforms.io import load_volume

__all__ = [
    "METRICS",
    "case_metrics",
    "load_mask_pair",
    "evaluate_cases",
    "summarize",
    "write_table",
    "write_summary",
    "read_table",
    "read_fold_metrics",
    "join_fold_timings",
]

METRICS = ("dice", "iou", "precision", "recall", "hd95_mm", "assd_mm")
_COLUMNS = ("case_id", "fold", *METRICS, "pred_voxels", "label_voxels", "flag")  # of a metrics table


def _onehot(mask: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(mask) > 0)
    return torch.stack([~t, t])[None].float()  # (1, 2, *spatial)


def case_metrics(pred: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> dict:
    """Metrics of one binary prediction against its label on the same grid.

    Args:
        pred: prediction, non-zero = pancreas.
        label: reference, non-zero = pancreas, same shape as ``pred``.
        spacing: voxel size in mm per axis of the arrays.

    Returns:
        dict with the keys of :data:`METRICS`, ``pred_voxels``, ``label_voxels``, ``flag``.

    Raises:
        ValueError: the shapes differ.
    """
    from monai.metrics import (
        compute_average_surface_distance,
        compute_confusion_matrix_metric,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        get_confusion_matrix,
    )

    pred = np.asarray(pred) > 0
    label = np.asarray(label) > 0
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    n_pred, n_label = int(pred.sum()), int(label.sum())
    out: dict = {"pred_voxels": n_pred, "label_voxels": n_label, "flag": ""}
    worst = float(math.sqrt(sum((s * float(sp)) ** 2 for s, sp in zip(pred.shape, spacing))))
    if n_pred == 0 and n_label == 0:
        out.update(dice=1.0, iou=1.0, precision=1.0, recall=1.0, hd95_mm=0.0, assd_mm=0.0, flag="both_empty")
        return out
    if n_pred == 0 or n_label == 0:
        flag = "empty_pred" if n_pred == 0 else "empty_label"
        out.update(
            dice=0.0,
            iou=0.0,
            precision=1.0 if n_pred == 0 else 0.0,
            recall=1.0 if n_label == 0 else 0.0,
            hd95_mm=worst,
            assd_mm=worst,
            flag=flag,
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
    )
    return out


def load_mask_pair(pred_path: str | os.PathLike, label_path: str | os.PathLike, label_map: str = ""):
    """Load a prediction and its label, both put in RAS orientation, and check they share one grid.

    Returns:
        (pred array, label array (mapped to {0,1,...}), spacing in mm).

    Raises:
        ImageError: a file cannot be read or fails the loaders' checks
            (:func:`transforms.io.load_volume`), or the two are not on the same grid (both grids named).
    """
    from monai.transforms import Orientation

    orient = Orientation("RAS")
    # the loaders' checks: header (size limit, geometry, truncation) before reading, NaN voxels after
    pred, label = (orient(load_volume(path, dtype=None)) for path in (pred_path, label_path))
    same_shape = pred.shape == label.shape
    same_affine = np.allclose(np.asarray(pred.affine), np.asarray(label.affine), atol=1e-3)
    if not (same_shape and same_affine):

        def grid(t) -> str:
            a = np.asarray(t.affine)
            sp = spacing_from_affine(a)
            return f"shape {tuple(t.shape[1:])}, spacing {np.round(sp, 4).tolist()}, origin {np.round(a[:3, 3], 3).tolist()}"

        raise ImageError(
            f"{pred_path}: prediction grid ({grid(pred)}) differs from label {label_path} ({grid(label)})"
        )

    lab = np.asarray(MapLabelsd("label")({"label": label, "label_map": label_map})["label"][0])
    spacing = spacing_from_affine(pred.affine).tolist()
    return np.asarray(pred[0]), lab, spacing


def evaluate_cases(pairs: Sequence[dict]) -> pd.DataFrame:
    """Evaluate ``[{"case_id", "pred", "label", "fold"?, "label_map"?}, ...]`` into a per-case table."""
    rows = []
    for item in pairs:
        pred, label, spacing = load_mask_pair(item["pred"], item["label"], item.get("label_map", "") or "")
        row = {"case_id": item["case_id"], "fold": item.get("fold", -1)}
        row.update(case_metrics(pred, label, spacing))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(_COLUMNS))


def _stats(df: pd.DataFrame) -> dict:
    return {
        m: {
            "mean": float(df[m].mean()),
            "std": float(df[m].std(ddof=0)),
            "median": float(df[m].median()),
        }
        for m in METRICS
        if len(df)
    }


def summarize(df: pd.DataFrame) -> dict:
    """nnU-Net-like summary: per-case metrics, and mean/std/median per metric overall and per fold."""
    per_fold = {str(int(k)): _stats(g) for k, g in df.groupby("fold")} if "fold" in df else {}
    return {
        "metric_per_case": json.loads(df.to_json(orient="records")),
        "foreground_mean": _stats(df),
        "per_fold": per_fold,
        "n_cases": int(len(df)),
        "flags": {k: int(v) for k, v in df["flag"].value_counts().items() if k},
    }


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a metrics CSV atomically.

    Raises:
        OutputError: it cannot be written (nothing half-written is left).
    """
    with writing(path):
        return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.6g"))


def write_summary(summary: dict, path: str | os.PathLike) -> Path:
    """Write a summary JSON atomically.

    Raises:
        OutputError: it cannot be written (nothing half-written is left).
    """
    with writing(path):
        return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a metrics CSV written by :func:`write_table`: ``case_id`` as text, an empty ``flag`` as ``""``.

    Returns:
        The per-case table (a ``flag`` column of ``""`` is added when the file has none).
    """
    df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"case_id": str})
    df["flag"] = df["flag"].fillna("") if "flag" in df else ""
    return df


def read_fold_metrics(
    run: RunLayout, folds: Sequence[int] | None = None, strict: bool = False, require_done: bool = True
) -> pd.DataFrame:
    """The ``metrics.csv`` of each finished fold of a run, in one table (by fold number).

    Args:
        run: the run folder.
        folds: these folds only (default: every fold folder present).
        strict: a fold among them that is not finished raises instead of being left out.
        require_done: a fold is finished when it has ``DONE`` and ``metrics.csv``; False: when it has
            ``metrics.csv`` (a report of a run in progress).

    Returns:
        The folds' per-case tables concatenated; empty (no rows) when no fold is finished.

    Raises:
        ManifestError: ``strict`` and a fold is not finished (the fold folder is named).
    """
    chosen = run.folds() if folds is None else [run.fold(k) for k in folds]
    tables = []
    for fold in chosen:
        if fold.metrics.exists() and (fold.is_done() or not require_done):
            tables.append(read_table(fold.metrics))
        elif strict:
            raise ManifestError(
                f"{fold.dir}: fold not finished (no {fold.done.name} or {fold.metrics.name}); re-run to resume it"
            )
    if not tables:
        return pd.DataFrame(columns=list(_COLUMNS))
    return pd.concat(tables, ignore_index=True)


def join_fold_timings(table: pd.DataFrame, run: RunLayout) -> pd.DataFrame:
    """``table`` with each case's inference seconds (``total_s`` of the folds' ``timings.csv``) as ``infer_s``.

    Returns:
        The table with an ``infer_s`` column (NaN for cases without timings); unchanged when no fold
        of the run has timings.
    """
    times = [pd.read_csv(f.timings, dtype={"case_id": str}) for f in run.folds() if f.timings.exists()]
    if not times:
        return table
    t = pd.concat(times, ignore_index=True).drop_duplicates("case_id", keep="last")
    t = t[["case_id", "total_s"]].rename(columns={"total_s": "infer_s"})
    return table.merge(t, on="case_id", how="left")
