"""Follow-up per patient: how each subject's measurements changed between scans (``longitudinal.csv``).

The dates come from the manifest's ``acquired`` column, else from the DICOM series'
``acquisition_date`` in the statistics. Every subject with scans at two or more dates gets one row
per scan and class, oldest first (:data:`LONGITUDINAL_COLUMNS`): the volume and mean HU at that date,
the change from the previous scan (mL, %, HU) and from the first scan (%), and the days between.

``within_measurement_error`` compares the volume change with the method's own error: true when
``|volume_change_pct|`` is below the least significant change of a cross-validation (``1.96 x
sqrt(2) x SD`` of its ``volume_error_pct``, :func:`pipeline.evaluation.volumes.volume_agreement`),
empty when no CV summary was given or for a subject's first scan.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from pipeline.core.errors import ManifestError, writing
from pipeline.core.fileio import atomic_write
from pipeline.data.schema import parse_date
from pipeline.evaluation.volumes import volume_agreement

__all__ = ["LONGITUDINAL_COLUMNS", "longitudinal_table", "measurement_error_pct", "write_longitudinal"]

LONGITUDINAL_COLUMNS = (
    "subject_id",
    "label",
    "case_id",
    "timepoint",
    "acquired",
    "days_since_previous",
    "days_since_first",
    "volume_ml",
    "hu_mean",
    "volume_change_ml",
    "volume_change_pct",
    "volume_change_from_first_pct",
    "hu_change",
    "within_measurement_error",
)


def measurement_error_pct(cv_summary: str | os.PathLike) -> float:
    """The least significant volume change (%) of a CV, from its ``cv_summary.json``.

    Read from ``volume_agreement`` when the summary has it, else computed from the per-case
    ``volume_error_pct`` in its ``metric_per_case``.

    Raises:
        ManifestError: the file cannot be read, or holds no ``volume_error_pct`` (a CV made before
            volumes were measured: re-run ``pancreas-seg evaluate`` on its folds).
    """
    path = Path(cv_summary)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: cannot read the CV summary ({exc})") from None
    agreement = data.get("volume_agreement") if isinstance(data, dict) else None
    if not agreement:
        agreement = volume_agreement(
            pd.DataFrame(data.get("metric_per_case", []) if isinstance(data, dict) else [])
        )
    value = float(agreement.get("least_significant_change_pct", math.nan))
    if math.isnan(value):
        raise ManifestError(
            f"{path}: no volume_error_pct for two or more cases; this CV predates volume measurement"
        )
    return value


def _pct(new: float, old: float) -> float:
    return 100.0 * (new - old) / old if old else math.nan


def longitudinal_table(
    statistics: pd.DataFrame, records: Sequence[Mapping], error_pct: float | None = None
) -> pd.DataFrame:
    """The per-subject change table.

    Args:
        statistics: rows of :data:`pipeline.data.statistics.STAT_COLUMNS` (``case_id``, ``label``,
            ``volume_ml``, ``hu_mean``, ``acquisition_date``).
        records: the manifest's records (``case_id``, ``subject_id``, ``acquired``?, ``timepoint``?); a
            record without ``subject_id`` (a scan given by ``infer --input``) is its own subject.
        error_pct: the least significant change (%), or None.

    Returns:
        :data:`LONGITUDINAL_COLUMNS` rows, by subject, class and date; empty when no subject has two dates.
    """
    by_case = {str(r["case_id"]): r for r in records}
    rows = []
    for row in statistics.to_dict("records"):
        rec = by_case.get(str(row["case_id"]))
        if rec is None:
            continue
        when = parse_date(rec.get("acquired") or "") or parse_date(str(row.get("acquisition_date") or ""))
        if when is None:
            continue
        rows.append(
            {
                **row,
                "subject_id": str(rec.get("subject_id") or rec["case_id"]),
                "timepoint": rec.get("timepoint", ""),
                "date": when,
            }
        )
    out = []
    for (subject, label), group in (
        pd.DataFrame(rows).groupby(["subject_id", "label"], sort=True) if rows else []
    ):
        group = group.sort_values("date")
        if group["date"].nunique() < 2:
            continue
        first = prev = None
        for r in group.to_dict("records"):
            line = {
                "subject_id": subject,
                "label": label,
                "case_id": r["case_id"],
                "timepoint": r["timepoint"],
                "acquired": r["date"].isoformat(),
                "volume_ml": r["volume_ml"],
                "hu_mean": r["hu_mean"],
            }
            if prev is not None:
                change = _pct(r["volume_ml"], prev["volume_ml"])
                line.update(
                    days_since_previous=(r["date"] - prev["date"]).days,
                    days_since_first=(r["date"] - first["date"]).days,
                    volume_change_ml=r["volume_ml"] - prev["volume_ml"],
                    volume_change_pct=change,
                    volume_change_from_first_pct=_pct(r["volume_ml"], first["volume_ml"]),
                    hu_change=r["hu_mean"] - prev["hu_mean"],
                )
                if error_pct is not None and not math.isnan(change):
                    line["within_measurement_error"] = bool(abs(change) < error_pct)
            else:
                first = r
                line.update(days_since_first=0)
            prev = r
            out.append(line)
    return pd.DataFrame(out, columns=list(LONGITUDINAL_COLUMNS))


def write_longitudinal(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the change table as CSV, atomically.

    Raises:
        OutputError: it cannot be written (nothing half-written is left).
    """
    with writing(path):
        return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
