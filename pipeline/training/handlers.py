"""Ignite/MONAI event handlers the training engine needs beyond MONAI's own.

* :class:`EpochCSVLogger` — ``log.csv`` (epoch, loss, validation Dice, learning rate, time) and a
  one-line summary per epoch.
* :class:`AtomicCheckpointer` — ``checkpoints/epoch_N.pt`` every N epochs and ``final.pt``, written
  to a temporary name and renamed (MONAI's ``CheckpointSaver`` writes in place, ``atomic=False``,
  so a kill mid-write leaves a truncated file), and ``best.pt`` by validation Dice.
* :class:`EpochReseeder` — reseeds every random source from (seed, epoch) at each epoch start, so a
  run resumed at an epoch boundary draws the same patches as an uninterrupted one; with
  :func:`seed_everything`, which also picks deterministic or fast kernels (``train.deterministic``).
* :class:`AutocastInferer` — runs any inferer under an autocast context (bf16 on CPU); MONAI's
  engines only autocast on CUDA.
* :func:`quiet_stats_handler` — MONAI's ``StatsHandler`` without its traceback on errors (the CLI
  reports an error in one line; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from pipeline.core.checkpoint import save_checkpoint
from pipeline.core.distributed import mean_across_ranks
from pipeline.core.fileio import atomic_write_text
from pipeline.core.layout import CheckpointLayout

__all__ = [
    "EpochCSVLogger",
    "AtomicCheckpointer",
    "EpochReseeder",
    "seed_everything",
    "AutocastInferer",
    "quiet_stats_handler",
    "LOG_COLUMNS",
]

log = logging.getLogger("pancreas_seg")
LOG_COLUMNS = ("epoch", "loss", "val_dice", "best_val_dice", "lr", "epoch_seconds")


class EpochCSVLogger:
    """Add one row per epoch to a CSV (rewritten atomically) and log a one-line summary.

    Attach after the ``ValidationHandler`` so the epoch's validation Dice is known.

    Args:
        path: the CSV (``fold_<k>/log.csv``).
        optimizer: its first group's learning rate is logged.
        evaluator: the validation engine whose ``val_dice`` is logged.
        write: False on torchrun ranks > 0.
        extra_columns: further evaluator metrics to log after ``epoch_seconds`` (the per-class
            ``val_dice_<class>``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        optimizer: torch.optim.Optimizer,
        evaluator: Engine | None = None,
        write: bool = True,
        extra_columns: list[str] | None = None,
    ):
        self.path = Path(path)
        self.columns = (*LOG_COLUMNS, *(extra_columns or []))
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.write = write  # False on torchrun ranks > 0: they only take part in the loss average
        self._losses: list[float] = []
        self._rows: list[dict] = []  # the log's rows so far (rewritten as a whole each epoch)
        self._t0 = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._trim)
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _trim(self, engine: Engine) -> None:
        """On (re)start keep only rows up to the resumed epoch: later ones belong to a killed run."""
        self._rows = []
        if not self.write or not self.path.exists():
            return
        with self.path.open(newline="") as f:
            self._rows = [
                r
                for r in csv.DictReader(f)
                if r.get("epoch", "").isdigit() and int(r["epoch"]) <= engine.state.epoch
            ]
        self._save()

    def _save(self) -> None:
        """Rewrite the whole log atomically: a kill mid-write leaves the previous epoch's file, never a
        partial row (a few hundred short rows at most)."""
        buffer = io.StringIO()
        w = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(self._rows)
        atomic_write_text(self.path, buffer.getvalue())

    def _start(self, engine: Engine) -> None:
        self._losses, self._t0 = [], time.perf_counter()

    def _iteration(self, engine: Engine) -> None:
        out = engine.state.output
        items = out if isinstance(out, list) else [out]
        for item in items:
            if isinstance(item, dict) and "loss" in item:
                self._losses.append(float(item["loss"]))
                break

    def _epoch(self, engine: Engine) -> None:
        val = best = ""
        extra: dict[str, str] = {}
        ev = self.evaluator
        # Only epochs whose validation ran get a value (the evaluator's epoch is the trainer's then).
        if ev is not None and ev.state.iteration and ev.state.epoch == engine.state.epoch:
            val = ev.state.metrics.get("val_dice", "")
            best = ev.state.best_metric if ev.state.best_metric != -1 else ""
            for col in self.columns[len(LOG_COLUMNS) :]:
                v = ev.state.metrics.get(col, "")
                extra[col] = f"{float(v):.6g}" if v != "" else ""

        loss = mean_across_ranks(sum(self._losses), len(self._losses))  # over all ranks' steps
        if not self.write:
            return
        row = {
            "epoch": engine.state.epoch,
            "loss": f"{loss:.6g}",
            "val_dice": f"{val:.6g}" if val != "" else "",
            "best_val_dice": f"{best:.6g}" if best != "" else "",
            "lr": f"{self.optimizer.param_groups[0]['lr']:.6g}",
            "epoch_seconds": f"{time.perf_counter() - self._t0:.3f}",
            **extra,
        }
        self._rows.append(row)
        self._save()
        val_txt = f"  val dice {float(val):.4f} (best {float(best):.4f})" if val != "" else ""
        val_txt += "".join(f"  {c[len('val_dice_') :]} {float(v):.4f}" for c, v in extra.items() if v != "")
        log.info(
            "epoch %d/%d  loss %.4f%s  lr %s  %.1f s",
            engine.state.epoch,
            engine.state.max_epochs,
            loss,
            val_txt,
            row["lr"],
            float(row["epoch_seconds"]),
        )


class AtomicCheckpointer:
    """Resumable checkpoints every ``interval`` epochs (keep the newest ``keep``), a final one, and best.pt."""

    def __init__(
        self,
        folder: str | os.PathLike,
        objects: dict[str, Any],
        model_config: dict,
        interval: int,
        keep: int = 2,
        evaluator: Engine | None = None,
        run_config: dict | None = None,
    ):
        self.files = CheckpointLayout(Path(folder))  # the names in the fold's checkpoints folder
        self.objects = objects  # name -> object with state_dict()/load_state_dict()
        self.model_config = model_config
        self.interval = max(1, int(interval))
        self.keep = max(2, keep)  # two, so a truncated newest file still leaves one to resume from
        self.evaluator = evaluator
        self.run_config = run_config or {}  # the full config, so a lone checkpoint can be used for inference

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self._save_epoch)
        trainer.add_event_handler(Events.COMPLETED, self._save_final)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._save_best)

    def _payload(self, engine: Engine, full: bool) -> dict:
        payload = {"model": self.model_config, "config": self.run_config, "epoch": engine.state.epoch}
        if self.evaluator is not None:
            payload["best_metric"] = float(self.evaluator.state.best_metric)
            payload["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
        for name, obj in self.objects.items():
            if full or name == "network":
                payload[name] = obj.state_dict()
        return payload

    def _save_epoch(self, engine: Engine) -> None:
        save_checkpoint(self._payload(engine, True), self.files.epoch(engine.state.epoch))
        for _, p in self.files.epochs()[: -self.keep]:
            p.unlink(missing_ok=True)

    def _save_final(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval:  # the last epoch must be resumable too
            self._save_epoch(engine)
        save_checkpoint(self._payload(engine, False), self.files.final)

    def _save_best(self, evaluator: Engine) -> None:
        if evaluator.state.best_metric_epoch == evaluator.state.epoch or not self.files.best.exists():
            trainer_epoch = self.objects["trainer"].state.epoch if "trainer" in self.objects else 0
            payload = {
                "model": self.model_config,
                "config": self.run_config,
                "network": self.objects["network"].state_dict(),
                "metric": float(evaluator.state.metrics.get("val_dice", math.nan)),
                "epoch": trainer_epoch,
            }
            save_checkpoint(payload, self.files.best)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed torch, numpy and ``random`` (``monai.utils.set_determinism``) and choose the kernels.

    ``deterministic=True`` (``train.deterministic``, the default) is what MONAI users get from
    ``set_determinism(seed)`` plus ``torch.use_deterministic_algorithms``: cuDNN deterministic, its
    autotuner off, and PyTorch's deterministic implementations wherever they exist; an operation
    without one (a few CUDA backward kernels) warns instead of stopping the run
    (``warn_only=True``), and cuBLAS gets the workspace setting its reproducibility needs. Two runs
    with the same seed, data and machine then train the same weights (unless such a warning came
    up; ``--debug`` shows warnings). ``deterministic=False`` is
    nnU-Net's choice: seeded the same way, but cuDNN's autotuner picks the fastest kernels, which
    may differ from run to run (cuDNN only matters on CUDA).

    The settings are process-wide; :class:`EpochReseeder` applies them again at every epoch.
    """
    from monai.utils import set_determinism

    if deterministic:
        # read when CUDA creates its cuBLAS handle: the first seeding comes before any model is built
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_determinism(seed=seed)  # also sets cudnn.deterministic=True, cudnn.benchmark=False
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


class EpochReseeder:
    """Reseed torch/numpy/random and the transform chain from ``seed + epoch`` at every epoch start
    (:func:`seed_everything`, keeping ``deterministic``)."""

    def __init__(self, seed: int, transform: Any = None, deterministic: bool = True):
        self.seed = int(seed)
        self.transform = transform
        self.deterministic = bool(deterministic)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        s = self.seed + 1000 * engine.state.epoch
        seed_everything(s, self.deterministic)
        if self.transform is not None and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=s)


class AutocastInferer:
    """Wrap a MONAI inferer so each network call runs under ``context_factory()`` (e.g. CPU bf16 autocast).

    Only the network call is autocast; outputs are cast back to float32 before the inferer stitches
    or the loss sees them. MONAI's engines only autocast on CUDA.
    """

    def __init__(self, inferer: Any, context_factory: Any):
        self.inferer = inferer
        self.context_factory = context_factory

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        def run(x: torch.Tensor, *a: Any, **k: Any) -> Any:
            with self.context_factory():
                out = network(x, *a, **k)
            return [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()

        return self.inferer(inputs, run, *args, **kwargs)


def quiet_stats_handler(**kwargs: Any) -> Any:
    """A ``monai.handlers.StatsHandler`` whose exception hook logs the traceback at DEBUG level only.

    MONAI's hook logs every exception raised in the engine with its traceback at ERROR level,
    which would put a traceback on the terminal above the CLI's one-line message.
    """
    from monai.handlers import StatsHandler

    class _Quiet(StatsHandler):
        def exception_raised(self, _engine: Engine, e: Exception) -> None:
            self.logger.debug("exception in %s", type(_engine).__name__, exc_info=e)
            raise e

    return _Quiet(**kwargs)
