"""Run folders for the export tests: a config, a manifest, a CV summary and two folds' best checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from models import build_model
from pipeline.core.checkpoint import save_checkpoint
from pipeline.core.config import config_to_dict, save_run_config
from pipeline.core.layout import RunLayout
from tests.conftest import tiny_config

EXPORT_INFER = {"infer__roi_size": "[64,64,32]", "infer__sw_batch_size": 4}


def make_run(root: Path, states: list[dict] | None = None, seed: int = 0, **overrides) -> Path:
    """A run folder with folds 0 and 1 (``states``: their network weights; default random, seeded).

    The checkpoints carry an optimizer state, which an export must leave out.
    """
    run = RunLayout(root)
    run.root.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(**{**EXPORT_INFER, **overrides})
    save_run_config(cfg, run.root)
    for k in (0, 1):
        if states is not None:
            state = states[k]
        else:
            torch.manual_seed(seed + k)
            state = build_model(cfg.model).state_dict()
        run.fold(k).checkpoints.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": asdict(cfg.model),
            "config": config_to_dict(cfg),
            "network": state,
            "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": []},
            "metric": 0.5 + k / 10,
        }
        save_checkpoint(payload, run.fold(k).best)
    run.manifest.write_text(
        "case_id,subject_id,image,label,fold\n"
        "a,s1,/data/nih/images/a.nii.gz,/data/nih/labels/a.nii.gz,0\n"
        "b,s1,/data/nih/images/b.nii.gz,/data/nih/labels/b.nii.gz,0\n"
        "c,s2,/data/msd/images/c.nii.gz,/data/msd/labels/c.nii.gz,1\n"
    )
    summary = {"foreground_mean": {"dice": {"mean": 0.81, "std": 0.05, "median": 0.8, "ci95": [0.7, 0.9]}}}
    run.cv_summary.write_text(json.dumps({**summary, "n_cases": 3}))
    return run.root


@pytest.fixture(scope="module")
def random_run(tmp_path_factory) -> Path:
    """A run folder whose two folds are random (untrained) tiny networks."""
    return make_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, overfit) -> Path:
    """A run folder whose folds are the tiny network trained on the phantom (fold 1 with its output
    layer scaled: two different networks): its masks on real CT are neither empty nor everything."""
    state = overfit["model"].state_dict()
    other = {k: (v * 1.5 if k.startswith("fuse") and v.is_floating_point() else v) for k, v in state.items()}
    return make_run(tmp_path_factory.mktemp("trained") / "run", states=[state, other])
