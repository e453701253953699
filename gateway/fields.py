"""Typed reads of one block of the YAML that a feature owns (drift, shadow, rollout): each fault is a ConfigError
naming its exact key path, e.g. `routes.fraud.rollout.steps[2].weight: must be in [0, 100], got 120`.

`config.py` only checks that such a block is JSON-like and freezes it; the feature parses it with these helpers
and hands back a frozen value, so the file format's skeleton does not grow with every feature.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.errors import ConfigError

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def block(data: object, path: str, allowed: Sequence[str], required: Sequence[str] = ()) -> Mapping[str, Any]:
    """A mapping whose keys are all in `allowed` and include `required`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: must be a mapping, got {_kind(data)}")
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in data:
            raise ConfigError(f"{path}.{key}: is required")
    return data


def boolean(data: Mapping[str, Any], key: str, default: bool, path: str) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{path}.{key}: must be true or false, got {value!r}")
    return value


def number(
    data: Mapping[str, Any], key: str, default: float, path: str, *, low: float, high: float, open_low: bool = False
) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{path}.{key}: must be a number, got {value!r}")
    if value > high or value < low or (open_low and value == low):
        bracket = "(" if open_low else "["
        raise ConfigError(f"{path}.{key}: must be in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def optional_number(
    data: Mapping[str, Any],
    key: str,
    default: float | None,
    path: str,
    *,
    low: float,
    high: float,
    open_low: bool = False,
) -> float | None:
    """A number, or None when the key is null (a gate switched off)."""
    if key in data and data[key] is None:
        return None
    if key not in data and default is None:
        return None
    return number(data, key, 0.0 if default is None else default, path, low=low, high=high, open_low=open_low)


def integer(data: Mapping[str, Any], key: str, default: int, path: str, *, low: int, high: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema counts 2.0 as an integer, and so does config.py
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}.{key}: must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        limit = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{path}.{key}: must be {limit}, got {value}")
    return value


def string(data: Mapping[str, Any], key: str, path: str, *, default: str | None = None) -> str | None:
    value = data.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}.{key}: must be a non-empty string, got {value!r}")
    return value


def choice(data: Mapping[str, Any], key: str, default: str, path: str, choices: Sequence[str]) -> str:
    value = data.get(key, default)
    if value not in choices:
        raise ConfigError(f"{path}.{key}: must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def duration(data: Mapping[str, Any], key: str, default: float | None, path: str, *, low: float = 0.0) -> float:
    """Seconds from a number or a string such as `500ms`, `30s`, `5m`, `1h`."""
    if key not in data and default is not None:
        return default
    value = data.get(key)
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is not None:
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds is None:
        raise ConfigError(f"{path}.{key}: must be a duration such as 30s, 5m or 1h (or seconds), got {value!r}")
    if seconds < low:
        raise ConfigError(f"{path}.{key}: must be at least {low:g}s, got {value!r}")
    return seconds


def http_url(data: Mapping[str, Any], key: str, path: str) -> str | None:
    url = data.get(key)
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        raise ConfigError(f"{path}.{key}: must be an http(s) URL, got {url!r}")
    return url


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__
