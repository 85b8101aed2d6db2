"""Per-case metrics on the original grid, and nnU-Net-style summaries.

Metrics (from ``monai.metrics``, per foreground class, see :mod:`pipeline.evaluation.metrics`):
Dice, IoU, precision, recall, the 95th percentile Hausdorff distance, the average symmetric
surface distance (the paper's "surface distance"), both in mm using the grid's spacing, and the
normalised surface Dice at ``eval.nsd_tolerance_mm``. A metrics table has one row per case and
class (``class`` = the class name); with one class it is the binary pipeline's table, plus ``nsd``.

Empty masks never give a silent NaN. The ``flag`` column says what happened and the values are
defined as follows (per class):

* ``both_empty``: Dice, IoU, precision, recall, NSD 1; distances 0.
* ``empty_pred`` (label has the class, prediction none): Dice, IoU, recall, NSD 0, precision 1 (no
  false positives); distances = the grid's diagonal in mm (the worst possible).
* ``empty_label`` (prediction has the class, label none): Dice, IoU, precision, NSD 0, recall 1;
  distances = the grid's diagonal in mm.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import EvalConfig
from pipeline.core.errors import ImageError, ManifestError, writing
from pipeline.core.fileio import atomic_write
from pipeline.core.geometry import spacing_from_affine
from pipeline.core.layout import RunLayout
from pipeline.evaluation import summary as class_summary
from pipeline.evaluation.cases import case_rows
from pipeline.evaluation.metrics import CLASS_METRICS, binary_metrics
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

METRICS = CLASS_METRICS  # dice, iou, precision, recall, hd95_mm, assd_mm, nsd
# of a metrics table; detection classes add pipeline.evaluation.lesions.LESION_COLUMNS (and FROC counts)
_COLUMNS = ("case_id", "subject_id", "fold", "class", *METRICS, "pred_voxels", "label_voxels", "flag")


def case_metrics(
    pred: np.ndarray, label: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0
) -> dict:
    """Metrics of one binary prediction against its label on the same grid.

    Args:
        pred: prediction, non-zero = pancreas.
        label: reference, non-zero = pancreas, same shape as ``pred``.
        spacing: voxel size in mm per axis of the arrays.
        tolerance_mm: the NSD tolerance.

    Returns:
        dict with the keys of :data:`METRICS`, ``pred_voxels``, ``label_voxels``, ``flag``.

    Raises:
        ValueError: the shapes differ.
    """
    return binary_metrics(pred, label, spacing, tolerance_mm)


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


def evaluate_cases(
    pairs: Sequence[dict], classes: Mapping[int, str] | None = None, settings: EvalConfig | None = None
) -> pd.DataFrame:
    """Evaluate ``[{"case_id", "pred", "label", "fold"?, "subject_id"?, "label_map"?, "probabilities"?}, ...]``.

    Args:
        pairs: the cases; ``probabilities`` is ``{class value: file}`` (FROC of detection classes).
        classes: ``{class value: name}`` (:func:`pipeline.core.label_map.class_names`); None: pancreas only.
        settings: the ``eval`` settings (NSD tolerance, detection classes); None: the defaults.

    Returns:
        One row per case and class (the columns of the module's table, plus lesion columns for
        detection classes).
    """
    classes = dict(classes or {1: class_summary.DEFAULT_CLASS})
    rows = []
    for item in pairs:
        pred, label, spacing = load_mask_pair(item["pred"], item["label"], item.get("label_map", "") or "")
        case = {"case_id": item["case_id"], "subject_id": item.get("subject_id") or item["case_id"]}
        case["fold"] = item.get("fold", -1)
        for row in case_rows(pred, label, spacing, classes, settings, item.get("probabilities")):
            rows.append({**case, **row})
    df = pd.DataFrame(rows)
    return df.reindex(columns=[*_COLUMNS, *(c for c in df.columns if c not in _COLUMNS)])


def _stats(df: pd.DataFrame, settings: EvalConfig | None = None) -> dict:
    return class_summary.stats(df, settings, METRICS)


def summarize(df: pd.DataFrame, settings: EvalConfig | None = None) -> dict:
    """nnU-Net-like summary: per-case metrics, mean/std/median with a bootstrap interval per metric
    overall and per fold, plus per-class blocks, tumour detection and the implementation used
    (:mod:`pipeline.evaluation.summary`)."""
    per_fold = {str(int(k)): _stats(g, settings) for k, g in df.groupby("fold")} if "fold" in df else {}
    subjects_known = "subject_id" in df and bool(
        (df["subject_id"].astype(str) != df["case_id"].astype(str)).any()
    )
    return {
        "metric_per_case": json.loads(df.to_json(orient="records")),
        "foreground_mean": _stats(df, settings),
        "per_fold": per_fold,
        "n_cases": int(df["case_id"].nunique()) if "case_id" in df else int(len(df)),
        "flags": {k: int(v) for k, v in df["flag"].value_counts().items() if k},
        "per_class": class_summary.per_class(df, settings),
        "detection": class_summary.detection(df, settings),
        **class_summary.implementation(settings, subjects_known),
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
    text = {"case_id": str, "subject_id": str, "class": str}
    df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=text)
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
