"""Per-case records of a batch of predictions, and the tables built from them.

Every finished case leaves a record, ``OUT/.records/<case_id>.json`` (its :data:`TIMING_COLUMNS`
row, the scan it came from, the mask's name), written atomically just before its mask is renamed
into place: a mask on disk always has its record, so a kill at any instruction loses no row of a
finished case. :func:`merge_records` folds the records into ``timings.csv`` and ``inputs.csv``
(rank 0 under torchrun, after every rank wrote the records of its own cases), then deletes them; a
run that was killed before merging leaves its records, and the next run (which skips the finished
cases) merges them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.core.fileio import atomic_write, atomic_write_text
from pipeline.core.layout import OutputLayout
from pipeline.data.manifest import case_records, read_manifest, write_manifest
from pipeline.inference.measure import merge_statistics

__all__ = ["TIMING_COLUMNS", "case_record", "write_record", "merge_records"]

log = logging.getLogger("pancreas_seg")
TIMING_COLUMNS = (
    "case_id",
    "load_s",
    "preprocess_s",
    "network_s",
    "stitch_s",
    "invert_s",
    "statistics_s",  # statistics.csv and QC of the case (empty with --no-statistics)
    "save_s",
    "total_s",
    "peak_rss_mb",
)
_INPUT_COLUMNS = ["case_id", "subject_id", "image"]


def case_record(
    rec: dict, mask: str | os.PathLike, timings: dict, statistics: list[dict] | None = None
) -> dict:
    """The record of case ``rec`` (a manifest record) whose mask is ``mask``, with its ``timings``
    and its ``statistics.csv`` rows (:mod:`pipeline.inference.measure`; None: not measured)."""
    case = str(rec["case_id"])
    return {
        "statistics": statistics,
        "case_id": case,
        "mask": Path(mask).name,
        "timings": {"case_id": case, **{k: timings.get(k) for k in TIMING_COLUMNS[1:]}},
        "input": {
            "case_id": case,
            "subject_id": str(rec.get("subject_id") or case),
            "image": os.path.abspath(rec["image"]),  # the next run may start in another folder
        },
    }


def write_record(out_dir: str | os.PathLike, record: dict) -> Path:
    """Write ``record`` atomically to ``out_dir/.records/<case_id>.json``.

    Raises:
        OutputError: it cannot be written (names the file).
    """
    return atomic_write_text(OutputLayout(out_dir).record(record["case_id"]), json.dumps(record))


def merge_records(out_dir: str | os.PathLike, fresh: Sequence[dict], order: Sequence[str]) -> None:
    """Fold this run's records and those left on disk into the tables, then delete the files.

    A case's row replaces its old row; cases of older runs keep theirs. Records on disk whose mask
    is missing (killed between the record and the mask) are dropped: the case was not finished.

    Args:
        out_dir: the batch's output folder.
        fresh: this run's records (all ranks'), which need no re-reading from disk.
        order: this run's case ids in input order; the new rows follow it.

    Raises:
        OutputError: a table cannot be written (the records stay for the next run).
    """
    out_dir, layout = Path(out_dir), OutputLayout(out_dir)
    found = _read_records(layout.records)
    records = {r["case_id"]: r for _, r in found if (out_dir / r["mask"]).exists()}
    records.update((r["case_id"], r) for r in fresh)
    if records:
        index = {case: i for i, case in enumerate(order)}
        new = sorted(records.values(), key=lambda r: (index.get(r["case_id"], len(index)), r["case_id"]))
        _merge_timings(layout.timings, [r["timings"] for r in new])
        _merge_inputs(layout.inputs, [r["input"] for r in new])
        merge_statistics(out_dir, new)
    for path, _ in found:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: a record written since (another process)
        layout.records.rmdir()


def _read_records(folder: Path) -> list[tuple[Path, dict]]:
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):  # a temporary of a write that was killed
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            found.append((path, {k: record[k] for k in ("case_id", "mask", "timings", "input")}))
            found[-1][1]["statistics"] = record.get("statistics")
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("warning: %s is not a case record; ignoring it", path)
    return found


def _merge_inputs(path: Path, rows: list[dict]) -> None:
    """Record which scan each mask came from (``inputs.csv``, a manifest without labels), so that
    ``pancreas-seg report OUT`` draws the masks on their scans without ``--manifest``."""
    new = pd.DataFrame(rows, columns=_INPUT_COLUMNS)
    if path.exists():
        try:
            old = pd.DataFrame(case_records(read_manifest(path, check_files=False)))[_INPUT_COLUMNS]
            new = pd.concat([old[~old["case_id"].isin(new["case_id"])], new], ignore_index=True)
        except (PipelineError, KeyError):
            log.warning("warning: %s is not an inputs table; replacing it", path)
    write_manifest(new, path, root=Path.cwd())


def _merge_timings(path: Path, rows: list[dict]) -> None:
    new = pd.DataFrame(rows, columns=list(TIMING_COLUMNS))
    if path.exists():
        try:
            old = pd.read_csv(path, dtype={"case_id": str})
            new = pd.concat([old[~old["case_id"].isin(new["case_id"])], new], ignore_index=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, KeyError, UnicodeDecodeError):
            log.warning("warning: %s is not a timings table; replacing it", path)
    atomic_write(path, lambda tmp: new[list(TIMING_COLUMNS)].to_csv(tmp, index=False, float_format="%.4f"))
