"""Typed assignment of plain values (a YAML mapping, ``--set`` strings) into the config dataclasses.

Each value is converted to the type of the field it goes into (``train.epochs=1.5`` is refused, ``3``
becomes ``3.0`` for a float); unknown keys are refused with the keys that exist. The values
themselves are checked afterwards, on the whole config (:mod:`pipeline.core.config_checks`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from pipeline.core.errors import ConfigError

__all__ = ["coerce_value", "assign_values"]


def coerce_value(value: Any, default: Any, key: str) -> Any:
    """Convert ``value`` to the type of ``default`` (the field's default), or raise ConfigError."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("true", "yes", "1", "on"):
                    return True
                if low in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)):
                return bool(value)
            raise ValueError(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            return "" if value is None else str(value)
        if isinstance(default, (list, tuple)):
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, (list, tuple)):
                value = [value]
            if default:
                return [coerce_value(v, default[0], key) for v in value]
            return list(value)
    except (TypeError, ValueError, OverflowError, yaml.YAMLError):
        raise ConfigError(
            f"config key {key}: cannot use {value!r} as {type(default).__name__}", key=key
        ) from None
    return value


_EMPTY_LIST_ELEMENT = {"list[float]": 0.0, "list[int]": 0}  # to coerce into a field whose default is []


def assign_values(obj: Any, values: dict, prefix: str = "") -> None:
    """Set the fields of the dataclass ``obj`` (nested sections recursively) from ``values``.

    Args:
        obj: a config dataclass (``Config`` or one of its sections).
        values: field name to value; a section's value is a mapping.
        prefix: the dotted name of ``obj`` plus ``"."``, for messages.

    Raises:
        ConfigError: a section that is not a mapping, an unknown key, or a value of the wrong type.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"config section {prefix or '<root>'}: expected a mapping, got {values!r}")
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {full} (known: {', '.join(sorted(names))})", key=full)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            assign_values(current, value, f"{full}.")
        else:
            default = current
            if current == []:
                element = _EMPTY_LIST_ELEMENT.get(str(names[key].type))
                default = value if element is None else [element]
            setattr(obj, key, coerce_value(value, default, full))
