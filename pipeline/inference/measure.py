"""``statistics.csv`` of an inference folder: each case's measurements on its scan, plus QC.

:func:`case_statistics` measures one prediction while its scan is still in memory
(:func:`pipeline.data.statistics.measure`: volume, HU on the scan as loaded, extent, centroid,
border) and adds the QC columns (:mod:`pipeline.inference.qc`). The rows travel in the case's
record (:mod:`pipeline.inference.records`) and :func:`merge_statistics` folds them into
``statistics.csv`` and ``statistics.json`` with the other tables.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.core.config import Config
from pipeline.core.label_map import class_names
from pipeline.core.layout import OutputLayout
from pipeline.data.statistics import STAT_COLUMNS, dicom_metadata, measure, write_statistics
from pipeline.inference.qc import QC_COLUMNS, review
from transforms.validate import check_ct_intensities

__all__ = ["COLUMNS", "QC_UNITS", "case_statistics", "merge_statistics", "write_inference_statistics"]

COLUMNS: tuple[str, ...] = (*STAT_COLUMNS, *QC_COLUMNS)
QC_UNITS = {"qc_fold_dice": "0..1", "qc_volume_cv": "ratio", "qc_entropy": "0..1", "qc_score": "0..1"}


def case_statistics(pred, rec: dict, cfg: Config) -> list[dict]:
    """The statistics rows (:data:`COLUMNS`) of one prediction, one per foreground class.

    Args:
        pred: a :class:`pipeline.inference.predictor.Prediction` made with ``infer.statistics``
            (its ``extras["image"]`` is the scan as loaded); without it the HU columns are NaN.
        rec: the case's record (``case_id``, ``image``).
        cfg: the config (class names, ``data.dicom_series``, ``qc.*``).
    """
    image = pred.extras.get("image")
    image = None if image is None else image.numpy()
    rows = measure(
        pred.mask,
        image,
        pred.affine,
        class_names(cfg),
        str(rec["case_id"]),
        dicom_metadata(rec["image"], cfg.data.dicom_series),
    )
    scores = pred.extras.get("qc", {})
    ct_like = image is None or not check_ct_intensities(image, str(rec["image"]))
    flag, reasons = review(rows, scores, cfg.qc, ct_like)
    for row in rows:
        row.update({c: scores.get(c, math.nan) for c in QC_COLUMNS[:4]})
        row.update(review=flag, review_reasons=reasons)
    return rows


def write_inference_statistics(table: pd.DataFrame, out_dir: str | os.PathLike) -> Path:
    """Write ``table`` as ``statistics.csv`` and ``statistics.json`` (rows plus units) in ``out_dir``.

    Raises:
        OutputError: a file cannot be written (nothing half-written is left).
    """
    layout = OutputLayout(out_dir)
    return write_statistics(table, layout.statistics, layout.statistics_json, QC_UNITS)


def merge_statistics(out_dir: str | os.PathLike, records: Sequence[dict]) -> None:
    """Fold the records' ``statistics`` rows into ``out_dir``'s tables: a case's rows replace its
    old rows, other cases keep theirs. Records without statistics (``--no-statistics``) change nothing.
    """
    new = [row for r in records for row in r.get("statistics") or []]
    if not new:
        return
    layout = OutputLayout(out_dir)
    table = pd.DataFrame(new)
    if layout.statistics.exists():
        try:
            old = pd.read_csv(
                layout.statistics, dtype={"case_id": str}, keep_default_na=False, na_values=[""]
            )
            table = pd.concat([old[~old["case_id"].isin(table["case_id"])], table], ignore_index=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, KeyError, UnicodeDecodeError):
            pass  # not a statistics table: replaced
    write_inference_statistics(table, out_dir)
