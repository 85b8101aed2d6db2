"""MLflow tracking on request (optional package), through MONAI's MLFlowHandler."""

from __future__ import annotations

import sys

import pytest
import torch
from ignite.engine import Engine, Events

from pipeline.core.errors import ConfigError
from pipeline.training.tracking import attach_mlflow, mlflow_tracking_uri
from tests.conftest import tiny_config


def _engines():
    """A trainer (loss 1/iteration, an optimizer) and an evaluator that runs each epoch as MONAI's does."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    trainer = Engine(lambda e, b: [{"loss": torch.tensor(1.0 / e.state.iteration)}])
    trainer.optimizer = opt
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metric(e):
        e.state.metrics["val_dice"] = 0.1 * trainer.state.epoch

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(e):  # monai.engines.Evaluator.run(global_epoch)
        evaluator.state.max_epochs, evaluator.state.epoch, evaluator.state.iteration = (
            e.state.epoch,
            e.state.epoch - 1,
            0,
        )
        evaluator.run([0])

    return trainer, evaluator


def test_off_by_default_and_never_imports_mlflow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # importing it would raise
    trainer, evaluator = _engines()
    assert attach_mlflow(trainer, evaluator, tiny_config(), tmp_path, 0) == []


def test_missing_package_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    trainer, evaluator = _engines()
    with pytest.raises(ConfigError, match="train.mlflow: .*pip install mlflow"):
        attach_mlflow(trainer, evaluator, tiny_config(train__mlflow="true"), tmp_path, 0)


def test_tracking_uri_default_and_refused_folders(tmp_path):
    assert (
        mlflow_tracking_uri(tiny_config(), tmp_path / "run")
        == f"sqlite:///{(tmp_path / 'run').resolve()}/mlruns.db"
    )
    assert (
        mlflow_tracking_uri(tiny_config(train__mlflow_uri="http://mlflow:5000"), tmp_path)
        == "http://mlflow:5000"
    )
    for folder in ("mlruns", "file:///tmp/mlruns"):
        with pytest.raises(ConfigError, match="train.mlflow_uri"):
            mlflow_tracking_uri(tiny_config(train__mlflow_uri=folder), tmp_path)


@pytest.mark.slow
def test_fold_is_logged_as_an_mlflow_run(tmp_path):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is optional and not installed")
    pytest.importorskip("sqlalchemy", reason="MLflow's SQLite store needs sqlalchemy")
    trainer, evaluator = _engines()
    run = tmp_path / "exp1"
    assert len(attach_mlflow(trainer, evaluator, tiny_config(train__mlflow="true"), run, 0)) == 2
    trainer.run([0, 1, 2], max_epochs=3)
    client = mlflow.MlflowClient(tracking_uri=mlflow_tracking_uri(tiny_config(), run))
    (found,) = client.search_runs(client.get_experiment_by_name("exp1").experiment_id)
    assert found.info.run_name == "fold_0" and found.info.status == "FINISHED"
    assert found.data.params["train.mlflow"] == "True" and found.data.params["fold"] == "0"
    dice = client.get_metric_history(found.info.run_id, "val_dice")
    assert [(m.step, round(m.value, 6)) for m in dice] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert found.data.metrics["loss"] == pytest.approx(1 / 9) and "lr_group_0" in found.data.metrics
