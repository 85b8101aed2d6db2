"""Training one fold on MONAI's engines: resuming a killed run, and ``train.deterministic``."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch
from ignite.engine import Engine

from pipeline.core.checkpoint import load_checkpoint
from pipeline.data.manifest import case_records, read_manifest
from pipeline.training.handlers import AtomicCheckpointer, EpochReseeder, seed_everything
from pipeline.training.train import train_fold
from tests.conftest import tiny_config


@pytest.fixture
def kernel_flags():
    """Put torch's process-wide determinism settings back as they were after the test."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
    if saved[4] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


def _flags() -> dict:
    return {
        "algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


DETERMINISTIC = {"algorithms": True, "cudnn_deterministic": True, "cudnn_benchmark": False}
FAST = {"algorithms": False, "cudnn_deterministic": False, "cudnn_benchmark": True}


def test_deterministic_picks_the_kernels_and_both_settings_seed_alike(kernel_flags, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seed_everything(3, deterministic=False)
    assert _flags() == FAST
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    fast = torch.rand(4)
    seed_everything(3, deterministic=True)
    assert _flags() == DETERMINISTIC
    # an operation without a deterministic kernel warns instead of stopping a run
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # cuBLAS's reproducible workspace
    assert torch.equal(torch.rand(4), fast)


@pytest.mark.parametrize("deterministic, expected", [(True, DETERMINISTIC), (False, FAST)])
def test_every_epoch_is_reseeded_with_the_chosen_kernels(kernel_flags, deterministic, expected):
    """MONAI's set_determinism, which the reseeder calls, would turn cuDNN's autotuner off again."""
    seen = []
    engine = Engine(lambda e, batch: seen.append((_flags(), torch.rand(1).item())))
    EpochReseeder(5, deterministic=deterministic).attach(engine)
    engine.run([0], max_epochs=2)
    assert [flags for flags, _ in seen] == [expected, expected]
    seed_everything(5 + 1000 * 2, deterministic)  # the second epoch's draws come from (seed, epoch)
    assert seen[1][1] == torch.rand(1).item()


@pytest.mark.slow
def test_deterministic_training_twice_gives_identical_weights(tiny_dataset, tmp_path, kernel_flags):
    records = case_records(read_manifest(tiny_dataset))
    cfg = tiny_config(train__epochs=1, train__deterministic="true")
    first, second = (train_fold(cfg, records, 0, tmp_path / name)["final"] for name in ("a", "b"))
    assert _flags() == DETERMINISTIC
    a, b = load_checkpoint(first)["network"], load_checkpoint(second)["network"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    train_fold(tiny_config(train__epochs=1, train__deterministic="false"), records, 0, tmp_path / "c")
    assert _flags() == FAST  # the config's setting is what training ran with


@pytest.mark.slow
class _Killed(Exception):
    pass


def test_killed_training_resumes_epoch_and_optimizer(tiny_dataset, tmp_path, monkeypatch):
    cfg = tiny_config(train__epochs=3)
    records = case_records(read_manifest(tiny_dataset))
    fold_dir = tmp_path / "fold_0"
    real_save = AtomicCheckpointer._save_epoch

    def save_then_die(self, engine):
        real_save(self, engine)
        if engine.state.epoch == 2:
            raise _Killed()

    monkeypatch.setattr(AtomicCheckpointer, "_save_epoch", save_then_die)
    with pytest.raises(_Killed):
        train_fold(cfg, records, 0, fold_dir)
    monkeypatch.setattr(AtomicCheckpointer, "_save_epoch", real_save)
    at2 = load_checkpoint(fold_dir / "checkpoints" / "epoch_2.pt")
    steps2 = int(at2["optimizer"]["state"][0]["step"])
    assert at2["epoch"] == 2 and at2["trainer"]["iteration"] == steps2

    result = train_fold(cfg, records, 0, fold_dir)
    assert result["epochs"] == 3
    at3 = load_checkpoint(fold_dir / "checkpoints" / "epoch_3.pt")
    per_epoch = steps2 // 2
    assert int(at3["optimizer"]["state"][0]["step"]) == steps2 + per_epoch  # Adam state carried over
    assert list(pd.read_csv(fold_dir / "log.csv")["epoch"]) == [1, 2, 3]

    # A truncated newest checkpoint: resume falls back to the previous one with a warning.
    newest = fold_dir / "checkpoints" / "epoch_3.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    cfg4 = tiny_config(train__epochs=4)
    assert train_fold(cfg4, records, 0, fold_dir)["epochs"] == 4
    assert list(pd.read_csv(fold_dir / "log.csv")["epoch"]) == [1, 2, 3, 4]
