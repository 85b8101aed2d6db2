"""Batches of scans: :func:`predict_cases` predicts every record into a folder, skips finished
cases, isolates failures, and writes ``timings.csv`` and ``inputs.csv``; under ``torchrun`` the
cases are dealt out by rank. Used by ``pancreas-seg infer`` and cross-validation's held-out
predictions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.core import distributed as dist
from pipeline.core.errors import OutputError, PipelineError
from pipeline.core.fileio import atomic_write
from pipeline.core.layout import OutputLayout
from pipeline.core.runtime import peak_rss_mb, reset_peak_rss
from pipeline.data.manifest import read_manifest, write_manifest
from pipeline.inference.dicom_seg import SEG_SUFFIX, require_highdicom, write_dicom_seg
from pipeline.inference.predictor import Prediction, Predictor
from pipeline.inference.writers import PROBABILITY_TAG, output_path, save_like

__all__ = ["TIMING_COLUMNS", "predict_cases"]

log = logging.getLogger("pancreas_seg")
TIMING_COLUMNS = (
    "case_id",
    "load_s",
    "preprocess_s",
    "network_s",
    "stitch_s",
    "invert_s",
    "save_s",
    "total_s",
    "peak_rss_mb",
)


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir, prefix=".write_test"):
            pass
    except OSError as exc:
        raise OutputError(f"{out_dir}: output folder cannot be written ({exc.strerror or exc})") from None


def _save_outputs(pred: Prediction, rec: dict, out_dir: Path, predictor: Predictor) -> Path:
    """Write the extras first and the mask last (its presence marks a finished case)."""
    case, image = rec["case_id"], rec["image"]
    if pred.probability is not None:
        save_like(pred.probability, pred.affine, output_path(out_dir, case, image, PROBABILITY_TAG), image)
    if predictor.cfg.infer.dicom_seg and Path(image).is_dir():
        write_dicom_seg(
            pred.mask, pred.affine, image, out_dir / f"{case}{SEG_SUFFIX}", predictor.cfg.data.dicom_series
        )
    return save_like(pred.mask, pred.affine, output_path(out_dir, case, image), reference=image)


def predict_cases(
    predictor: Predictor,
    records: Sequence[dict],
    out_dir: str | os.PathLike,
    overwrite: bool = False,
) -> dict:
    """Predict every record into ``out_dir``, with a progress bar on a terminal.

    A case whose mask exists is skipped unless ``overwrite``; a case that fails is logged and the
    others still run. Per-case timings (:data:`TIMING_COLUMNS`) are merged into ``out_dir/timings.csv``
    and the scans behind the masks into ``out_dir/inputs.csv`` (for ``pancreas-seg report``).
    Under ``torchrun`` each rank predicts every N-th case, rank 0 merges all ranks' timings, and
    every rank returns the whole job's outcome.

    Returns:
        ``{"written": [mask paths], "skipped": [mask paths], "failed": {case_id: message}}``.

    Raises:
        PipelineError: ``out_dir`` cannot be created or written (checked before any case runs), or
            a write fails midway (disk full); ConfigError: DICOM SEG asked for without highdicom.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    out_dir = Path(out_dir)
    _check_writable(out_dir)
    all_records, records = records, dist.shard(records)  # under torchrun: case i goes to rank i % N
    if predictor.cfg.infer.dicom_seg and any(Path(r["image"]).is_dir() for r in records):
        require_highdicom()
    written, skipped, failed, rows = [], [], {}, []
    tty = _tty()
    try:
        with logging_redirect_tqdm() if tty else contextlib.nullcontext():  # log lines above the bar
            for rec in tqdm(records, desc="infer", unit="case", disable=not tty):
                case = str(rec["case_id"])
                target = output_path(out_dir, case, rec["image"])
                if target.exists() and not overwrite:
                    skipped.append(target)
                    continue
                row = _predict_one(predictor, rec, out_dir, failed)
                if row is not None:
                    rows.append(row)
                    written.append(target)
    finally:
        if dist.is_distributed():  # every rank's outcome, in input order; rank 0 writes the tables
            written, skipped, failed, rows = _gather_ranks(
                all_records, out_dir, written, skipped, failed, rows
            )
        if rows and dist.is_main():
            layout = OutputLayout(out_dir)
            _merge_timings(layout.timings, rows)
            _merge_inputs(layout.inputs, all_records)
    if skipped:
        log.info("%d case(s) skipped: output exists (use --overwrite to recompute)", len(skipped))
    return {"written": written, "skipped": skipped, "failed": failed}


def _gather_ranks(
    records: Sequence[dict], out_dir: Path, written: list, skipped: list, failed: dict, rows: list
) -> tuple[list, list, dict, list]:
    """Merge every torchrun rank's outcome of :func:`predict_cases`, ordered as ``records``."""
    case_of = {output_path(out_dir, str(r["case_id"]), r["image"]): str(r["case_id"]) for r in records}
    index = {case: i for i, case in enumerate(case_of.values())}
    parts = dist.all_gather_objects((written, skipped, failed, rows))
    return (
        sorted((p for part in parts for p in part[0]), key=lambda p: index[case_of[p]]),
        sorted((p for part in parts for p in part[1]), key=lambda p: index[case_of[p]]),
        {c: m for part in parts for c, m in part[2].items()},
        sorted((row for part in parts for row in part[3]), key=lambda row: index[row["case_id"]]),
    )


def _predict_one(predictor: Predictor, rec: dict, out_dir: Path, failed: dict) -> dict | None:
    """Predict and save one case; a failure goes into ``failed`` and returns None."""
    case = str(rec["case_id"])
    reset_peak_rss()
    start = time.perf_counter()
    try:
        pred = predictor.predict(rec)
    except PipelineError as exc:
        failed[case] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - one odd scan must not stop a batch
        failed[case] = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        log.debug("%s: traceback", case, exc_info=True)
    if case in failed:
        log.error("%s: failed: %s", case, failed[case])
        return None
    t_save = time.perf_counter()
    try:
        target = _save_outputs(pred, rec, out_dir, predictor)
    except PipelineError as exc:  # e.g. a DICOM SEG that cannot reference its series
        failed[case] = f"{type(exc).__name__}: {exc}"
        log.error("%s: failed: %s", case, failed[case])
        return None
    except OSError as exc:  # the folder was writable a moment ago: disk full, removed, ...
        raise PipelineError(
            f"{out_dir}: cannot write the outputs of {case} ({exc.strerror or exc})"
        ) from None
    t = {**pred.timings, "save_s": time.perf_counter() - t_save, "total_s": time.perf_counter() - start}
    log.info("%s: %s (%.1f s)", case, target, t["total_s"])
    return {"case_id": case, **t, "peak_rss_mb": peak_rss_mb()}


def _merge_inputs(path: Path, records: Sequence[dict]) -> None:
    """Record which scan each mask came from (``inputs.csv``, a manifest without labels), so that
    ``pancreas-seg report OUT`` draws the masks on their scans without ``--manifest``."""
    new = pd.DataFrame(
        [
            {
                "case_id": str(r["case_id"]),
                "subject_id": str(r.get("subject_id") or r["case_id"]),
                "image": r["image"],
            }
            for r in records
        ]
    )
    if path.exists():
        try:
            old = read_manifest(path)[["case_id", "subject_id", "image"]]
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


def _tty() -> bool:
    import sys

    return sys.stderr.isatty()
