"""Shared fixtures: a tiny labelled phantom dataset with folds, and a CPU-sized config for it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.core.config import Config, load_config
from tests.tiny_net import make_phantom, overfit_model

REPO = Path(__file__).resolve().parents[1]
# CI clones the repo with shared/ beside it; the real CT files for I/O tests live there.
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_config(**overrides: object) -> Config:
    """A config that trains in seconds on the tiny phantoms (3 mm grid, 32^3 patches, 4-64 channels)."""
    values = {
        "data.target_spacing": "[3.0,3.0,3.0]",
        "data.patch_size": "[32,32,32]",
        "data.samples_per_volume": 2,
        "data.num_workers": 0,
        "data.cache": "memory",
        "model.channels": "[4,8,16,32,64]",
        "train.epochs": 2,
        "train.batch_size": 2,
        "train.val_interval": 1,
        "train.checkpoint_interval": 1,
        "train.lr": 0.003,
        "infer.sw_batch_size": 4,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config("demo", [f"{k}={v}" for k, v in values.items()])


@pytest.fixture(scope="session")
def phantom():
    """A 32^3 patch: a curved tube (label 1) in shaded noise, beside an unlabelled blob as bright."""
    return make_phantom()


@pytest.fixture(scope="session")
def overfit(phantom) -> dict:
    """A tiny attention U-Net trained once on ``phantom`` (model, Dice, steps, seconds)."""
    return overfit_model(phantom)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Four 64x64x32 phantoms (RAS, LPS, oblique, RAS) with a manifest and two folds; returns the manifest."""
    from pipeline.data.manifest import assign_folds, write_manifest
    from pipeline.synthetic.phantom import write_phantoms

    root = tmp_path_factory.mktemp("tiny_phantoms")
    cases = write_phantoms(root, n=4, seed=3, shape=(64, 64, 32))
    df = pd.DataFrame([{k: c[k] for k in ("case_id", "subject_id", "image", "label")} for c in cases])
    return write_manifest(assign_folds(df, 2, seed=0), root / "manifest.csv", root=root)
