"""``pancreas-seg cv --parallel-folds N``: run the folds of one CV as separate processes at once.

Each fold is an ordinary ``pancreas-seg cv --folds k`` process writing into the same run folder,
which :mod:`pipeline.workflows.cv` makes safe (a lock per fold, serialised aggregation). With GPUs, fold
processes are pinned round-robin with ``CUDA_VISIBLE_DEVICES`` (fold job i on GPU i mod #GPUs);
on a CPU the cores are divided among the N running processes (``perf.threads``). At most N run at
a time; each writes its output to ``fold_<k>/cv.log``. Folds finished earlier (``DONE``) are skipped,
so a killed parallel run resumes like a serial one.

The same folder can also be shared by hand, e.g. one ``torchrun`` job per fold on separate nodes::

    torchrun --nproc_per_node=4 -m pipeline.cli cv --manifest M --out RUN --folds 0   # node A
    torchrun --nproc_per_node=4 -m pipeline.cli cv --manifest M --out RUN --folds 1   # node B
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.core import distributed
from pipeline.core.config import Config
from pipeline.core.errors import PipelineError, UsageError
from pipeline.core.layout import RunLayout
from pipeline.data.manifest import read_manifest, write_manifest
from pipeline.workflows.cv import aggregate, prepare_run_dir

__all__ = ["run_parallel_folds", "fold_commands"]

log = logging.getLogger("pancreas_seg")


def fold_commands(
    manifest: str | os.PathLike,
    run_dir: str | os.PathLike,
    folds: Sequence[int],
    config: str | None,
    overrides: Sequence[str],
) -> list[list[str]]:
    """The ``pancreas-seg cv --folds k`` command line of each fold (same config and overrides)."""
    base = [sys.executable, "-m", "pipeline.cli", "cv", "--manifest", str(manifest), "--out", str(run_dir)]
    extra = (["--config", str(config)] if config else []) + [x for o in overrides for x in ("--set", o)]
    return [[*base, "--folds", str(k), *extra] for k in folds]


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA is zero GPUs
        return 0


def run_parallel_folds(
    cfg: Config,
    manifest: str | os.PathLike,
    run_dir: str | os.PathLike,
    folds: Sequence[int],
    jobs: int,
    config: str | None = None,
    overrides: Sequence[str] = (),
) -> dict:
    """Run ``folds`` as up to ``jobs`` concurrent processes, then aggregate the run folder.

    Args:
        cfg: the resolved config (checked and written to the run folder before any fold starts).
        manifest, run_dir: as for ``pancreas-seg cv``.
        folds: the folds to run.
        jobs: how many fold processes run at once (>= 1).
        config, overrides: passed on to each fold process unchanged.

    Returns:
        The CV summary (as :func:`pipeline.workflows.cv.aggregate`).

    Raises:
        UsageError: ``jobs`` < 1, or started under torchrun.
        ConfigError: a run folder made with other settings.
        PipelineError: a fold process failed (its log file is named).
    """
    if jobs < 1:
        raise UsageError(f"--parallel-folds {jobs}: expected a number of processes >= 1")
    if distributed.launched():
        raise UsageError("--parallel-folds starts its own processes; run it without torchrun")
    run_dir = prepare_run_dir(cfg, run_dir)
    layout = RunLayout(run_dir)
    write_manifest(read_manifest(manifest, require_labels=True), layout.manifest)
    todo = [k for k in folds if not layout.fold(k).is_done()]
    gpus = _gpu_count()
    threads = max(1, (os.cpu_count() or 1) // min(jobs, max(1, len(todo))))
    extra = list(overrides)
    if not gpus and not any(o.split("=", 1)[0].strip() == "perf.threads" for o in extra):
        extra.append(f"perf.threads={threads}")
    commands = dict(zip(todo, fold_commands(manifest, run_dir, todo, config, extra)))
    running: dict[int, tuple[subprocess.Popen, Path, object, int]] = {}
    failed: dict[int, Path] = {}
    pending = list(todo)
    log.info("%d fold(s) to run, %d at a time%s", len(todo), jobs, f" on {gpus} GPU(s)" if gpus else "")
    try:
        while pending or running:
            while pending and len(running) < jobs:
                k = pending.pop(0)
                slot = min(set(range(jobs)) - {r[3] for r in running.values()})
                env = dict(os.environ)
                if gpus:  # process slot s uses GPU s mod #GPUs
                    env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
                logfile = layout.fold(k).cv_log
                logfile.parent.mkdir(parents=True, exist_ok=True)
                handle = logfile.open("w")
                proc = subprocess.Popen(commands[k], stdout=handle, stderr=subprocess.STDOUT, env=env)
                running[k] = (proc, logfile, handle, slot)
                log.info("fold %d: started (pid %d), log %s", k, proc.pid, logfile)
            time.sleep(0.5)
            for k, (proc, logfile, handle, _) in list(running.items()):
                if proc.poll() is None:
                    continue
                handle.close()
                del running[k]
                if proc.returncode == 0:
                    log.info("fold %d: done", k)
                else:
                    failed[k] = logfile
                    log.error("fold %d: failed (exit %d), see %s", k, proc.returncode, logfile)
    finally:
        for proc, _, handle, _ in running.values():  # interrupted: stop the children, keep their checkpoints
            proc.terminate()
            proc.wait()
            handle.close()
    if failed:
        k, logfile = next(iter(failed.items()))
        last = _last_line(logfile)
        raise PipelineError(
            f"{logfile}: fold {k} failed{f' ({last})' if last else ''}; "
            f"{len(failed)} of {len(todo)} fold(s) failed; re-run to resume"
        )
    return aggregate(run_dir, cfg.eval)


def _last_line(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:200] if lines else ""
