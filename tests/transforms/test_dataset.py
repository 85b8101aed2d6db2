"""Caching: the deterministic steps run once per case; errors come out as ImageError."""

from __future__ import annotations

import copy

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


def _paper_like(cfg):
    aug = cfg.data.augment
    aug.rotate_prob = aug.scale_prob = aug.translate_prob = aug.intensity_prob = aug.noise_prob = 1.0
    aug.scale_mode, aug.translate_frac, aug.noise_std = "in_plane", [0.1, 0.1, 0.0], 0.1


@pytest.mark.parametrize("recipe", ["default", "every step"])
def test_augmentation_leaves_the_memory_cache_untouched(case, cfg, recipe):
    """The memory cache hands out its volumes without a copy: no random step may write into them."""
    if recipe != "default":
        _paper_like(cfg)
    cfg.data.cache, cfg.data.samples_per_volume = "memory", 3
    ds = make_dataset([case], build_train_transforms(cfg), cfg)
    before = copy.deepcopy(ds._cache[0])
    for _ in range(4):
        patches = ds[0]
        for p in patches:  # what a caller may do to its batch
            p["image"] += 1.0
            p["label"].zero_()
    after = ds._cache[0]
    assert sorted(after) == sorted(before)
    for key in ("image", "label"):
        assert (
            torch.equal(after[key], before[key])
            and after[key].applied_operations == before[key].applied_operations
        )
    assert all(torch.equal(a, b) for a, b in zip(after["label_indices"], before["label_indices"]))


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
