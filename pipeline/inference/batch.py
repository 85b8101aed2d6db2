"""Batches of scans: :func:`predict_cases` predicts every record into a folder, skips finished
cases, isolates failures, overlaps each case's loading and writing with its neighbours' network
(:mod:`pipeline.inference.overlap`), and writes ``timings.csv`` and ``inputs.csv`` (from per-case records,
:mod:`pipeline.inference.records`, so a killed run loses no finished case's rows); under
``torchrun`` the cases are dealt out by rank. Used by ``pancreas-seg infer`` and cross-validation's
held-out predictions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pipeline.core import distributed as dist
from pipeline.core.errors import OutputError, PipelineError
from pipeline.core.label_map import class_names
from pipeline.core.runtime import peak_rss_mb, reset_peak_rss
from pipeline.inference.dicom_seg import SEG_SUFFIX, require_highdicom, write_dicom_seg
from pipeline.inference.measure import case_statistics
from pipeline.inference.overlap import overlapped, resolve_workers
from pipeline.inference.predictor import Pending, Prediction, Predictor
from pipeline.inference.records import TIMING_COLUMNS, case_record, merge_records, write_record
from pipeline.inference.writers import output_path, save_like, save_probabilities

__all__ = ["TIMING_COLUMNS", "predict_cases"]

log = logging.getLogger("pancreas_seg")


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir, prefix=".write_test"):
            pass
    except OSError as exc:
        raise OutputError(f"{out_dir}: output folder cannot be written ({exc.strerror or exc})") from None


def _save_outputs(
    pred: Prediction, rec: dict, out_dir: Path, predictor: Predictor, before_mask: Callable[[], object]
) -> Path:
    """Write the extras first and the mask last (its presence marks a finished case); ``before_mask``
    runs when the mask is complete under its temporary name, just before it is renamed into place."""
    case, image = rec["case_id"], rec["image"]
    names = class_names(predictor.cfg)
    if pred.probability is not None:
        save_probabilities(pred.probability, pred.affine, out_dir, case, image, list(names.values()))
    if predictor.cfg.infer.dicom_seg and Path(image).is_dir():
        write_dicom_seg(
            pred.mask,
            pred.affine,
            image,
            out_dir / f"{case}{SEG_SUFFIX}",
            predictor.cfg.data.dicom_series,
            names,
        )
    target = output_path(out_dir, case, image)
    return save_like(pred.mask, pred.affine, target, reference=image, before_rename=before_mask)


def predict_cases(
    predictor: Predictor,
    records: Sequence[dict],
    out_dir: str | os.PathLike,
    overwrite: bool = False,
) -> dict:
    """Predict every record into ``out_dir``, with a progress bar on a terminal.

    A case whose mask exists is skipped unless ``overwrite``; a case that fails is logged and the
    others still run. With ``infer.workers`` > 0 (by default, on 2 or more cores) background threads
    load the next case and invert and write the previous one while the network runs on this one:
    the same masks, records and failures as one case after the other, in less time; a case's
    ``total_s`` then includes waiting for its turn and ``peak_rss_mb`` the neighbours' steps. Per-case timings (:data:`TIMING_COLUMNS`) are merged into ``out_dir/timings.csv``
    and the scans behind the masks into ``out_dir/inputs.csv`` (for ``pancreas-seg report``); each
    case's rows are on disk (its record) before its mask is, and records a killed run left are
    merged by the next. Under ``torchrun`` each rank predicts every N-th case and writes its records,
    rank 0 merges them, and every rank returns the whole job's outcome.

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
            todo = []
            for rec in records:
                target = output_path(out_dir, str(rec["case_id"]), rec["image"])
                if target.exists() and not overwrite:
                    skipped.append(target)
                else:
                    todo.append(rec)
            bar = tqdm(total=len(todo), desc="infer", unit="case", disable=not tty)
            for rec, row in zip(todo, _predict_all(predictor, todo, out_dir, failed)):
                bar.update()
                if row is not None:
                    rows.append(row)
                    written.append(output_path(out_dir, str(rec["case_id"]), rec["image"]))
            bar.close()
    finally:
        if dist.is_distributed():  # every rank's outcome, in input order; rank 0 writes the tables
            written, skipped, failed, rows = _gather_ranks(
                all_records, out_dir, written, skipped, failed, rows
            )
        if dist.is_main():  # this run's records and any a killed run left
            merge_records(out_dir, rows, [str(r["case_id"]) for r in all_records])
    failed = {
        str(r["case_id"]): failed[str(r["case_id"])] for r in all_records if str(r["case_id"]) in failed
    }
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


def _predict_all(predictor: Predictor, records: Sequence[dict], out_dir: Path, failed: dict) -> Iterator:
    """Each record's :func:`_predict_one` result, in order; with ``infer.workers`` > 0 the next case
    loads and the previous one is inverted and written while the network runs on this one
    (:mod:`pipeline.inference.overlap`), with the same steps, outputs and failure handling."""
    workers = resolve_workers(predictor.cfg.infer.workers)
    if workers == 0 or len(records) < 2:
        for rec in records:
            yield _predict_one(predictor, rec, out_dir, failed)
        return

    def load(rec: dict) -> tuple[float, Pending] | None:
        start = time.perf_counter()
        pending = _attempt(rec, failed, predictor.prepare, rec)
        return None if pending is None else (start, pending)

    def run(rec: dict, loaded: tuple[float, Pending]) -> tuple[float, Pending] | None:
        reset_peak_rss()  # the peak from here to its record: this case's network and its neighbours' steps
        pending = _attempt(rec, failed, predictor.run_network, loaded[1])
        return None if pending is None else (loaded[0], pending)

    def finish(rec: dict, ran: tuple[float, Pending] | None) -> dict | None:
        pred = None if ran is None else _attempt(rec, failed, predictor.finish, ran[1])
        return None if pred is None else _save_case(predictor, rec, pred, out_dir, failed, ran[0])

    yield from overlapped(records, load, run, finish, workers)


def _attempt(rec: dict, failed: dict, step: Callable, *args: object) -> object | None:
    """``step(*args)``, or None with the case's error in ``failed`` (one odd scan must not stop a batch)."""
    case = str(rec["case_id"])
    try:
        return step(*args)
    except PipelineError as exc:
        failed[case] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - one odd scan must not stop a batch
        failed[case] = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        log.debug("%s: traceback", case, exc_info=True)
    log.error("%s: failed: %s", case, failed[case])
    return None


def _predict_one(predictor: Predictor, rec: dict, out_dir: Path, failed: dict) -> dict | None:
    """Predict and save one case; returns its record (:func:`~pipeline.inference.records.case_record`).
    A failure goes into ``failed`` and returns None.

    Raises:
        OutputError: an output cannot be written (full disk): the batch stops.
    """
    reset_peak_rss()
    start = time.perf_counter()
    pred = _attempt(rec, failed, predictor.predict, rec)
    return None if pred is None else _save_case(predictor, rec, pred, out_dir, failed, start)


def _save_case(
    predictor: Predictor, rec: dict, pred: Prediction, out_dir: Path, failed: dict, start: float
) -> dict | None:
    """Measure and save a predicted case (its record just before its mask); returns the record, or
    None with the error in ``failed``.

    Raises:
        OutputError: an output cannot be written (full disk): the batch stops.
    """
    case = str(rec["case_id"])
    record: dict = {}
    if predictor.cfg.infer.statistics:  # while the scan is in memory; a failure here fails the case
        t_stats = time.perf_counter()
        try:
            record["statistics"] = case_statistics(pred, rec, predictor.cfg)
        except PipelineError as exc:
            failed[case] = f"{type(exc).__name__}: {exc}"
            log.error("%s: failed: %s", case, failed[case])
            return None
        pred.timings["statistics_s"] = (
            time.perf_counter() - t_stats + pred.extras.get("qc", {}).get("qc_s", 0.0)
        )
    pred.extras.pop("image", None)  # the scan's memory back before the files are written
    t_save = time.perf_counter()

    def write_case_record() -> None:  # on disk before the mask: a kill can lose no finished case's rows
        now = time.perf_counter()
        t = {**pred.timings, "save_s": now - t_save, "total_s": now - start, "peak_rss_mb": peak_rss_mb()}
        record.update(case_record(rec, output_path(out_dir, case, rec["image"]), t, record.get("statistics")))
        write_record(out_dir, record)

    try:
        target = _save_outputs(pred, rec, out_dir, predictor, write_case_record)
    except OutputError:  # the folder was writable a moment ago: disk full, removed, ...
        raise
    except PipelineError as exc:  # e.g. a DICOM SEG that cannot reference its series
        failed[case] = f"{type(exc).__name__}: {exc}"
        log.error("%s: failed: %s", case, failed[case])
        return None
    except OSError as exc:  # not a write (those raise OutputError): e.g. the series vanished
        raise PipelineError(
            f"{out_dir}: cannot write the outputs of {case} ({exc.strerror or exc})"
        ) from None
    log.info("%s: %s (%.1f s)", case, target, record["timings"]["total_s"])
    return record


def _tty() -> bool:
    import sys

    return sys.stderr.isatty()
