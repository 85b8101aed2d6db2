"""Labels: a record's ``label_map`` turns file label values into the classes 0..K, and nnU-Net-style
regions convert to and from label maps."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from pipeline.core.errors import ImageError
from pipeline.core.label_map import parse_label_map

__all__ = [
    "MapLabelsd",
    "check_label_values",
    "labels_to_regions",
    "parse_label_map",
    "regions_to_labels",
    "unique_values",
]


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of ``t`` in memory order (no copy for C- or Fortran-ordered tensors)."""
    if t.is_contiguous():
        return t.view(-1)
    rev = t.permute(*reversed(range(t.ndim)))
    return rev.view(-1) if rev.is_contiguous() else t.reshape(-1)


def unique_values(t: torch.Tensor) -> list[float]:
    """Sorted distinct values of a label tensor; a bincount for small non-negative integers (fast)."""
    flat = _flat(t.as_tensor() if isinstance(t, MetaTensor) else t)
    if flat.numel() == 0:
        return []
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    if flat.dtype.is_floating_point and bool(torch.equal(flat, flat.round())):
        lo, hi = (float(v) for v in torch.aminmax(flat))
        if lo >= 0 and hi < 65536:
            flat = flat.to(torch.int32)
    if not flat.dtype.is_floating_point:
        lo, hi = (int(v) for v in torch.aminmax(flat))
        if lo >= 0 and hi < 65536:
            counts = torch.bincount(flat, minlength=hi + 1)
            return [float(v) for v in torch.nonzero(counts).reshape(-1).tolist()]
    return [float(v) for v in torch.unique(flat).tolist()]


def check_label_values(
    label: torch.Tensor, text: str, name: str, class_names: list[str] | None = None
) -> tuple[dict[int, int], list[float]]:
    """Check that ``label`` holds only 0 and the values its label map names.

    Args:
        label: the label volume as stored.
        text: the manifest's ``label_map`` entry (empty: the label must be {0, 1}).
        name: how to name the file in errors.
        class_names: the foreground classes (``data.class_names``): the map's classes must be
            0..len; None: any class, names from :data:`pipeline.core.label_map.DEFAULT_CLASS_NAMES`.

    Returns:
        (the parsed map, the label's distinct values).

    Raises:
        ImageError: other values occur (the message lists them and says how to map them).
        ManifestError: the label map is malformed.
    """
    classes = None if class_names is None else len(class_names) + 1
    mapping = parse_label_map(text, where=name, classes=classes, names=class_names)
    values = unique_values(label)
    unexpected = [v for v in values if v != 0 and (not float(v).is_integer() or int(v) not in mapping)]
    if unexpected:
        shown = ", ".join(f"{v:g}" for v in unexpected[:10]) + (" ..." if len(unexpected) > 10 else "")
        allowed = ", ".join(str(v) for v in sorted({0, *mapping}))
        raise ImageError(
            f"{name}: label has unexpected values {shown} (allowed: {allowed}; "
            f"label_map {text!r}; set label_map in the manifest, e.g. '1:1,2:1')"
        )
    return mapping, values


class MapLabelsd(MapTransform):
    """Apply the record's label map, then check that no other values occur; output uint8 classes.

    The map entry is removed from the record (MONAI's ``Spacingd`` treats any ``label_*`` entry as
    the label's meta dict).

    Args:
        keys: the label keys.
        map_key: the record key holding the label map string (absent or empty: labels must be {0, 1}).
        class_names: the foreground classes, class 1 first (``data.class_names``); the map's
            classes must lie in 0..len(class_names). None accepts any class (evaluation of masks
            that are already label maps).

    Raises:
        ImageError: the label holds values that the map does not name (the message lists them).
        ManifestError: the label map is malformed.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        map_key: str = "label_map",
        allow_missing_keys: bool = True,
        class_names: list[str] | None = None,
    ):
        super().__init__(keys, allow_missing_keys)
        self.map_key = map_key
        self.class_names = None if class_names is None else [str(n) for n in class_names]

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        # popped: MONAI's Spacingd would take a "label_map" entry for the label's meta dict
        text = str(d.pop(self.map_key, None) or "")
        for key in self.key_iterator(d):
            label = d[key]
            name = str(getattr(label, "meta", {}).get("filename_or_obj", key))
            mapping, values = check_label_values(label, text, name, self.class_names)
            d[key] = self._apply(label, mapping, values)
        return d

    @staticmethod
    def _apply(label: torch.Tensor, mapping: dict[int, int], values: list[float]) -> torch.Tensor:
        raw = label.as_tensor() if isinstance(label, MetaTensor) else label
        if set(values) <= {0.0, 1.0} and mapping.get(1, 1) == 1:
            out = raw.to(torch.uint8)  # common case: already binary
        else:
            lut = np.zeros(int(max(values)) + 1 if values else 1, dtype=np.uint8)
            for src, dst in mapping.items():
                if 0 <= src < len(lut):
                    lut[src] = dst
            out = torch.from_numpy(lut)[raw.to(torch.int64)]
        if isinstance(label, MetaTensor):
            out = MetaTensor(out, meta=dict(label.meta), applied_operations=list(label.applied_operations))
        return out


def labels_to_regions(label: torch.Tensor, regions: list[list[int]]) -> torch.Tensor:
    """One-hot regions from a label map: channel ``i`` is 1 where the label is in ``regions[i]``.

    Args:
        label: class map ``(B, 1, *S)`` (any dtype holding whole numbers).
        regions: e.g. ``[[1, 2], [2]]`` (whole pancreas, tumour).

    Returns:
        float tensor ``(B, len(regions), *S)`` of 0/1, on ``label``'s device.
    """
    lab = label.round().long()
    return torch.cat([torch.isin(lab, torch.tensor(r, device=lab.device)) for r in regions], dim=1).float()


def regions_to_labels(on: torch.Tensor) -> torch.Tensor:
    """A label map from per-region decisions, as nnU-Net does: label ``i + 1`` wherever region ``i``
    is on, later regions overwriting earlier ones (so with ``[[1, 2], [2]]`` tumour wins inside the
    pancreas, and a tumour voxel outside the whole-pancreas region is still tumour).

    Args:
        on: ``(R, *S)`` region decisions, channel first (e.g. ``sigmoid(logits) > 0.5``).

    Returns:
        uint8 labels ``(*S)`` with values 0..R.
    """
    out = torch.zeros(on.shape[1:], dtype=torch.uint8, device=on.device)
    for i in range(on.shape[0]):
        out[on[i].bool()] = i + 1
    return out
