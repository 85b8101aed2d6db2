"""Volume agreement of predictions with their references: the columns ``evaluate`` and ``cv`` add.

For each case the prediction and the reference are measured on the scan
(:func:`pipeline.data.statistics.measure`, foreground = every label value > 0 after the manifest's
``label_map``), giving ``volume_ml`` / ``ref_volume_ml`` (mL), ``hu_mean`` / ``ref_hu_mean`` (HU) and

* ``volume_error_ml`` = predicted - reference volume (mL);
* ``volume_error_pct`` = 100 x (predicted - reference) / reference (NaN for an empty reference).

:func:`volume_agreement` summarises them Bland-Altman style: the bias (mean difference), the 95 %
limits of agreement (bias +- 1.96 SD) in mL and %, and the least significant change between two
scans of one patient, ``1.96 x sqrt(2) x SD(volume_error_pct)`` (the error of a difference of two
independent measurements), which the follow-up table uses as "within measurement error".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from pipeline.core.label_map import DEFAULT_CLASS_NAMES
from pipeline.data.statistics import dicom_metadata, measure
from pipeline.evaluation.evaluate import evaluate_cases
from transforms import MapLabelsd
from transforms.io import load_volume, match_label_grid

__all__ = [
    "VOLUME_COLUMNS",
    "case_volumes",
    "add_volume_columns",
    "evaluate_with_volumes",
    "volume_agreement",
]

VOLUME_COLUMNS = (
    "volume_ml",
    "ref_volume_ml",
    "volume_error_ml",
    "volume_error_pct",
    "hu_mean",
    "ref_hu_mean",
)


def _classes(*masks: np.ndarray) -> dict[int, str]:
    values = sorted({int(v) for m in masks for v in np.unique(m) if v > 0} | {1})
    return {v: DEFAULT_CLASS_NAMES.get(v, f"class_{v}") for v in values}


def _class_masks(labels: np.ndarray, classes: Mapping[int, str]) -> dict[str, np.ndarray]:
    """One binary mask per evaluated class, as evaluation counts them: with one class every non-zero
    voxel is that class (0/255 masks of other tools), with several each class is its own value."""
    if len(classes) == 1:
        return {next(iter(classes.values())): (labels > 0).astype(np.uint8)}
    return {name: (labels == value).astype(np.uint8) for value, name in classes.items()}


def case_volumes(item: Mapping, classes: Mapping[int, str] | None = None) -> tuple[list[dict], list[dict]]:
    """The volume columns of one case, one dict per evaluated class, and the reference's statistics rows.

    Args:
        item: ``{"case_id", "pred", "label", "image"?, "label_map"?}`` (paths); without ``image``
            the HU columns are NaN and the reference's grid is the scan's.
        classes: ``{value: name}`` evaluated (as :func:`pipeline.evaluation.evaluate.evaluate_cases`
            takes them); default: pancreas only.

    Returns:
        (``[{"class", **VOLUME_COLUMNS}, ...]``, the reference's :func:`measure` rows).

    Raises:
        ImageError: a file cannot be read, or the grids differ.
    """
    case = str(item["case_id"])
    classes = dict(classes or {1: DEFAULT_CLASS_NAMES[1]})
    label = load_volume(item["label"], dtype=None)
    image = load_volume(item["image"], dtype=torch.float32) if item.get("image") else None
    grid = image if image is not None else label
    label = match_label_grid(grid, label, str(item.get("image") or item["label"]), str(item["label"]))
    pred = match_label_grid(
        grid, load_volume(item["pred"], dtype=None), str(grid.meta["filename_or_obj"]), str(item["pred"])
    )
    ref = np.asarray(
        MapLabelsd("label")({"label": label, "label_map": item.get("label_map", "") or ""})["label"][0]
    )
    ref = ref.astype(np.int32)
    hu = None if image is None else np.asarray(image[0])
    aff = np.asarray(grid.affine)
    p = np.asarray(pred[0]).astype(np.int32)
    cols = []
    refs = _class_masks(ref, classes)
    for name, mask in _class_masks(p, classes).items():
        one = {1: name}
        mine = measure(mask, hu, aff, one)[0]
        theirs = measure(refs[name], hu, aff, one)[0]
        err = mine["volume_ml"] - theirs["volume_ml"]
        cols.append(
            {
                "class": name,
                "volume_ml": mine["volume_ml"],
                "ref_volume_ml": theirs["volume_ml"],
                "volume_error_ml": err,
                "volume_error_pct": 100.0 * err / theirs["volume_ml"]
                if theirs["volume_ml"] > 0
                else math.nan,
                "hu_mean": mine["hu_mean"],
                "ref_hu_mean": theirs["hu_mean"],
            }
        )
    meta = dicom_metadata(item["image"]) if item.get("image") else None
    rows = measure(ref, hu, aff, classes if len(classes) > 1 else _classes(ref, p), case, meta)
    return cols, rows


def add_volume_columns(
    table: pd.DataFrame, pairs: Sequence[Mapping], classes: Mapping[int, str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``table`` (one row per case and class: ``case_id``, ``class``) with :data:`VOLUME_COLUMNS`, and
    the references' statistics table (:data:`pipeline.data.statistics.STAT_COLUMNS` rows).

    Raises:
        ImageError: a file cannot be read, or the grids differ.
    """
    cols, refs = [], []
    for item in pairs:
        per_class, rows = case_volumes(item, classes)
        cols.extend({"case_id": str(item["case_id"]), **c} for c in per_class)
        refs.extend(rows)
    extra = pd.DataFrame(cols, columns=["case_id", "class", *VOLUME_COLUMNS])
    keys = ["case_id", "class"] if "class" in table.columns else ["case_id"]
    if keys == ["case_id"]:
        extra = extra.drop(columns="class")
    base = table.drop(columns=[c for c in VOLUME_COLUMNS if c in table.columns])
    base = base.astype({"case_id": str})
    return base.merge(extra, on=keys, how="left"), pd.DataFrame(refs)


def evaluate_with_volumes(
    pairs: Sequence[Mapping], classes: Mapping[int, str] | None = None, settings=None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`pipeline.evaluation.evaluate.evaluate_cases` plus :func:`add_volume_columns`.

    Args:
        pairs: the cases, as ``evaluate_cases`` takes them (plus ``image`` for HU).
        classes: ``{value: name}``; None: pancreas only.
        settings: the ``eval`` settings (:class:`pipeline.core.config.EvalConfig`); None: defaults.

    Returns:
        (the metrics table with :data:`VOLUME_COLUMNS`, the references' statistics table).

    Raises:
        ImageError: a file cannot be read, or the grids differ.
    """
    return add_volume_columns(evaluate_cases(pairs, classes, settings), pairs, classes)


def volume_agreement(table: pd.DataFrame) -> dict:
    """Bland-Altman summary of ``volume_error_ml``/``volume_error_pct`` over the cases that have them.

    With several classes (a ``class`` column) the top-level numbers are the first class's (pancreas)
    and ``per_class`` holds each class's.

    Returns:
        ``{"n", "bias_ml", "sd_ml", "loa_low_ml", "loa_high_ml", "bias_pct", "sd_pct", "loa_low_pct",
        "loa_high_pct", "least_significant_change_pct"}`` (NaN where there are no cases); SD with ddof=1.
    """
    if "class" in table.columns and table["class"].nunique() > 1:
        per = {
            str(c): volume_agreement(t.drop(columns="class")) for c, t in table.groupby("class", sort=False)
        }
        return {**next(iter(per.values())), "class": next(iter(per)), "per_class": per}
    out: dict = {"n": 0}
    for unit in ("ml", "pct"):
        col = f"volume_error_{unit}"
        v = pd.to_numeric(table[col], errors="coerce").dropna() if col in table else pd.Series(dtype=float)
        bias = float(v.mean()) if len(v) else math.nan
        sd = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        out.update({f"bias_{unit}": bias, f"sd_{unit}": sd})
        out.update({f"loa_low_{unit}": bias - 1.96 * sd, f"loa_high_{unit}": bias + 1.96 * sd})
        out["n"] = max(out["n"], int(len(v)))
    out["least_significant_change_pct"] = 1.96 * math.sqrt(2.0) * out["sd_pct"]
    return out
