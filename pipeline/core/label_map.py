"""The manifest's ``label_map`` column: which label values are pancreas (pure Python, no torch)."""

from __future__ import annotations

import re

from pipeline.core.errors import ManifestError

__all__ = ["DEFAULT_CLASS_NAMES", "class_names", "parse_label_map"]

# Foreground classes by value, as MSD Task07 labels them (pancreas 1, tumour 2).
DEFAULT_CLASS_NAMES = {1: "pancreas", 2: "tumour"}


def parse_label_map(text: str, where: str = "label_map", classes: int | None = 2) -> dict[int, int]:
    """Parse ``"1:1,2:1"`` (label value : class) into ``{1: 1, 2: 1}``; empty text means ``{1: 1}``.

    Label values the map does not name must not occur (value 0 is always background).

    Args:
        text: the manifest's label_map entry.
        where: how to name the entry in errors (a file, or a manifest row).
        classes: classes must be below this (2: background and pancreas, what the loaders
            produce); None accepts any class >= 0 (the manifest alone does not know the model).

    Raises:
        ManifestError: a pair is not ``<int>:<int>``, a value is mapped twice, a value or class is
            negative, or a class is out of range.
    """
    text = str(text or "").strip()
    if not text:
        return {1: 1}
    mapping: dict[int, int] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(-?\d+)\s*:\s*(-?\d+)", pair)
        if m is None:
            raise ManifestError(
                f"{where}: label_map {text!r}: {pair!r} is not '<label value>:<class>', e.g. '1:1,2:1'"
            )
        src, dst = int(m.group(1)), int(m.group(2))
        if src < 0:
            raise ManifestError(f"{where}: label_map {text!r} names a negative label value {src}")
        if src in mapping:
            raise ManifestError(f"{where}: label_map {text!r}: label value {src} is mapped twice")
        if dst < 0 or (classes is not None and dst >= classes):
            allowed = "classes are 0 and 1" if classes == 2 else "classes must be >= 0"
            raise ManifestError(f"{where}: label_map {text!r} maps {src} to class {dst}; {allowed}")
        mapping[src] = dst
    return mapping


def class_names(cfg) -> dict[int, str]:
    """The foreground classes a config's model predicts: ``{class value: name}``.

    Names come from ``cfg.data.class_names`` (a list, class 1 first) when the config has it, else
    from :data:`DEFAULT_CLASS_NAMES`; classes beyond those are named ``class_<k>``. Every table,
    overlay legend and DICOM segment uses these names.

    Args:
        cfg: a :class:`pipeline.core.config.Config` (only ``model.out_channels`` and
            ``data.class_names`` are read).
    """
    names = list(getattr(cfg.data, "class_names", None) or [])
    out = {}
    for k in range(1, int(cfg.model.out_channels)):
        out[k] = names[k - 1] if k <= len(names) else DEFAULT_CLASS_NAMES.get(k, f"class_{k}")
    return out
