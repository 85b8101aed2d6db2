"""Experiment tracking besides TensorBoard: MLflow on request, through MONAI's ``MLFlowHandler``.

TensorBoard logging is always on (``fold_<k>/tensorboard``, attached in :mod:`pipeline.training.train`).
With ``train.mlflow: true`` each fold also becomes an MLflow run named ``fold_<k>`` in an
experiment named after the run folder: the training loss and learning rate per iteration, the
validation Dice per epoch and the resolved config as parameters. ``mlflow`` is an optional
dependency (``pip install mlflow``).

Where it goes: ``train.mlflow_uri`` when set (a server ``http://...`` or a database
``sqlite:///...``); else ``sqlite:///<run>/mlruns.db`` with artifacts in ``<run>/mlruns/``. MLflow
3.13+ (and MONAI 1.6's handler) no longer accept the old file store (a plain ``mlruns/``
folder), so the local default is SQLite: ``mlflow ui --backend-store-uri sqlite:///runs/exp1/mlruns.db``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.core.config import Config, config_to_dict
from pipeline.core.errors import ConfigError
from pipeline.core.layout import RunLayout, fold_name, fold_number

__all__ = ["mlflow_tracking_uri", "attach_mlflow"]


def mlflow_tracking_uri(cfg: Config, run_dir: str | os.PathLike) -> str:
    """``train.mlflow_uri``, or ``sqlite:///<run_dir>/mlruns.db`` (absolute) when it is empty.

    A folder or ``file://`` URI (MLflow's removed file store) is refused when the config is loaded.
    """
    uri = cfg.train.mlflow_uri.strip()
    return uri or "sqlite:///" + str(RunLayout(run_dir).mlflow_db.resolve())


def _params(cfg: Config, fold: Any) -> dict[str, str]:
    flat: dict[str, str] = {"fold": str(fold)}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = str(value)

    walk("", config_to_dict(cfg))
    return flat


def attach_mlflow(
    trainer: Any, evaluator: Any, cfg: Config, run_dir: str | os.PathLike, fold: int | str
) -> list:
    """Attach MONAI ``MLFlowHandler``s to a fold's engines when ``cfg.train.mlflow`` is true.

    Call it once per fold after the engines are built, e.g. in :func:`pipeline.training.train.build_engines`.
    A resumed fold continues its unfinished MLflow run (same run name); the run is closed when
    training completes.

    Args:
        trainer: the fold's ``SupervisedTrainer``.
        evaluator: its ``SupervisedEvaluator`` (validation Dice per epoch), or None.
        cfg: the resolved config (``train.mlflow``, ``train.mlflow_uri``; all of it is logged as parameters).
        run_dir: the run folder (the experiment is named after it; the default store lives in it).
        fold: the fold number (or ``"fold_k"``).

    Returns:
        The attached handlers (empty when ``train.mlflow`` is false).

    Raises:
        ConfigError: MLflow asked for but the ``mlflow`` package is not installed, or a folder URI.
    """
    if not cfg.train.mlflow:
        return []
    try:
        import mlflow  # noqa: F401 - only to fail early with a clear message
    except ImportError:
        raise ConfigError(
            "config key train.mlflow: MLflow tracking was asked for but the mlflow package is not installed "
            "(pip install mlflow into this environment, or set train.mlflow=false)"
        ) from None
    from monai.handlers import MLFlowHandler, from_engine

    uri = mlflow_tracking_uri(cfg, run_dir)
    name = str(fold) if fold_number(str(fold)) is not None else fold_name(fold)
    experiment = Path(run_dir).resolve().name or "pancreas-seg"
    common = {"tracking_uri": uri, "experiment_name": experiment, "run_name": name}
    train_handler = MLFlowHandler(
        **common,
        iteration_log=True,
        epoch_log=False,
        output_transform=from_engine(["loss"], first=True),
        tag_name="loss",
        experiment_param=_params(cfg, fold),
        optimizer_param_names="lr",
        close_on_complete=True,
    )
    train_handler.attach(trainer)
    handlers = [train_handler]
    if evaluator is not None:
        val_handler = MLFlowHandler(
            **common, iteration_log=False, epoch_log=True, output_transform=lambda _: None
        )
        val_handler.attach(evaluator)
        handlers.append(val_handler)
    return handlers
