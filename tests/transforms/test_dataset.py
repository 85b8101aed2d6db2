"""Caching: the deterministic steps run once per case; errors come out as ImageError."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.config import apply_overrides
from pipeline.core.errors import ConfigError, ImageError
from transforms import build_train_transforms, build_val_transforms, make_dataset
from transforms.io import LoadCTd


@pytest.fixture
def count_loads(monkeypatch):
    calls = []
    original = LoadCTd.__call__

    def counting(self, data):
        calls.append(data.get("case_id"))
        return original(self, data)

    monkeypatch.setattr(LoadCTd, "__call__", counting)
    return calls


def test_disk_cache_loads_once(case, cfg, tmp_path, count_loads):
    cfg.data.cache = "disk"
    cache = tmp_path / "cache"
    first = make_dataset([case], build_train_transforms(cfg), cfg, cache_dir=cache)
    a = first[0]
    assert count_loads == ["p01"] and len(list(cache.glob("*.pt"))) == 1
    # a new dataset (e.g. the next run) reads the cache instead of loading the scan again
    second = make_dataset([case], build_train_transforms(cfg), cfg, cache_dir=cache)
    b = second[0]
    assert count_loads == ["p01"]
    assert all(torch.equal(p["image"], q["image"]) for p, q in zip(a, b))  # same seed, same patches
    # a changed geometry must not reuse the cached volume
    cfg.data.target_spacing = [2.0, 2.0, 2.0]
    make_dataset([case], build_train_transforms(cfg), cfg, cache_dir=cache)[0]
    assert count_loads == ["p01", "p01"] and len(list(cache.glob("*.pt"))) == 2


def test_memory_cache_and_none(case, cfg, count_loads):
    cfg.data.cache = "memory"
    ds = make_dataset([case], build_val_transforms(cfg), cfg)
    for _ in range(3):
        assert ds[0]["image"].ndim == 4
    assert count_loads == ["p01"]
    cfg.data.cache = "none"
    ds = make_dataset([case], build_val_transforms(cfg), cfg)
    ds[0], ds[0]
    assert count_loads == ["p01"] * 3


def test_dataset_errors(case, cfg, tmp_path):
    cfg.data.cache = "none"
    bad = {**case, "image": str(tmp_path / "missing.nii.gz")}
    with pytest.raises(ImageError, match="missing.nii.gz: file not found"):
        make_dataset([bad], build_val_transforms(cfg), cfg)[0]
    cfg.data.cache = "disk"
    with pytest.raises(ConfigError, match="data.cache_dir"):
        make_dataset([case], build_val_transforms(cfg), cfg)
    with pytest.raises(ConfigError, match=r"data\.cache='ram' is not allowed"):
        apply_overrides(cfg, ["data.cache=ram"])  # before any dataset is made
