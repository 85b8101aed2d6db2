"""What a manifest must look like: its columns, the paths it may hold, and :func:`validate_manifest`.

Re-exported by :mod:`pipeline.data.manifest`, which reads and writes manifests.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.constants import IMAGE_EXTENSIONS
from pipeline.core.errors import ManifestError, PipelineError
from pipeline.core.label_map import check_label_map

__all__ = [
    "COLUMNS",
    "REQUIRED_COLUMNS",
    "IMAGE_EXTENSIONS",
    "validate_manifest",
    "parse_date",
    "case_id_problem",
    "check_case_id",
    "strip_extension",
    "is_dicom_file",
    "is_dicom_folder",
    "resolve_path",
]

COLUMNS: tuple[str, ...] = (
    "case_id",
    "subject_id",
    "image",
    "label",
    "fold",
    "label_map",
    "acquired",  # optional: the scan's date (ISO, YYYY-MM-DD), for follow-up tables
    "timepoint",  # optional: a free-text visit name (baseline, 6 months, ...)
)
REQUIRED_COLUMNS: tuple[str, ...] = ("case_id", "subject_id", "image")
# A case's masks, figures and report anchors are files named after its id, on any OS: no path
# separators, none of the characters Windows refuses, no control characters, not "." or "..".
_NOT_IN_FILE_NAMES = '/\\:*?"<>|'
_CASE_ID_RULE = 'case_id must be usable as a file name (no / \\ : * ? " < > |)'


# --------------------------------------------------------------------------- case ids
def parse_date(text: str) -> datetime.date | None:
    """``YYYY-MM-DD`` (or ``YYYYMMDD``, as DICOM writes dates) as a date; None when it is neither."""
    text = str(text or "").strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name a case, or None: the one rule for every step that makes ids.

    The manifest's ``case_id`` column, ``infer --input FOLDER`` (ids from file names) and the
    importers all apply it, so an id that one step accepts every later step accepts too.
    """
    if not case_id:
        return "case_id is empty"
    if case_id != case_id.strip():  # manifest cells are stripped: the id would change on the way
        return "case_id must not start or end with a space"
    if case_id in (".", "..") or any(ch in case_id for ch in _NOT_IN_FILE_NAMES) or not case_id.isprintable():
        return _CASE_ID_RULE
    return None


def check_case_id(
    case_id: str, source: str | os.PathLike, error: type[PipelineError] = ManifestError, hint: str = ""
) -> str:
    """``case_id``, derived from the name of ``source``, if it can name a case.

    Args:
        case_id: the id made from the file or folder name.
        source: the file or folder it was made from (named in the message).
        error: the error class to raise (``ImageError`` for scans given to ``infer``).
        hint: what the user can do, appended to the message.

    Raises:
        PipelineError: ``error``, one line naming ``source``, the id and the rule it breaks.
    """
    problem = case_id_problem(case_id)
    if problem:
        raise error(f"{source}: its name gives case_id {case_id!r}: {problem}{'; ' + hint if hint else ''}")
    return case_id


# --------------------------------------------------------------------------- small helpers
def strip_extension(name: str) -> str:
    """``"p01.nii.gz"`` -> ``"p01"``: the name without a known image extension (case-insensitive)."""
    low = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a ``.dcm`` file or a file with the ``DICM`` signature at byte 128."""
    p = Path(path)
    if p.suffix.lower() == ".dcm":
        return p.is_file()
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def is_dicom_folder(path: str | os.PathLike, max_checked: int = 8) -> bool:
    """True if ``path`` directly holds a DICOM file (looks at the first ``max_checked`` files only)."""
    try:
        files = sorted(e.path for e in os.scandir(path) if e.is_file())
    except OSError:
        return False
    return any(is_dicom_file(f) for f in files[:max_checked])


def resolve_path(value: str, root: str | os.PathLike) -> Path:
    """A manifest path as a ``Path``: absolute values as they are, others under ``root``."""
    p = Path(value)
    return p if p.is_absolute() else Path(root) / p


def _text(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return str(value).strip()


def _fold(value: Any) -> int | None:
    """A fold cell as int (None when empty); ValueError when not a whole number >= 0."""
    text = _text(value)
    if not text:
        return None
    number = float(text)
    if not number.is_integer() or number < 0:
        raise ValueError(text)
    return int(number)


def _rows(df: pd.DataFrame) -> list[int]:
    rows = df.attrs.get("rows")
    return list(rows) if rows is not None and len(rows) == len(df) else [i + 2 for i in range(len(df))]


# --------------------------------------------------------------------------- validation
def _path_problem(value: str, root: Path, kind: str) -> str | None:
    """Why an image/label path cannot be used, or None."""
    try:
        p = resolve_path(value, root)
        if not p.exists():
            return f"{kind} file not found: {value}"
        if p.is_dir():
            if kind == "label":
                return f"label is a folder, expected a label file ({', '.join(IMAGE_EXTENSIONS)}): {value}"
            return None if is_dicom_folder(p) else f"image folder holds no DICOM files: {value}"
        if strip_extension(p.name) == p.name:
            hint = "; give a DICOM series as its folder" if kind == "image" else ""
            return f"{kind} file has an unsupported format (expected {', '.join(IMAGE_EXTENSIONS)}{hint}): {value}"
        if p.stat().st_size == 0:
            return f"{kind} file is empty (0 bytes): {value}"
    except (OSError, ValueError) as exc:  # odd characters, too-long names, permissions: never crash
        return f"{kind} path cannot be used ({exc}): {value}"
    return None


def _and(items: list[Any]) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def validate_manifest(
    df: pd.DataFrame,
    root: str | os.PathLike,
    *,
    source: str = "manifest",
    require_labels: bool = False,
    check_files: bool = True,
) -> None:
    """Check a manifest table; raise on the first problem, naming ``source`` and the row.

    Row numbers are spreadsheet rows (header = row 1, first case = row 2), taken from
    ``df.attrs["rows"]`` when :func:`read_manifest` recorded them.

    Args:
        df: the table (string cells; ``fold`` may be text or integers).
        root: the folder relative paths refer to.
        source: the manifest's name for messages (usually its path).
        require_labels: every row must have a ``label``.
        check_files: check that image and label paths exist and have a supported format.

    Raises:
        ManifestError: unknown or missing columns, no rows, empty required cells, duplicate
            ``case_id``, a ``fold`` that is not a whole number >= 0, a subject in two folds, a bad
            ``label_map``, or (``check_files``) a missing, empty or unsupported image/label.
    """
    cols = [str(c) for c in df.columns]
    unknown = [c for c in cols if c not in COLUMNS]
    if unknown:
        raise ManifestError(
            f"{source}: unknown columns: {', '.join(unknown)} (known columns: {', '.join(COLUMNS)})"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        raise ManifestError(
            f"{source}: missing required column(s): {', '.join(missing)} (required: {', '.join(REQUIRED_COLUMNS)})"
        )
    if require_labels and "label" not in cols:
        raise ManifestError(f"{source}: has no label column, but this step needs a label for every case")
    if len(df) == 0:
        raise ManifestError(f"{source}: manifest has no rows (no cases)")
    root, rows = Path(root), _rows(df)
    cell = {c: [_text(v) for v in df[c].tolist()] if c in cols else [""] * len(df) for c in COLUMNS}
    folds: list[int | None] = []
    for i, row in enumerate(rows):
        case = cell["case_id"][i]
        where = f"{source} row {row} (case_id={case})"
        problem = case_id_problem(case)
        if problem:
            raise ManifestError(f"{where if case else f'{source} row {row}'}: {problem}")
        for col in ("subject_id", "image"):
            if not cell[col][i]:
                raise ManifestError(f"{where}: {col} is empty")
        if require_labels and not cell["label"][i]:
            raise ManifestError(f"{where}: label is empty, but this step needs a label for every case")
        try:
            folds.append(_fold(cell["fold"][i]))
        except ValueError:
            raise ManifestError(f"{where}: fold {cell['fold'][i]!r} is not a whole number >= 0") from None
        try:
            check_label_map(cell["label_map"][i], where=where)
        except ManifestError as exc:
            raise ManifestError(str(exc)) from None
        if cell["acquired"][i] and parse_date(cell["acquired"][i]) is None:
            raise ManifestError(f"{where}: acquired {cell['acquired'][i]!r} is not an ISO date (YYYY-MM-DD)")
        if check_files:
            for kind in ("image", "label"):
                problem = _path_problem(cell[kind][i], root, kind) if cell[kind][i] else None
                if problem:
                    raise ManifestError(f"{where}: {problem}")
            if cell["label"][i] and resolve_path(cell["label"][i], root) == resolve_path(
                cell["image"][i], root
            ):
                raise ManifestError(f"{where}: label and image are the same file: {cell['image'][i]}")
    seen: dict[str, list[int]] = {}
    for case, row in zip(cell["case_id"], rows):
        seen.setdefault(case, []).append(row)
    for case, where_rows in seen.items():
        if len(where_rows) > 1:
            raise ManifestError(
                f"{source} rows {_and(where_rows)}: duplicate case_id={case}; case_id must be unique"
            )
    by_subject: dict[str, dict[int, int]] = {}
    for subject, fold, row in zip(cell["subject_id"], folds, rows):
        if fold is not None:
            by_subject.setdefault(subject, {}).setdefault(fold, row)
    for subject, fold_rows in by_subject.items():
        if len(fold_rows) > 1:
            raise ManifestError(
                f"{source} rows {_and(sorted(fold_rows.values()))}: subject_id={subject} is in folds "
                f"{_and(sorted(fold_rows))}; all cases of a subject must share one fold"
            )
