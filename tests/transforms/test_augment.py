"""Spatial augmentation options: translation, in-plane zoom with independent x/y, the fused affine."""

from __future__ import annotations

import math

import pytest
import torch
from monai.transforms import Compose, RandAffined, RandRotated, RandZoomd

from pipeline.core.config import AugmentConfig, Config, load_config
from pipeline.core.config_checks import check_config
from pipeline.core.errors import ConfigError
from transforms.augment import spatial_augmentation, translation_voxels

KEYS = ["image", "label"]


def _box(shape=(48, 48, 32), lo=(16, 16, 8), size=(16, 16, 16)) -> dict:
    """A patch with a labelled box (image = label, so both can be followed)."""
    label = torch.zeros(1, *shape)
    label[:, lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = 1
    return {"image": label.clone(), "label": label}


def _only(**values) -> AugmentConfig:
    """Every spatial step off except the ones given."""
    aug = AugmentConfig(rotate_prob=0.0, scale_prob=0.0, translate_prob=0.0)
    for key, value in values.items():
        setattr(aug, key, value)
    return aug


def _centroid(label: torch.Tensor) -> torch.Tensor:
    idx = torch.nonzero(label[0] > 0.5).float()
    return idx.mean(0)


def _extent(label: torch.Tensor) -> list[int]:
    idx = torch.nonzero(label[0] > 0.5)
    return [int(idx[:, a].max() - idx[:, a].min() + 1) for a in range(3)]


def _applied(step: RandAffined) -> torch.Tensor:
    """The affine the step last applied (MONAI's ``*_params`` attributes may hold another draw)."""
    return torch.as_tensor(step.rand_affine.rand_affine_grid.get_transformation_matrix()).double()


def _run(steps: list, data: dict, seed: int) -> dict:
    chain = Compose(steps)
    chain.set_random_state(seed=seed)
    return chain(dict(data))


def test_defaults_keep_rotation_and_isotropic_zoom():
    steps = spatial_augmentation(AugmentConfig(), KEYS, [48, 48, 32])
    assert [type(s) for s in steps] == [RandRotated, RandZoomd]  # no translation by default
    assert translation_voxels(AugmentConfig(), [48, 48, 32]) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_translation_moves_the_label_by_the_drawn_voxels(seed):
    aug = _only(translate_frac=[0.25, 0.0, 0.0], translate_prob=1.0)
    steps = spatial_augmentation(aug, KEYS, [48, 48, 32])
    assert len(steps) == 1 and isinstance(steps[0], RandAffined)
    data = _box()
    out = _run(steps, data, seed)
    drawn = _applied(steps[0])[:3, 3].tolist()
    assert abs(drawn[0]) <= 0.25 * 48 and drawn[1] == drawn[2] == 0.0
    # MONAI's affine maps output voxels to input voxels: the content moves by -t
    moved = _centroid(out["label"]) - _centroid(data["label"])
    assert moved[0].item() == pytest.approx(-drawn[0], abs=0.5)
    assert moved[1].item() == 0.0 and moved[2].item() == 0.0
    assert float(out["label"].sum()) == float(data["label"].sum())  # the box stays inside the patch


def test_translations_are_drawn_within_the_range():
    aug = _only(translate_frac=[0.1, 0.1, 0.0], translate_prob=1.0)
    shifts = []
    for seed in range(20):
        steps = spatial_augmentation(aug, KEYS, [40, 40, 32])
        _run(steps, _box(shape=(40, 40, 32), lo=(12, 12, 8)), seed)
        shifts.append(_applied(steps[0])[:3, 3].tolist())
    xs = [s[0] for s in shifts]
    assert max(abs(v) for v in xs) <= 4.0 and max(xs) > 0 > min(xs)  # +-10 % of 40 voxels, both ways
    assert all(s[2] == 0.0 for s in shifts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_plane_zoom_draws_x_and_y_independently_and_leaves_z(seed):
    aug = _only(scale_mode="in_plane", scale_range=[0.7, 1.3], scale_prob=1.0)
    steps = spatial_augmentation(aug, KEYS, [48, 48, 32])
    assert len(steps) == 1 and isinstance(steps[0], RandAffined)
    data = _box()
    out = _run(steps, data, seed)
    sx, sy, sz = torch.diagonal(_applied(steps[0]))[:3].tolist()
    assert 0.7 <= sx <= 1.3 and 0.7 <= sy <= 1.3 and sz == 1.0
    assert abs(sx - sy) > 1e-3  # two draws, not one factor
    ex, ey, ez = _extent(out["label"])
    # the factor scales the sampling grid: a 16-voxel box spans 16 / s voxels afterwards
    assert ex == pytest.approx(16 / sx, abs=1.0) and ey == pytest.approx(16 / sy, abs=1.0)
    assert ez == 16


def test_isotropic_zoom_scales_z_too():
    aug = _only(scale_range=[1.25, 1.25], scale_prob=1.0)  # RandZoomd magnifies by its factor
    steps = spatial_augmentation(aug, KEYS, [48, 48, 32])
    out = _run(steps, _box(), 0)
    assert _extent(out["label"]) == [20, 20, 20]


def test_probability_below_one_keeps_separate_steps():
    aug = AugmentConfig(scale_mode="in_plane", translate_frac=[0.1, 0.1, 0.0], rotate_prob=0.5)
    steps = spatial_augmentation(aug, KEYS, [48, 48, 32])
    assert [type(s) for s in steps] == [RandRotated, RandAffined, RandAffined]
    assert [s.prob for s in steps] == [0.5, aug.scale_prob, aug.translate_prob]


def test_the_paper_preset_is_one_affine_on_every_sample():
    cfg = load_config("paper")
    steps = spatial_augmentation(cfg.data.augment, KEYS, cfg.data.patch_size)
    assert len(steps) == 1 and isinstance(steps[0], RandAffined) and steps[0].prob == 1.0
    grid = steps[0].rand_affine.rand_affine_grid
    assert grid.translate_range == pytest.approx((16.0, 16.0, 0.0))  # 10 % of 160 voxels in-plane
    assert [tuple(r) for r in grid.scale_range] == [
        pytest.approx((-0.3, 0.3)),
        pytest.approx((-0.3, 0.3)),
        (0.0, 0.0),
    ]  # MONAI adds 1: x and y in 0.7-1.3, z exactly 1
    assert grid.rotate_range[2] == pytest.approx(0.2618, abs=1e-4)  # 15 degrees


def test_translation_of_the_patch_is_checked():
    cfg = Config()
    cfg.data.augment.translate_frac = [0.1, 0.1]
    with pytest.raises(ConfigError, match="data.augment.translate_frac"):
        check_config(cfg)


def test_the_fast_affine_draws_and_moves_as_monais_float64_one():
    cfg = load_config("paper")
    aug, patch = cfg.data.augment, [48, 48, 32]
    ours = spatial_augmentation(aug, KEYS, patch)
    reference = [
        RandAffined(
            KEYS,
            prob=1.0,
            rotate_range=[0.0, 0.0, math.radians(aug.rotate_deg)],
            scale_range=[(-0.3, 0.3), (-0.3, 0.3), (0.0, 0.0)],
            translate_range=translation_voxels(aug, patch),
            mode=("bilinear", "nearest"),
            padding_mode="border",
        )
    ]
    data = _box()
    data["image"] = data["image"] + torch.linspace(0, 1, 48).view(1, 48, 1, 1)  # a gradient to interpolate
    for seed in range(3):
        a, b = _run(ours, data, seed), _run(reference, data, seed)
        assert torch.equal(_applied(ours[0]), _applied(reference[0]))  # the same draw
        assert a["image"].dtype == b["image"].dtype == torch.float32
        assert torch.allclose(a["image"], b["image"], atol=1e-5)  # float32 instead of float64 resampling
        assert torch.equal(a["label"], b["label"])
