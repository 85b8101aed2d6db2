"""``pancreas-seg check MANIFEST``: every validation the loaders run, for every case, without training.

The checks are the loaders' own functions (:mod:`transforms.validate`, :mod:`transforms.io`,
:mod:`transforms.labels`), so a case that passes here loads in ``train``, ``cv``, ``fingerprint``
and ``infer``. Per case they are: the scan's header before its voxels are read (readable, a single
3-D volume, not over the size limit, not truncated, voxel sizes and affine sane, DICOM series
ambiguity), its voxels (finite, not all air; a warning when they do not look like CT in HU), and
the label's (readable, values in the schema given by ``label_map``, on the scan's grid).

The same functions give the commands their pre-flight: :func:`preflight` (``train`` and ``cv``
check every case before they create or touch the run folder), :func:`preflight_resume` (the
checkpoint a fold would resume from) and :func:`preflight_inputs` (``infer``: the headers of its
inputs before any output is written).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from models import check_network
from pipeline.core import errors as error_types
from pipeline.core.checkpoint import latest_checkpoint
from pipeline.core.errors import ImageError, PipelineError
from pipeline.core.fileio import atomic_write_text
from pipeline.core.layout import FoldLayout
from pipeline.data.manifest import case_records, read_manifest
from transforms.io import check_ct_intensities, load_volume, match_label_grid
from transforms.labels import check_label_values
from transforms.readers import read_header
from transforms.validate import check_header, warn_once

__all__ = [
    "COLUMNS",
    "Problem",
    "check_case",
    "check_manifest",
    "check_records",
    "format_problems",
    "preflight",
    "preflight_inputs",
    "preflight_resume",
    "raise_first_error",
    "write_problems",
]

log = logging.getLogger("pancreas_seg")
COLUMNS = ("case_id", "severity", "file", "problem")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem of one case's file; ``error_type`` is the error class a loader raises for it."""

    case_id: str
    severity: str  # "error" | "warning"
    file: str
    problem: str
    error_type: str = "ImageError"

    @property
    def message(self) -> str:
        """The loader's one-line message: ``file: problem``."""
        return f"{self.file}: {self.problem}"


def _problem(case: str, file: str, severity: str, text: str, error_type: str = "ImageError") -> Problem:
    text = " ".join(str(text).split())
    prefix = f"{file}: "
    return Problem(case, severity, file, text[len(prefix) :] if text.startswith(prefix) else text, error_type)


def _error(case: str, file: str, exc: PipelineError) -> Problem:
    return _problem(case, file, "error", str(exc), type(exc).__name__)


def check_case(record: dict, dicom_series: str = "") -> list[Problem]:
    """Run the loaders' checks on one case: scan, label, and the label's grid.

    Args:
        record: ``case_id``, ``image`` and optionally ``label`` and ``label_map`` (absolute paths,
            as :func:`pipeline.data.manifest.case_records` gives them).
        dicom_series: SeriesInstanceUID to pick when a DICOM folder holds several series.

    Returns:
        The case's problems (empty when it loads cleanly). A file with an error is not checked
        further; the label's grid is checked only when both files load.
    """
    import torch

    case, image, label = str(record.get("case_id", "?")), str(record["image"]), record.get("label")
    problems: list[Problem] = []
    img = lab = None
    try:
        img = load_volume(image, dicom_series=dicom_series, dtype=torch.float32)
        problems += [_problem(case, image, "warning", w) for w in check_ct_intensities(img, image)]
    except PipelineError as exc:
        problems.append(_error(case, image, exc))
        img = None
    if label:
        label = str(label)
        try:
            lab = load_volume(label, dtype=None)
            check_label_values(lab, str(record.get("label_map") or ""), label)
        except PipelineError as exc:
            problems.append(_error(case, label, exc))
            lab = None
        if img is not None and lab is not None:
            try:
                match_label_grid(img, lab, image, label)
            except ImageError as exc:
                problems.append(_error(case, label, exc))
    return problems


def check_records(records: Sequence[dict], dicom_series: str = "") -> list[Problem]:
    """:func:`check_case` for every record (a progress bar on a terminal)."""
    from tqdm import tqdm

    problems: list[Problem] = []
    for rec in tqdm(records, desc="check", unit="case", disable=not sys.stderr.isatty()):
        problems += check_case(rec, dicom_series)
    return problems


def check_manifest(
    path: str | os.PathLike, dicom_series: str = "", require_labels: bool = False
) -> tuple[list[dict], list[Problem]]:
    """Read a manifest (table-level problems raise) and check every case's files.

    Returns:
        (the cases as records, their problems).

    Raises:
        ManifestError: the manifest itself is unusable (see :func:`pipeline.data.manifest.read_manifest`).
    """
    # files are not checked here: a missing or empty file becomes a row of the table, not a stop
    records = case_records(read_manifest(path, require_labels=require_labels, check_files=False))
    return records, check_records(records, dicom_series)


def _table(problems: Sequence[Problem]) -> pd.DataFrame:
    return pd.DataFrame([dataclasses.asdict(p) for p in problems], columns=[*COLUMNS, "error_type"])[
        list(COLUMNS)
    ]


def format_problems(problems: Sequence[Problem], n_cases: int) -> str:
    """The problems as a text table (one row per problem) and a count line."""
    errors = sum(p.severity == "error" for p in problems)
    bad = len({p.case_id for p in problems if p.severity == "error"})
    summary = (
        f"{n_cases} case(s) checked: {errors} error(s) in {bad} case(s), {len(problems) - errors} warning(s)"
    )
    if not problems:
        return f"{summary}; no problems found"
    return _table(problems).to_string(index=False, justify="left") + "\n" + summary


def write_problems(problems: Sequence[Problem], path: str | os.PathLike) -> Path:
    """Write the problems as CSV (``case_id,severity,file,problem``), atomically."""
    return atomic_write_text(path, _table(problems).to_csv(index=False, lineterminator="\n"))


def raise_first_error(problems: Sequence[Problem], source: str | os.PathLike | None = None) -> None:
    """Raise the first error as the loader would (same class, same one line), noting how many more.

    Raises:
        PipelineError: when ``problems`` holds an error; nothing otherwise.
    """
    found = [p for p in problems if p.severity == "error"]
    if not found:
        return
    first = found[0]
    more = ""
    if len(found) > 1:
        where = f"'pancreas-seg check {source}'" if source else "'pancreas-seg check MANIFEST'"
        more = f" (and {len(found) - 1} more problem(s); {where} lists them all)"
    cls = getattr(error_types, first.error_type, None)
    cls = cls if isinstance(cls, type) and issubclass(cls, PipelineError) else ImageError
    raise cls(f"{first.message} [case {first.case_id}]{more}")


def preflight(
    records: Sequence[dict], dicom_series: str = "", source: str | os.PathLike | None = None
) -> None:
    """Check every case before a command creates or changes anything; warnings are logged.

    Raises:
        PipelineError: the first error found (one line; the count of the others).
    """
    problems = check_records(records, dicom_series)
    for p in problems:
        if p.severity == "warning":
            warn_once(p.message)
    raise_first_error(problems, source)


def preflight_resume(fold_dir: str | os.PathLike, expect) -> None:
    """Check the checkpoint a fold would resume from, before anything is written.

    Raises:
        CheckpointError: the newest ``epoch_N.pt`` is untrusted (needs unpickling), not ours, or of
            another network than ``expect``.
    """

    latest_checkpoint(
        FoldLayout(fold_dir).checkpoints, check=lambda ckpt, source: check_network(ckpt, expect, source)
    )


def preflight_inputs(records: Sequence[dict], dicom_series: str = "") -> tuple[list[dict], dict[str, str]]:
    """Check the headers of inference inputs (cheap: no voxels are read).

    Returns:
        (the records that pass, ``{case_id: message}`` of those that do not).

    Raises:
        PipelineError: no input passes: the first one's error (nothing is worth starting).
    """
    good, errors = [], {}
    for rec in records:
        try:
            check_header(read_header(rec["image"], dicom_series), str(rec["image"]), rec["image"])
            good.append(rec)
        except PipelineError as exc:
            errors[str(rec["case_id"])] = exc
    if errors and not good:
        raise next(iter(errors.values()))
    failed = {case: f"{type(exc).__name__}: {exc}" for case, exc in errors.items()}
    for case, message in failed.items():
        log.error("%s: refused: %s", case, message)
    return good, failed
