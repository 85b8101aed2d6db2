"""Patch sampling from cached foreground indices: the same patches as MONAI's own search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import RandCropByLabelClassesd, RandCropByPosNegLabeld

from transforms.sampling import (
    BackgroundIndices,
    ForegroundIndicesd,
    RandClassesCropFromIndicesd,
    RandPosNegCropFromIndicesd,
)

KEYS = ["image", "label"]
PATCH = [16, 16, 8]


def _volume(classes: int = 1, shape=(40, 36, 24), seed: int = 0) -> dict:
    """A random image and a float32 label (as CTSpacingd leaves it) with a few blobs per class,
    not contiguous (as Orientationd may leave it)."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.float32)
    for c in range(1, classes + 1):
        for _ in range(3):
            lo = [int(rng.integers(0, s - 6)) for s in shape]
            label[lo[0] : lo[0] + 5, lo[1] : lo[1] + 4, lo[2] : lo[2] + 3] = c
    image = MetaTensor(torch.from_numpy(rng.normal(size=(1, *shape)).astype(np.float32)))
    lab = MetaTensor(
        torch.from_numpy(label[None].copy()).permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    )
    assert not lab.is_contiguous()
    return {"image": image, "label": lab, "case_id": "p01"}


def test_background_indices_are_the_complement():
    mask = np.random.default_rng(1).random(500) < 0.3
    mask[[0, 1, 499]] = [True, False, True]
    fg = torch.from_numpy(np.flatnonzero(mask)).to(torch.int32)
    bg = BackgroundIndices(fg, mask.size)
    assert len(bg) == int((~mask).sum())
    assert [bg[k] for k in range(len(bg))] == np.flatnonzero(~mask).tolist()
    with pytest.raises(IndexError):
        bg[len(bg)]
    assert [BackgroundIndices(torch.zeros(0, dtype=torch.int32), 4)[k] for k in range(4)] == [0, 1, 2, 3]


def test_foreground_indices_are_int32_per_class():
    d = _volume(classes=2)
    out = ForegroundIndicesd("label", indices_key="idx", num_classes=2)(d)
    flat = d["label"][0].flatten()
    for c, idx in enumerate(out["idx"], start=1):
        assert idx.dtype == torch.int32
        assert torch.equal(idx.long(), torch.nonzero(flat == c).flatten())


def _cuts(crop, d: dict, seed: int, draws: int = 6) -> list:
    crop.set_random_state(seed=seed)
    return [
        [(p["image"].clone(), p["label"].clone(), sorted(p)) for p in crop(dict(d))] for _ in range(draws)
    ]


def _same(a: list, b: list) -> bool:
    return all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
        for pa, pb in zip(a, b)
        for x, y in zip(pa, pb)
    )


@pytest.mark.parametrize("seed", [0, 3])
def test_pos_neg_patches_equal_monais_own_search(seed):
    d = _volume()
    kwargs = dict(label_key="label", spatial_size=PATCH, pos=0.5, neg=0.5, num_samples=4)
    cached = ForegroundIndicesd("label", indices_key="idx", num_classes=1)(d)
    ours = _cuts(RandPosNegCropFromIndicesd(KEYS, indices_key="idx", **kwargs), cached, seed)
    monai = _cuts(RandCropByPosNegLabeld(KEYS, **kwargs), d, seed)
    assert _same(ours, monai)
    assert all("idx" not in p for p in ours[0])  # the indices do not travel with the patches


@pytest.mark.parametrize("seed", [0, 3])
def test_class_patches_equal_monais_own_search(seed):
    d = _volume(classes=2)
    kwargs = dict(label_key="label", spatial_size=PATCH, ratios=[1, 1, 1], num_classes=3, num_samples=4)
    cached = ForegroundIndicesd("label", indices_key="idx", num_classes=2)(d)
    ours = _cuts(RandClassesCropFromIndicesd(KEYS, indices_key="idx", **kwargs), cached, seed)
    monai = _cuts(RandCropByLabelClassesd(KEYS, **kwargs), d, seed)
    assert _same(ours, monai)


def test_without_cached_indices_the_sampler_searches_the_label():
    d = _volume()
    kwargs = dict(label_key="label", spatial_size=PATCH, pos=1.0, neg=0.0, num_samples=3)
    ours = _cuts(RandPosNegCropFromIndicesd(KEYS, indices_key="idx", **kwargs), d, 0)
    assert _same(ours, _cuts(RandCropByPosNegLabeld(KEYS, **kwargs), d, 0))
    assert all(float(p[1].sum()) > 0 for cut in ours for p in cut)  # pos=1: every patch holds label
