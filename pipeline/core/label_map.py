"""The manifest's ``label_map`` column and the config's classes (pure Python, no torch).

A label map says which class each label value of a file belongs to, by number or by name:
``"1:1,2:1"`` (tumour merged into pancreas, the paper's binary task), ``"1:pancreas,2:tumour"``
(MSD Task07 as a 3-class problem). Names are looked up in ``data.class_names`` (class 1 first);
without a config, in :data:`DEFAULT_CLASS_NAMES`.
"""

from __future__ import annotations

import re

from pipeline.core.errors import ManifestError

__all__ = [
    "DEFAULT_CLASS_NAMES",
    "check_label_map",
    "class_names",
    "foreground_count",
    "parse_label_map",
]

# Foreground classes by value, as MSD Task07 labels them (pancreas 1, tumour 2).
DEFAULT_CLASS_NAMES = {1: "pancreas", 2: "tumour"}

_PAIR = re.compile(r"(-?\d+)\s*:\s*(-?\d+|[A-Za-z][\w-]*)")


def _pairs(text: str, where: str) -> list[tuple[int, int | str]]:
    """``[(label value, class number or lower-case name), ...]``; syntax, duplicates and signs checked."""
    out: list[tuple[int, int | str]] = []
    seen: set[int] = set()
    for pair in filter(None, (p.strip() for p in text.split(","))):
        m = _PAIR.fullmatch(pair)
        if m is None:
            raise ManifestError(
                f"{where}: label_map {text!r}: {pair!r} is not '<label value>:<class>', "
                "e.g. '1:1,2:1' or '1:pancreas,2:tumour'"
            )
        src, raw = int(m.group(1)), m.group(2)
        if src < 0:
            raise ManifestError(f"{where}: label_map {text!r} names a negative label value {src}")
        if src in seen:
            raise ManifestError(f"{where}: label_map {text!r}: label value {src} is mapped twice")
        seen.add(src)
        dst: int | str = raw.lower() if raw[0].isalpha() else int(raw)
        if isinstance(dst, int) and dst < 0:
            raise ManifestError(
                f"{where}: label_map {text!r} maps {src} to class {dst}; classes must be >= 0"
            )
        out.append((src, dst))
    return out


def check_label_map(text: str, where: str = "label_map") -> None:
    """Check a label map's syntax only (the manifest alone does not know the config's classes).

    Raises:
        ManifestError: a pair is not ``<int>:<int or name>``, a value is mapped twice, or negative.
    """
    _pairs(str(text or "").strip(), where)


def parse_label_map(
    text: str, where: str = "label_map", classes: int | None = 2, names: list[str] | None = None
) -> dict[int, int]:
    """Parse ``"1:1,2:1"`` or ``"1:pancreas,2:tumour"`` into ``{label value: class}``; empty text
    means ``{1: 1}``.

    Label values the map does not name must not occur (value 0 is always background; a name
    ``background`` is class 0).

    Args:
        text: the manifest's label_map entry.
        where: how to name the entry in errors (a file, or a manifest row).
        classes: classes must be below this (background included: 2 for the binary task, 3 with
            tumour); None accepts any class >= 0.
        names: the foreground class names, class 1 first (``data.class_names``); None: the
            names of :data:`DEFAULT_CLASS_NAMES`.

    Returns:
        ``{label value: class number}``.

    Raises:
        ManifestError: a pair is not ``<int>:<int or name>``, a value is mapped twice, a value or
            class is negative, a name is unknown, or a class is out of range.
    """
    text = str(text or "").strip()
    if not text:
        return {1: 1}
    lookup = {"background": 0}
    if names is None:
        lookup |= {n: k for k, n in DEFAULT_CLASS_NAMES.items()}
    else:
        lookup |= {str(n).lower(): k for k, n in enumerate(names, 1)}
    mapping: dict[int, int] = {}
    for src, dst in _pairs(text, where):
        if isinstance(dst, str):
            if dst not in lookup:
                known = ", ".join(lookup)
                raise ManifestError(
                    f"{where}: label_map {text!r} names class {dst!r}, which is not a class "
                    f"(known: {known}; set data.class_names)"
                )
            dst = lookup[dst]
        if classes is not None and dst >= classes:
            allowed = "classes are 0 and 1" if classes == 2 else f"classes are 0 to {classes - 1}"
            raise ManifestError(
                f"{where}: label_map {text!r} maps {src} to class {dst}; {allowed} "
                "(data.class_names sets the classes)"
            )
        mapping[src] = dst
    return mapping


def foreground_count(cfg) -> int:
    """How many foreground classes a config's model predicts: ``len(data.regions)`` with regions
    (one sigmoid output per region, region ``i`` writes label ``i + 1``), else
    ``model.out_channels - 1`` (softmax over background and the classes)."""
    regions = getattr(cfg.data, "regions", None) or []
    return len(regions) if regions else int(cfg.model.out_channels) - 1


def class_names(cfg) -> dict[int, str]:
    """The foreground classes a config's model predicts: ``{class value: name}``.

    Names come from ``cfg.data.class_names`` (a list, class 1 first) when the config has it, else
    from :data:`DEFAULT_CLASS_NAMES`; classes beyond those are named ``class_<k>``. Every table,
    overlay legend and DICOM segment uses these names.

    Args:
        cfg: a :class:`pipeline.core.config.Config` (only ``model.out_channels``,
            ``data.regions`` and ``data.class_names`` are read).
    """
    names = list(getattr(cfg.data, "class_names", None) or [])
    out = {}
    for k in range(1, foreground_count(cfg) + 1):
        out[k] = names[k - 1] if k <= len(names) else DEFAULT_CLASS_NAMES.get(k, f"class_{k}")
    return out
