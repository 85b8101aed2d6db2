from __future__ import annotations

import os
import pickle

import pytest
import torch

from pipeline.core.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from pipeline.core.errors import CheckpointError


def test_round_trip_and_atomic_name(tmp_path):
    path = save_checkpoint({"network": {"w": torch.ones(3)}, "model": {"name": "unet"}}, tmp_path / "a.pt")
    assert path.exists() and not list(tmp_path.glob(".*tmp"))
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["network"]["w"], torch.ones(3)) and ckpt["format"].startswith("pancreas-seg")


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/pancreas_seg_pwned",))


def test_pickle_with_payload_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"network": _Payload()}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused"):
        load_checkpoint(evil)
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"network": _Payload()}))
    with pytest.raises(CheckpointError, match=r"plain\.pt"):
        load_checkpoint(plain)


def test_truncated_newest_falls_back_to_previous(tmp_path, caplog):
    save_checkpoint({"network": {"w": torch.zeros(1)}}, tmp_path / "epoch_2.pt")
    newest = save_checkpoint({"network": {"w": torch.ones(1000)}}, tmp_path / "epoch_4.pt")
    newest.write_bytes(newest.read_bytes()[:200])
    path, ckpt = latest_checkpoint(tmp_path)
    assert path.name == "epoch_2.pt"
    assert "falling back" in caplog.text
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(newest)
