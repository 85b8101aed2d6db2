"""Patch sampling from label indices cached with the volume.

MONAI's ``RandCropByPosNegLabeld`` and ``RandCropByLabelClassesd`` search the whole label for its
foreground and background voxels on every call: on a 205x205x250 volume that is a pass over 10 M
voxels and an array of 8 bytes per background voxel, each time a worker hands out a volume. Both take
pre-computed indices instead; MONAI's ``FgBgToIndicesd`` / ``ClassesToIndicesd`` would cache them,
but the background indices then cost 8 bytes per voxel of every cached volume, twice the image.

Here :class:`ForegroundIndicesd` (deterministic, so it is cached with the volume) keeps only the
foreground indices of each class, as int32; the samplers rebuild the background as
:class:`BackgroundIndices`, the complement, whose ``k``-th element is computed on demand. MONAI's own
draw code then runs on the same index sequences it would have built itself: the same seed gives the
same patches, bit for bit, for the float32 labels of the training chain. (MONAI's own search takes
every voxel for background when the label is uint8: ``torch.any`` keeps uint8 and ``~`` is then a
bitwise not. Here the background is the true complement whatever the dtype.)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandCropByLabelClassesd, RandCropByPosNegLabeld

__all__ = [
    "BackgroundIndices",
    "ForegroundIndicesd",
    "RandClassesCropFromIndicesd",
    "RandPosNegCropFromIndicesd",
]

_FG, _BG, _ALL = "_fg_indices", "_bg_indices", "_class_indices"  # handed to MONAI within one call


class BackgroundIndices:
    """The sorted flat indices of the voxels not in ``foreground``, without storing them.

    The ``k``-th background voxel is ``k`` plus the number of foreground voxels before it; that
    number is a binary search in ``foreground[j] - j`` (the background voxels before each
    foreground voxel). Not a ``Sequence`` on purpose: MONAI would turn one into an array.

    Args:
        foreground: sorted, distinct flat indices (a 1-D integer tensor).
        size: the number of voxels.
    """

    def __init__(self, foreground: torch.Tensor, size: int):
        fg = torch.as_tensor(foreground, dtype=torch.int64).reshape(-1)
        self._before = fg - torch.arange(fg.numel(), dtype=torch.int64)
        self._len = int(size) - fg.numel()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, k) -> int:
        k = int(k)
        if not 0 <= k < self._len:
            raise IndexError(f"background index {k} out of range 0..{self._len - 1}")
        return k + int(torch.searchsorted(self._before, torch.tensor(k), right=True))


class ForegroundIndicesd(MapTransform):
    """Store the flat indices of each foreground class of ``keys`` (the label) under ``indices_key``.

    Deterministic, so ``make_dataset`` caches them with the volume: per class 1..``num_classes`` an
    int32 tensor (int64 beyond 2**31 voxels) of the voxels of that class, in the order MONAI's
    samplers flatten a volume. Memory: 4 bytes per foreground voxel. The label holds 0..num_classes
    (``MapLabelsd`` checks it), so the union of the classes is MONAI's foreground, ``label != 0``.
    """

    def __init__(self, keys: KeysCollection, indices_key: str, num_classes: int):
        super().__init__(keys)
        self.indices_key = indices_key
        self.num_classes = int(num_classes)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key].as_tensor() if isinstance(d[key], MetaTensor) else torch.as_tensor(d[key])
            flat = label[0].flatten()
            dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
            d[self.indices_key] = [
                torch.nonzero(flat == c).flatten().to(dtype) for c in range(1, self.num_classes + 1)
            ]
        return d


def _copies(patches: list[dict], keys) -> list[dict]:
    """The patches as copies: MONAI's crops are views of the volume, which the memory cache hands
    out without copying it (``make_dataset``); a later in-place change must not reach the cache."""
    for p in patches:
        for key in keys:
            if key in p:
                p[key] = p[key].clone()
    return patches


def _spatial_size(label) -> int:
    shape = label.peek_pending_shape() if isinstance(label, MetaTensor) else label.shape[1:]
    return int(np.prod(shape))


def _foreground(classes: list[torch.Tensor]) -> torch.Tensor:
    """All foreground voxels, sorted (the classes are disjoint)."""
    return classes[0] if len(classes) == 1 else torch.sort(torch.cat(classes)).values


class RandPosNegCropFromIndicesd(RandCropByPosNegLabeld):
    """``RandCropByPosNegLabeld`` that takes the foreground from :class:`ForegroundIndicesd`'s key
    ``indices_key`` and the background as its complement; without that key it searches the label
    itself, as MONAI's. The patches are copies, not views of the volume."""

    def __init__(self, keys: KeysCollection, label_key: str, indices_key: str, **kwargs):
        super().__init__(keys, label_key=label_key, fg_indices_key=_FG, bg_indices_key=_BG, **kwargs)
        self.indices_key = indices_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> list[dict]:
        d = dict(data)
        classes = d.pop(self.indices_key, None)
        if classes is not None:
            fg = _foreground(classes)
            d[_FG], d[_BG] = fg, BackgroundIndices(fg, _spatial_size(d[self.label_key]))
        return _copies(super().__call__(d, lazy=lazy), self.keys)


class RandClassesCropFromIndicesd(RandCropByLabelClassesd):
    """``RandCropByLabelClassesd`` that takes each class from :class:`ForegroundIndicesd`'s key
    ``indices_key`` and the background (class 0) as the complement of their union; without that
    key it searches the label itself, as MONAI's. The patches are copies, not views of the volume."""

    def __init__(self, keys: KeysCollection, label_key: str, indices_key: str, **kwargs):
        super().__init__(keys, label_key=label_key, indices_key=_ALL, **kwargs)
        self.cached_key = indices_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> list[dict]:
        d = dict(data)
        classes = d.pop(self.cached_key, None)
        if classes is not None:
            bg = BackgroundIndices(_foreground(classes), _spatial_size(d[self.label_key]))
            d[_ALL] = [bg, *classes]
        return _copies(super().__call__(d, lazy=lazy), self.keys)
