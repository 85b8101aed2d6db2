"""Reading a dataset fingerprint JSON, and copying what the chains use from it into the config.

``pancreas-seg fingerprint`` computes and writes the file (:mod:`pipeline.data.fingerprint`). When
the config is loaded, :func:`resolve_fingerprint` copies the suggested target spacing and the
foreground HU statistics of nnU-Net's CT normalisation into ``data.fingerprint_values`` (and the
spacing into ``data.target_spacing`` when ``data.spacing_from_fingerprint``). The transforms read
only the config, and a run folder's ``config.yaml`` reloads after the file has moved or gone:
values already read from ``data.fingerprint`` (``data.fingerprint_values.source`` names it) are not
read again.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.core.config import DataConfig

__all__ = ["FINGERPRINT_KEYS", "read_fingerprint", "fingerprint_needed", "resolve_fingerprint"]

FINGERPRINT_KEYS = ("version", "spacings", "suggested_target_spacing")  # what every fingerprint has


def read_fingerprint(path: str | os.PathLike) -> dict:
    """Read a fingerprint JSON written by :func:`pipeline.data.fingerprint.write_fingerprint`.

    Raises:
        ConfigError: missing or unreadable file, not JSON, or not a fingerprint.
    """
    p = Path(path)
    try:
        fp = json.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read fingerprint ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise ConfigError(f"{p}: fingerprint is not valid JSON ({msg}{where})") from None
    missing = [k for k in FINGERPRINT_KEYS if not isinstance(fp, dict) or k not in fp]
    if missing:
        raise ConfigError(f"{p}: not a fingerprint (missing {', '.join(missing)})")
    return fp


def fingerprint_needed(data: DataConfig) -> bool:
    """Whether a setting of ``data`` reads the fingerprint (its intensity mode or its spacing)."""
    return data.intensity == "fingerprint" or bool(data.spacing_from_fingerprint)


def _numbers(values: object, n: int) -> list[float] | None:
    """``values`` as ``n`` finite floats, or None."""
    try:
        out = [float(v) for v in values]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _copy_values(data: DataConfig, path: str) -> None:
    """Read ``path`` and copy its spacing and foreground HU statistics into ``data.fingerprint_values``."""
    try:
        fp = read_fingerprint(path)
    except ConfigError as exc:
        raise ConfigError(f"data.fingerprint: {exc}", key="data.fingerprint") from None
    spacing = _numbers(fp.get("suggested_target_spacing"), 3)
    if spacing is None or min(spacing) <= 0:
        raise ConfigError(
            f"data.fingerprint: {path}: suggested_target_spacing {fp.get('suggested_target_spacing')!r} "
            "is not three positive spacings in mm",
            key="data.fingerprint",
        )
    stats = fp.get("foreground_intensity") or {}
    hu = _numbers([stats.get(k) for k in ("percentile_00_5", "percentile_99_5", "mean", "std")], 4)
    values = data.fingerprint_values
    values.source, values.target_spacing = path, spacing
    # a fingerprint of unlabelled cases has no HU statistics: only data.intensity=fingerprint needs them
    values.clip_hu, values.mean_hu, values.std_hu = (hu[:2], hu[2], hu[3]) if hu else ([], 0.0, 0.0)


def resolve_fingerprint(data: DataConfig) -> None:
    """Copy what ``data.intensity: fingerprint`` and ``data.spacing_from_fingerprint`` use from the
    file ``data.fingerprint`` into ``data``, in place.

    The file is read only when one of the two settings needs it and ``data.fingerprint_values`` was
    not already read from that same path (a reloaded run config keeps its values, file or no file).

    Raises:
        ConfigError: ``data.fingerprint`` is empty, or the file is missing, unreadable or not a
            fingerprint, or its suggested spacing is unusable.
    """
    if not fingerprint_needed(data):
        return
    path = str(data.fingerprint).strip()
    if not path:
        why = (
            "data.intensity is 'fingerprint'"
            if data.intensity == "fingerprint"
            else "data.spacing_from_fingerprint is true"
        )
        raise ConfigError(
            f"data.fingerprint: required when {why} (the JSON written by 'pancreas-seg fingerprint')",
            key="data.fingerprint",
        )
    if data.fingerprint_values.source != path or not data.fingerprint_values.target_spacing:
        _copy_values(data, path)
    if data.spacing_from_fingerprint:
        data.target_spacing = [float(v) for v in data.fingerprint_values.target_spacing]
