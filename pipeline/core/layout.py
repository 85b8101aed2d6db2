"""The run folder's file names, spelled here and nowhere else (the run-folder contract; README.md, "Run folder").

A CV or training run folder (:class:`RunLayout`)::

    <run>/config.yaml                 resolved config + versions + git commit
    <run>/manifest.csv                the cases of the run (absolute paths)
    <run>/fold_<k>/                   one per fold (:class:`FoldLayout`)
        checkpoints/epoch_N.pt        resumable (network, optimizer, scheduler, trainer state)
        checkpoints/best.pt           best validation Dice (network only)
        checkpoints/final.pt          after the last epoch (network only)
        log.csv                       one row per epoch
        tensorboard/                  TensorBoard event files
        predictions/                  held-out masks (an inference output folder, :class:`OutputLayout`)
        metrics.csv                   per-case metrics of the fold
        DONE                          the fold is complete; a re-run skips it
        cv.log                        the fold process's output under ``--parallel-folds``
    <run>/cv_metrics.csv              all cases
    <run>/cv_summary.json             mean/std/median per metric, per fold and overall
    <run>/report.html, report_files/  ``pancreas-seg report``

A model package zip (:class:`PackageLayout`, ``pancreas-seg export``): ``SHA256SUMS.json``,
``config.yaml``, ``labels.json``, ``versions.json``, ``MODEL_CARD.md``, ``fingerprint.json`` (when
the run used one) and ``folds/fold_<k>.pt``. A MONAI bundle folder (:class:`BundleLayout`):
``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt``, ``models/model.ts``,
``docs/README.md``, ``LICENSE``. An ONNX file's preprocessing sidecar: :func:`onnx_sidecar`.

An inference output folder (:class:`OutputLayout`): the masks, ``timings.csv``, ``inputs.csv`` (the
scans behind the masks), ``statistics.csv``/``.json`` (volume, HU, QC), ``longitudinal.csv`` and,
by default, ``evaluate``'s ``metrics.csv`` and ``reference_statistics.csv``.

Only paths are built here; nothing is read or written beyond ``exists``/``glob`` listings.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

__all__ = [
    "RunLayout",
    "FoldLayout",
    "CheckpointLayout",
    "OutputLayout",
    "PackageLayout",
    "BundleLayout",
    "onnx_sidecar",
    "fold_name",
    "fold_number",
    "manifest_in",
    "report_link",
]

_FOLD_PREFIX = "fold_"
_FOLD_RE = re.compile(r"fold_(\d+)")
_EPOCH_RE = re.compile(r"epoch_(\d+)\.pt")
_MANIFEST = "manifest.csv"
_METRICS = "metrics.csv"
_TIMINGS = "timings.csv"
_REPORT_FILES = "report_files"


def fold_name(k: int | str) -> str:
    """The folder name of fold ``k``: ``fold_<k>``."""
    return f"{_FOLD_PREFIX}{k}"


def fold_number(name: str) -> int | None:
    """``k`` of a folder named ``fold_<k>``, or None for any other name."""
    m = _FOLD_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def manifest_in(folder: str | os.PathLike) -> Path:
    """The manifest a folder holds by default (importers, phantoms, a run's cases): ``manifest.csv``."""
    return Path(folder) / _MANIFEST


def report_link(name: str) -> str:
    """The link from ``report.html`` to the figure file ``name`` in ``report_files/`` (relative)."""
    return f"{_REPORT_FILES}/{name}"


@dataclasses.dataclass(frozen=True)
class _Folder:
    """A folder given as text or a path (kept as a :class:`~pathlib.Path`)."""

    dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", Path(self.dir))


@dataclasses.dataclass(frozen=True)
class CheckpointLayout(_Folder):
    """A ``checkpoints`` folder: ``epoch_N.pt`` (resumable), ``best.pt`` and ``final.pt``."""

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    @property
    def final(self) -> Path:
        return self.dir / "final.pt"

    def epoch(self, n: int) -> Path:
        """The resumable checkpoint written after epoch ``n``."""
        return self.dir / f"epoch_{int(n)}.pt"

    def epochs(self) -> list[tuple[int, Path]]:
        """The ``epoch_N.pt`` files present, as ``(N, path)`` sorted by N (oldest first)."""
        if not self.dir.is_dir():
            return []
        found = ((_EPOCH_RE.fullmatch(p.name), p) for p in self.dir.glob("epoch_*.pt"))
        return sorted((int(m.group(1)), p) for m, p in found if m)


@dataclasses.dataclass(frozen=True)
class OutputLayout(_Folder):
    """An inference output folder: the masks, ``timings.csv``, ``inputs.csv``, ``metrics.csv``, ``.records/``."""

    @property
    def timings(self) -> Path:
        """Per-case seconds per stage and peak memory."""
        return self.dir / _TIMINGS

    @property
    def inputs(self) -> Path:
        """The scan behind every mask (a manifest without labels), for ``pancreas-seg report``."""
        return self.dir / "inputs.csv"

    @property
    def metrics(self) -> Path:
        """Where ``pancreas-seg evaluate`` writes its table unless told otherwise."""
        return self.dir / _METRICS

    @property
    def statistics(self) -> Path:
        """Per case and class: volume, HU, extent, border flag, QC (``pancreas-seg infer``/``statistics``)."""
        return self.dir / "statistics.csv"

    @property
    def statistics_json(self) -> Path:
        """The same rows as :attr:`statistics`, with the units of each column."""
        return self.dir / "statistics.json"

    @property
    def reference_statistics(self) -> Path:
        """``pancreas-seg evaluate``: the statistics of the reference labels."""
        return self.dir / "reference_statistics.csv"

    @property
    def longitudinal(self) -> Path:
        """Per subject and date: volume and HU change between scans (``pancreas-seg statistics``)."""
        return self.dir / "longitudinal.csv"

    @property
    def records(self) -> Path:
        """Hidden: one JSON record per finished case, until merged into the two tables."""
        return self.dir / ".records"

    def record(self, case_id: str) -> Path:
        """The record of one case (its timings row, its scan, its mask's name)."""
        return self.records / f"{case_id}.json"


@dataclasses.dataclass(frozen=True)
class FoldLayout(_Folder):
    """One fold's folder ``fold_<k>`` (or any folder a fold is trained into)."""

    @property
    def k(self) -> int | None:
        """The fold number from the folder's name; None when it is not named ``fold_<k>``."""
        return fold_number(self.dir.name)

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def checkpoint_files(self) -> CheckpointLayout:
        """The names inside :attr:`checkpoints`."""
        return CheckpointLayout(self.checkpoints)

    def epoch_checkpoint(self, n: int) -> Path:
        return self.checkpoint_files.epoch(n)

    def epoch_checkpoints(self) -> list[Path]:
        """The resumable checkpoints present, oldest epoch first."""
        return [p for _, p in self.checkpoint_files.epochs()]

    @property
    def best(self) -> Path:
        return self.checkpoint_files.best

    @property
    def final(self) -> Path:
        return self.checkpoint_files.final

    @property
    def log(self) -> Path:
        """The epoch log (loss, validation Dice, learning rate, seconds)."""
        return self.dir / "log.csv"

    @property
    def tensorboard(self) -> Path:
        return self.dir / "tensorboard"

    @property
    def predictions(self) -> Path:
        """The held-out masks: an inference output folder (:class:`OutputLayout`)."""
        return self.dir / "predictions"

    @property
    def timings(self) -> Path:
        """The held-out predictions' ``timings.csv``."""
        return OutputLayout(self.predictions).timings

    @property
    def metrics(self) -> Path:
        """Per-case metrics of the fold's held-out cases."""
        return self.dir / _METRICS

    @property
    def done(self) -> Path:
        """The marker of a complete fold (its content: best validation Dice and epochs)."""
        return self.dir / "DONE"

    def is_done(self) -> bool:
        """True when the fold is complete (a re-run skips it)."""
        return self.done.exists()

    @property
    def cv_log(self) -> Path:
        """The output of the fold's process under ``--parallel-folds``."""
        return self.dir / "cv.log"

    @property
    def lock(self) -> Path:
        """Held while a process runs the fold."""
        return self.dir / ".lock"


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """A CV or training run folder; :meth:`fold` gives each fold's :class:`FoldLayout`."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        """The resolved config with versions and git commit."""
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        """The cases of the run."""
        return manifest_in(self.root)

    @property
    def cv_metrics(self) -> Path:
        """Every finished fold's per-case metrics in one table."""
        return self.root / "cv_metrics.csv"

    @property
    def cv_summary(self) -> Path:
        return self.root / "cv_summary.json"

    @property
    def report(self) -> Path:
        """``pancreas-seg report``'s page (an inference output folder gets one in the same place)."""
        return self.root / "report.html"

    @property
    def report_files(self) -> Path:
        """The report's figures, linked with :func:`report_link`."""
        return self.root / _REPORT_FILES

    @property
    def cache(self) -> Path:
        """The default ``data.cache_dir`` of disk-cached preprocessing."""
        return self.root / "cache"

    @property
    def mlflow_db(self) -> Path:
        """The default MLflow store (SQLite) when ``train.mlflow_uri`` is empty."""
        return self.root / "mlruns.db"

    @property
    def aggregate_lock(self) -> Path:
        """Held while the folds' metrics are collected into ``cv_metrics.csv``."""
        return self.root / ".aggregate.lock"

    def fold(self, k: int) -> FoldLayout:
        return FoldLayout(self.root / fold_name(int(k)))

    def folds(self) -> list[FoldLayout]:
        """The fold folders present, by fold number (``fold_10`` after ``fold_2``)."""
        if not self.root.is_dir():
            return []
        found = ((fold_number(p.name), p) for p in self.root.glob(f"{_FOLD_PREFIX}*"))
        return [FoldLayout(p) for k, p in sorted((k, p) for k, p in found if k is not None and p.is_dir())]


class PackageLayout:
    """The member names inside a model package zip (``pancreas-seg export``), POSIX paths."""

    hashes = "SHA256SUMS.json"  # SHA-256 and size of every other member
    config = "config.yaml"  # the run's resolved config, as the run wrote it
    labels = "labels.json"  # label values and class names
    versions = "versions.json"  # versions and git commit: of training and of the export
    card = "MODEL_CARD.md"
    fingerprint = "fingerprint.json"  # the dataset fingerprint, when the run used one
    _FOLDS = "folds"

    @classmethod
    def fold(cls, k: int) -> str:
        """The member holding fold ``k``'s network weights."""
        return f"{cls._FOLDS}/{fold_name(int(k))}.pt"

    @classmethod
    def fold_of(cls, member: str) -> int | None:
        """``k`` of a member named like :meth:`fold`, else None."""
        head, _, tail = member.partition("/")
        if head != cls._FOLDS or not tail.endswith(".pt"):
            return None
        return fold_number(tail[: -len(".pt")])

    @classmethod
    def fixed(cls) -> tuple[str, ...]:
        """Every member name other than the folds' (the fingerprint is optional)."""
        return (cls.hashes, cls.config, cls.labels, cls.versions, cls.card, cls.fingerprint)


@dataclasses.dataclass(frozen=True)
class BundleLayout(_Folder):
    """A MONAI bundle folder (``pancreas-seg export --format bundle``), in MONAI's bundle layout."""

    @property
    def configs(self) -> Path:
        return self.dir / "configs"

    @property
    def metadata(self) -> Path:
        return self.configs / "metadata.json"

    @property
    def inference(self) -> Path:
        return self.configs / "inference.json"

    @property
    def models(self) -> Path:
        return self.dir / "models"

    @property
    def weights(self) -> Path:
        """The fold networks' weights (a ``weights_only`` checkpoint; not read by ``inference.json``)."""
        return self.models / "model.pt"

    @property
    def torchscript(self) -> Path:
        """The TorchScript network ``inference.json`` runs."""
        return self.models / "model.ts"

    @property
    def readme(self) -> Path:
        return self.dir / "docs" / "README.md"

    @property
    def license(self) -> Path:
        return self.dir / "LICENSE"

    @staticmethod
    def relative(path: Path, root: Path) -> str:
        """``path`` relative to the bundle folder ``root``, POSIX style (for ``inference.json``)."""
        return Path(path).relative_to(root).as_posix()


def onnx_sidecar(path: str | os.PathLike) -> Path:
    """The preprocessing sidecar of an ONNX file: ``model.onnx`` -> ``model.onnx.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")
