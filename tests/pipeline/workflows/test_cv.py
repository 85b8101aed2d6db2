"""Training on MONAI engines and the CV runner, on tiny phantoms (a few seconds per fold)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from pipeline.cli import main
from pipeline.core.checkpoint import load_checkpoint, save_checkpoint
from pipeline.core.errors import CheckpointError, ManifestError
from pipeline.data.manifest import case_records, read_manifest
from pipeline.training.handlers import AtomicCheckpointer
from pipeline.training.train import train_fold
from pipeline.workflows.cv import run_cv
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


def test_cv_end_to_end_run_folder_contract(tiny_dataset, tmp_path):
    """train -> predict held-out scans -> evaluate, through the CLI, for 2 folds."""
    run = tmp_path / "run"
    overrides = [
        "data.target_spacing=[3,3,3]",
        "data.patch_size=[32,32,32]",
        "data.num_workers=0",
        "model.channels=[4,8,16,32,64]",
        "train.epochs=2",
        "train.val_interval=1",
        "train.checkpoint_interval=1",
    ]
    argv = ["cv", "--manifest", str(tiny_dataset), "--out", str(run), "--config", "demo"]
    assert main(argv + [x for o in overrides for x in ("--set", o)]) == 0
    assert (run / "config.yaml").exists() and (run / "cv_metrics.csv").exists()
    for k in (0, 1):
        fold = run / f"fold_{k}"
        for name in ("checkpoints/best.pt", "checkpoints/final.pt", "log.csv", "metrics.csv", "DONE"):
            assert (fold / name).exists(), f"fold_{k}/{name} missing"
        assert len(list((fold / "predictions").glob("*.nii.gz"))) == 2
        log = pd.read_csv(fold / "log.csv")
        assert list(log["epoch"]) == [1, 2] and log["val_dice"].notna().all()
    table = pd.read_csv(run / "cv_metrics.csv")
    assert len(table) == 4 and table["dice"].between(0, 1).all()
    summary = json.loads((run / "cv_summary.json").read_text())
    assert set(summary["per_fold"]) == {"0", "1"} and summary["n_cases"] == 4
    assert "dice" in summary["foreground_mean"] and "hd95_mm" in summary["foreground_mean"]

    # Re-running skips both folds (DONE) and leaves their results untouched.
    before = {p: p.stat().st_mtime_ns for p in run.glob("fold_*/metrics.csv")}
    assert main(argv + [x for o in overrides for x in ("--set", o)]) == 0
    assert before == {p: p.stat().st_mtime_ns for p in run.glob("fold_*/metrics.csv")}

    # Evaluating the held-out predictions again gives the same numbers.
    out = tmp_path / "again.csv"
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(run / "fold_0" / "predictions"),
                "--manifest",
                str(tiny_dataset),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    again = pd.read_csv(out).set_index("case_id")["dice"]
    fold0 = pd.read_csv(run / "fold_0" / "metrics.csv").set_index("case_id")["dice"]
    pd.testing.assert_series_equal(again.loc[fold0.index], fold0, check_exact=False, rtol=1e-6)


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


def test_cv_errors(tiny_dataset, tmp_path):
    df = read_manifest(tiny_dataset)
    unlabelled = df.copy()
    unlabelled.loc[0, "label"] = ""
    path = tmp_path / "nolabel.csv"
    unlabelled.drop(columns=["label_map"]).to_csv(path, index=False)
    path.write_text(
        path.read_text()
        .replace("images/", f"{tiny_dataset.parent}/images/")
        .replace("labels/", f"{tiny_dataset.parent}/labels/")
    )
    with pytest.raises(ManifestError, match="label"):
        run_cv(tiny_config(), path, tmp_path / "run1")
    with pytest.raises(ManifestError, match=r"fold\(s\) \[5\] have no cases"):
        run_cv(tiny_config(), tiny_dataset, tmp_path / "run2", folds=[5])


def test_checkpoint_of_another_network_is_refused(tmp_path):
    from models import build_model
    from pipeline.inference.loading import load_network

    cfg = tiny_config()
    net = build_model(cfg.model)
    path = save_checkpoint(
        {"model": {"name": "unet", "channels": [4, 8, 16, 32, 64]}, "network": net.state_dict()},
        tmp_path / "x.pt",
    )
    with pytest.raises(CheckpointError, match="another network"):
        load_network(path, expect=cfg.model)
    path = save_checkpoint(
        {
            "model": {"name": "attention_unet", "channels": [4, 8, 16, 32, 64]},
            "network": {"w": torch.ones(2)},
        },
        tmp_path / "y.pt",
    )
    with pytest.raises(CheckpointError, match="do not fit"):
        load_network(path)
