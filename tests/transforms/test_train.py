"""Training and validation chains: patch size, padding, positive fraction, seeding, intensity modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import ToDeviced
from monai.transforms.transform import RandomizableTrait

from pipeline.core.errors import ImageError
from tests.transforms.conftest import affine_for, phantom, write_nifti
from transforms import (
    augmentation_device,
    build_infer_transforms,
    build_train_transforms,
    build_val_transforms,
)
from transforms.sampling import RandPosNegCropFromIndicesd


def _no_augmentation(cfg):
    aug = cfg.data.augment
    aug.flip_prob = aug.rotate_prob = aug.scale_prob = aug.intensity_prob = 0.0


def test_patches_have_the_patch_size(case, cfg):
    cfg.data.samples_per_volume = 3
    patches = build_train_transforms(cfg)(case)
    assert isinstance(patches, list) and len(patches) == 3
    for p in patches:
        assert tuple(p["image"].shape) == (1, 16, 16, 16) and tuple(p["label"].shape) == (1, 16, 16, 16)
        assert set(torch.unique(p["label"]).tolist()) <= {0.0, 1.0}


def test_small_volume_is_padded(tmp_path, cfg):
    img, lbl = phantom(shape=(12, 10, 6))
    aff = affine_for(spacing=(1.6, 1.6, 2.0))
    rec = {
        "image": write_nifti(tmp_path / "s.nii.gz", img, aff),
        "label": write_nifti(tmp_path / "s_l.nii.gz", lbl, aff),
    }
    cfg.data.patch_size = [24, 20, 16]
    _no_augmentation(cfg)
    val = build_val_transforms(cfg)(rec)
    assert all(s < p for s, p in zip(val["image"].shape[1:], cfg.data.patch_size))
    for p in build_train_transforms(cfg)(rec):
        assert tuple(p["image"].shape) == (1, 24, 20, 16)
        assert float(p["label"].sum()) == float(val["label"].sum())  # whole volume inside the patch
        assert float(p["image"].min()) == 0.0  # padding is air: the bottom of the window


def test_positive_fraction_is_respected(case, cfg):
    _no_augmentation(cfg)
    cfg.data.patch_size = [8, 8, 8]
    cfg.data.samples_per_volume = 120
    for pos in (0.25, 0.75):
        cfg.data.pos_fraction = pos
        patches = build_train_transforms(cfg)(case)
        centred_on_label = np.mean([float(p["label"][0, 4, 4, 4]) for p in patches])
        assert abs(centred_on_label - pos) < 0.15, (pos, centred_on_label)


def test_same_seed_same_patches(case, cfg):
    cfg.data.augment.noise_std = 0.05
    a = build_train_transforms(cfg)(case)
    b = build_train_transforms(cfg)(case)
    for pa, pb in zip(a, b):
        assert torch.equal(pa["image"], pb["image"]) and torch.equal(pa["label"], pb["label"])
    cfg.train.seed = 1
    c = build_train_transforms(cfg)(case)
    assert any(not torch.equal(pa["image"], pc["image"]) for pa, pc in zip(a, c))


def test_augmentation_changes_patches_but_keeps_labels_binary(case, cfg):
    _no_augmentation(cfg)
    plain = build_train_transforms(cfg)(case)
    aug = cfg.data.augment
    aug.flip_prob, aug.rotate_prob, aug.scale_prob, aug.intensity_prob = 0.5, 1.0, 1.0, 1.0
    augmented = build_train_transforms(cfg)(case)
    assert any(not torch.equal(p["image"], q["image"]) for p, q in zip(plain, augmented))
    for q in augmented:
        assert set(torch.unique(q["label"]).tolist()) <= {0.0, 1.0}


def test_val_chain_whole_volume_on_canonical_grid(case, cfg):
    out = build_val_transforms(cfg)(case)
    assert out["image"].shape == out["label"].shape
    np.testing.assert_allclose(out["image"].pixdim.numpy(), [1.6, 1.6, 2.0], atol=1e-6)
    assert out["label"].sum() > 0
    with pytest.raises(ImageError, match="no label path"):
        build_val_transforms(cfg)({"case_id": "x", "image": case["image"]})


def test_intensity_modes(case, cfg):
    cfg.data.intensity = "zscore"
    z = build_infer_transforms(cfg)(case)["image"]
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1.0) < 1e-2
    cfg.data.intensity = "window"
    cfg.data.window_hu = [0.0, 100.0]
    w = build_infer_transforms(cfg)(case)["image"]
    assert float(w.min()) == 0.0 and float(w.max()) == 1.0
    # a reversed window, an unknown mode or axis code: refused when the config is loaded
    # (tests/pipeline/core/test_config.py), before any chain is built


def _paper_like(cfg):
    """Flips and the fused affine (rotation, in-plane zoom, shift) on every patch, as configs/paper.yaml."""
    aug = cfg.data.augment
    aug.rotate_prob = aug.scale_prob = aug.translate_prob = 1.0
    aug.scale_mode, aug.translate_frac = "in_plane", [0.1, 0.1, 0.0]


def test_augmentation_device_is_cuda_only_in_the_training_process(cfg):
    cfg.data.num_workers = 0
    assert augmentation_device(cfg, torch.device("cuda")) == torch.device("cuda")
    assert augmentation_device(cfg, "cpu") is None
    cfg.data.num_workers = 2  # forked workers cannot use CUDA: they augment on the CPU
    assert augmentation_device(cfg, torch.device("cuda")) is None


def test_patches_move_to_the_device_before_the_random_augmentation(case, cfg):
    _paper_like(cfg)
    plain = build_train_transforms(cfg)
    assert not any(isinstance(t, ToDeviced) for t in plain.transforms)
    moved = build_train_transforms(cfg, device="cpu")
    names = [type(t).__name__ for t in moved.transforms]
    at = names.index("ToDeviced")
    assert names[:at] == [type(t).__name__ for t in plain.transforms][:at]  # cached part unchanged
    assert isinstance(moved.transforms[at - 1], RandPosNegCropFromIndicesd)  # just after the patches are cut
    assert all(isinstance(t, RandomizableTrait) for t in moved.transforms[at + 1 :])  # the augmentation
    assert names[at + 1 :] == [type(t).__name__ for t in plain.transforms][at:]
    # on the CPU it is a no-op: the same seeded patches
    for p, q in zip(plain(dict(case)), moved(dict(case))):
        assert torch.equal(p["image"], q["image"]) and torch.equal(p["label"], q["label"])
