"""Loading networks from checkpoints: a checkpoint of another network or with other weight shapes is refused."""

from __future__ import annotations

import pytest
import torch

from models import build_model
from pipeline.core.checkpoint import save_checkpoint
from pipeline.core.errors import CheckpointError
from pipeline.inference.loading import load_network
from tests.conftest import tiny_config


def test_checkpoint_of_another_network_is_refused(tmp_path):
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
