"""Label mapping: a record's ``label_map`` turns file label values into the classes {0, 1}."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from pipeline.core.errors import ImageError
from pipeline.core.label_map import parse_label_map

__all__ = ["MapLabelsd", "check_label_values", "parse_label_map", "unique_values"]


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


def check_label_values(label: torch.Tensor, text: str, name: str) -> tuple[dict[int, int], list[float]]:
    """Check that ``label`` holds only 0 and the values its label map names.

    Args:
        label: the label volume as stored.
        text: the manifest's ``label_map`` entry (empty: the label must be {0, 1}).
        name: how to name the file in errors.

    Returns:
        (the parsed map, the label's distinct values).

    Raises:
        ImageError: other values occur (the message lists them and says how to map them).
        ManifestError: the label map is malformed.
    """
    mapping = parse_label_map(text, where=name)
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
    """Apply the record's label map, then check that no other values occur; output uint8 {0, 1}.

    The map entry is removed from the record (MONAI's ``Spacingd`` treats any ``label_*`` entry as
    the label's meta dict).

    Args:
        keys: the label keys.
        map_key: the record key holding the label map string (absent or empty: labels must be {0, 1}).

    Raises:
        ImageError: the label holds values that the map does not name (the message lists them).
        ManifestError: the label map is malformed.
    """

    def __init__(
        self, keys: KeysCollection = "label", map_key: str = "label_map", allow_missing_keys: bool = True
    ):
        super().__init__(keys, allow_missing_keys)
        self.map_key = map_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        # popped: MONAI's Spacingd would take a "label_map" entry for the label's meta dict
        text = str(d.pop(self.map_key, None) or "")
        for key in self.key_iterator(d):
            label = d[key]
            name = str(getattr(label, "meta", {}).get("filename_or_obj", key))
            mapping, values = check_label_values(label, text, name)
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
