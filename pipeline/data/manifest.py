"""The manifest: one CSV row per case, the contract between a user's data and every later stage.

Columns (schema in ``data_manifests/README.md``): ``case_id`` (unique), ``subject_id`` (a patient;
folds never split a subject), ``image`` (a .nii/.nii.gz/.nrrd/.mha/.mhd file or a DICOM series
folder), ``label`` (optional), ``fold`` (optional int) and ``label_map`` (optional, ``"1:1,2:1"``).
Relative paths are relative to the manifest's folder; absolute paths are allowed.

Row numbers in error messages are spreadsheet rows: the header is row 1 and the first case is
row 2, the same number a text editor shows as the line number.

The columns, path helpers and :func:`validate_manifest` live in :mod:`pipeline.data.schema`, the
importers in :mod:`pipeline.data.importers`, folds and ``splits_final.json`` in :mod:`pipeline.data.folds`;
all are re-exported here (``from pipeline.data.manifest import import_msd`` works).
"""

from __future__ import annotations

import csv
import importlib
import io
import os
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.constants import IMAGE_EXTENSIONS
from pipeline.core.errors import ManifestError
from pipeline.core.fileio import atomic_write_text
from pipeline.core.label_map import parse_label_map
from pipeline.data.schema import (
    COLUMNS,
    REQUIRED_COLUMNS,
    _fold,
    _rows,
    _text,
    is_dicom_file,
    is_dicom_folder,
    resolve_path,
    strip_extension,
    validate_manifest,
)

__all__ = [
    "COLUMNS",
    "REQUIRED_COLUMNS",
    "IMAGE_EXTENSIONS",
    "read_manifest",
    "validate_manifest",
    "write_manifest",
    "case_records",
    "parse_label_map",
    "strip_extension",
    "is_dicom_file",
    "is_dicom_folder",
    "resolve_path",
    "atomic_write_text",
]  # plus, lazily, the names of pipeline.data.importers and pipeline.data.folds (see __getattr__)

_IMPORTED = {
    "import_glob": "pipeline.data.importers",
    "import_msd": "pipeline.data.importers",
    "import_nnunet": "pipeline.data.importers",
    "import_nih": "pipeline.data.importers",
    "assign_folds": "pipeline.data.folds",
    "describe_folds": "pipeline.data.folds",
    "read_splits": "pipeline.data.folds",
    "write_splits": "pipeline.data.folds",
}


def __getattr__(name: str) -> Any:
    # pipeline.data.importers and pipeline.data.folds import this module, so their names are re-exported lazily.
    if name in _IMPORTED:
        return getattr(importlib.import_module(_IMPORTED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _root(df: pd.DataFrame, root: str | os.PathLike | None) -> Path:
    return Path(os.path.abspath(root if root is not None else df.attrs.get("root", Path.cwd())))


# --------------------------------------------------------------------------- read / write
def _decode(path: Path) -> str:
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found")
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder; expected a manifest CSV file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from exc
    if b"\x00" in data[:65536]:
        raise ManifestError(f"{path}: binary file, not a CSV manifest (save spreadsheets as 'CSV UTF-8')")
    try:
        return data.decode("utf-8-sig")  # drops Excel's byte-order mark
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text (byte {exc.start}); save it as 'CSV UTF-8'") from exc


def read_manifest(
    path: str | os.PathLike, *, require_labels: bool = False, check_files: bool = True
) -> pd.DataFrame:
    """Read and validate a manifest CSV (UTF-8, BOM allowed; ``,`` ``;`` or tab separated).

    Blank lines are skipped; error messages give spreadsheet rows (header = row 1, first case = row 2).

    Args:
        path: the manifest CSV.
        require_labels: every row must have a ``label`` (training, evaluation).
        check_files: check that every image and label exists (relative to the manifest's folder).

    Returns:
        A DataFrame with all :data:`COLUMNS` in order (absent optional ones added empty): text
        stripped, paths as written in the file, ``fold`` as nullable ``Int64``. ``attrs["root"]`` is
        the manifest's folder, ``attrs["path"]`` the manifest, ``attrs["rows"]`` each case's row.

    Raises:
        ManifestError: missing, binary, non-UTF-8 or malformed file, or :func:`validate_manifest` fails.
    """
    path = Path(os.path.abspath(path))
    text = _decode(path)
    head = next((line for line in text.split("\n") if line.strip()), "")
    counts = {s: head.count(s) for s in (";", "\t")}
    sep = max(counts, key=counts.get) if max(counts.values()) > head.count(",") else ","
    try:  # csv, not pandas: it yields blank lines too, so row numbers match a spreadsheet's
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=sep))
    except csv.Error as exc:
        raise ManifestError(f"{path}: not a valid CSV file ({exc})") from exc
    first = next((i for i, rec in enumerate(records) if any(v.strip() for v in rec)), None)
    if first is None:
        raise ManifestError(f"{path}: manifest is empty (no header, no rows)")
    header = [h.strip() for h in records[first]]
    dupes = sorted({h for h in header if h and header.count(h) > 1})
    if dupes:
        raise ManifestError(f"{path}: column(s) {', '.join(dupes)} appear more than once in the header")
    cells, rows = [], []
    for number, rec in enumerate(records[first + 1 :], start=first + 2):
        rec = [v.strip() for v in rec]
        if not any(rec):
            continue
        if any(rec[len(header) :]):
            raise ManifestError(
                f"{path} row {number}: {len(rec)} values but the header has {len(header)} columns"
            )
        cells.append((rec + [""] * len(header))[: len(header)])
        rows.append(number)
    df = pd.DataFrame(cells, columns=range(len(header)), dtype=object)
    for i, name in enumerate(header):  # spreadsheets add unnamed empty columns; unnamed data is an error
        if not name and df[i].astype(bool).any():
            raise ManifestError(f"{path}: column {i + 1} has values but no name in the header")
    df = df[[i for i, name in enumerate(header) if name]].set_axis([h for h in header if h], axis=1)
    df.attrs["rows"] = rows
    validate_manifest(
        df, path.parent, source=str(path), require_labels=require_labels, check_files=check_files
    )
    out = _normalise(df, path.parent)
    out.attrs["path"] = path
    return out


def _normalise(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    """All :data:`COLUMNS` in order, text columns stripped, ``fold`` as ``Int64``; attrs root/rows set."""
    out = pd.DataFrame(index=range(len(df)))
    for col in COLUMNS:
        values = df[col].tolist() if col in df.columns else [None] * len(df)
        out[col] = (
            pd.array([_fold(v) for v in values], dtype="Int64")
            if col == "fold"
            else [_text(v) for v in values]
        )
    out.attrs.update({"root": Path(os.path.abspath(root)), "rows": _rows(df)})
    return out


def write_manifest(
    df: pd.DataFrame, path: str | os.PathLike, *, root: str | os.PathLike | None = None
) -> Path:
    """Write a manifest atomically (temporary file, then ``os.replace``).

    Paths inside the new manifest's folder are written relative to it, others absolute (a
    manifest beside its data moves with it; one elsewhere still finds the data).

    Args:
        df: the cases; its relative paths are relative to ``root``.
        path: the CSV to write (its folder is created).
        root: the folder ``df``'s relative paths refer to; default ``df.attrs["root"]``, else the
            current folder.

    Returns:
        The written path (absolute).

    Raises:
        ManifestError: the table fails :func:`validate_manifest` (files are not checked).
    """
    path, base = Path(os.path.abspath(path)), _root(df, root)
    validate_manifest(df, base, source=str(path), check_files=False)
    out = _normalise(df, base)
    for col in ("image", "label"):
        out[col] = [_relative(v, base, path.parent) for v in out[col]]
    return atomic_write_text(path, out.to_csv(index=False, lineterminator="\n"))


def _relative(value: str, base: Path, folder: Path) -> str:
    if not value:
        return ""
    target = Path(os.path.normpath(resolve_path(value, base)))
    try:
        return target.relative_to(folder).as_posix()
    except ValueError:
        return str(target)


def case_records(df: pd.DataFrame, root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The cases as dictionaries for MONAI datasets.

    Args:
        df: a manifest from :func:`read_manifest` (or a table with its columns).
        root: the folder relative paths refer to; default ``df.attrs["root"]``, else the current folder.

    Returns:
        One dict per row: ``case_id``, ``subject_id``, ``image`` (absolute path string), ``label``
        (absolute path string, only when the row has one), ``fold`` (int, -1 when unassigned),
        ``label_map`` (string, may be empty); ``acquired`` and ``timepoint`` only when the row has them.
    """
    base = _root(df, root)
    records = []
    for row in _normalise(df, base).itertuples(index=False):
        rec: dict[str, Any] = {"case_id": row.case_id, "subject_id": row.subject_id}
        rec["image"] = os.path.normpath(resolve_path(row.image, base))
        if row.label:
            rec["label"] = os.path.normpath(resolve_path(row.label, base))
        rec["fold"] = -1 if pd.isna(row.fold) else int(row.fold)
        rec["label_map"] = row.label_map
        for col in ("acquired", "timepoint"):  # follow-up columns, only where given
            if getattr(row, col):
                rec[col] = getattr(row, col)
        records.append(rec)
    return records
