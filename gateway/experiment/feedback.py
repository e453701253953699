"""The body of `POST /v2/models/{model}/feedback`: one object or a list of them, checked whole before any is used.

    {"id": "req-1", "label": 3}                     a classifier's true class (a list for a multi-row request)
    {"id": "req-2", "value": 12.5}                  a regressor's true value (likewise)
    {"id": "req-3", "reward": 1}                    a business outcome: 1 for a conversion, or any number
    {"id": "req-4", "reward": 1, "version": "canary"}               joined without the gateway's record
    {"id": "req-5", "label": 3, "version": "canary", "prediction": 2}   likewise, for a label or value

`version` may also come from the `x-gateway-route` header the answer carried (`route/version;...`), so feedback can
reach a replica that did not serve the request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.errors import ProtocolError

Kind = Literal["label", "value", "reward"]
KINDS: tuple[Kind, ...] = ("label", "value", "reward")
MAX_ITEMS = 10_000
_KEYS = frozenset({"id", "label", "value", "reward", "version", "prediction"})


@dataclass(frozen=True, slots=True)
class Feedback:
    id: str | None
    kind: Kind
    truth: tuple[Any, ...]  # per row (a reward: one)
    version: str | None = None  # the arm, when the feedback names it (a stateless join)
    prediction: tuple[Any, ...] | None = None  # per row, for a stateless label or value


def route_header_version(header: str | None) -> str | None:
    """The version name in an `x-gateway-route` value (`route/version;version=N;reason=R`), or None."""
    if not header:
        return None
    head = header.split(";", 1)[0]
    _, slash, name = head.rpartition("/")
    return name if slash and name else None


def parse_feedback(body: bytes, *, header_version: str | None = None) -> tuple[list[Feedback], bool]:
    """The feedback items and whether the body was a list; ProtocolError (400) naming the first fault."""
    items, batch = load_feedback(body)
    return [parse_item(item, i, batch, header_version) for i, item in enumerate(items)], batch


def load_feedback(body: bytes) -> tuple[list[Any], bool]:
    """The body's items, unchecked, and whether it was a list (the JSON parse only: C speed, whatever the size)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"feedback body is not valid JSON: {exc}") from exc
    batch = isinstance(data, list)
    items = data if batch else [data]
    if batch and not items:
        raise ProtocolError("feedback list is empty")
    if len(items) > MAX_ITEMS:
        raise ProtocolError(f"feedback list has {len(items)} items; at most {MAX_ITEMS} at once")
    return items, batch


def parse_item(item: object, index: int, batch: bool, header_version: str | None) -> Feedback:
    """One item, checked; ProtocolError naming its index and field."""
    at = f"feedback[{index}]" if batch else "feedback"
    if not isinstance(item, dict):
        raise ProtocolError(f"{at}: must be an object, got {type(item).__name__}")
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise ProtocolError(
            f"{at}.{unknown[0]}: unknown field (allowed: id, label, value, reward, version, prediction)"
        )
    kinds = [kind for kind in KINDS if kind in item]
    if len(kinds) != 1:
        raise ProtocolError(f"{at}: needs exactly one of label, value or reward, got {', '.join(kinds) or 'none'}")
    kind = kinds[0]
    request_id = item.get("id")
    if request_id is not None and (not isinstance(request_id, str) or not request_id):
        raise ProtocolError(f"{at}.id: must be a non-empty string (the request's id), got {request_id!r}")
    version = item.get("version", header_version)
    if version is not None and (not isinstance(version, str) or not version):
        raise ProtocolError(f"{at}.version: must be a version name, got {version!r}")
    truth = _rows(item[kind], f"{at}.{kind}", kind)
    prediction = None
    if "prediction" in item:
        prediction = _rows(item["prediction"], f"{at}.prediction", "label" if kind == "label" else "value")
        if len(prediction) != len(truth):
            raise ProtocolError(f"{at}.prediction: {len(prediction)} rows for {len(truth)} of {kind}")
    if request_id is None and version is None:
        raise ProtocolError(f"{at}.id: is required (or name the version, with the header or the version field)")
    if version is not None and request_id is None and kind != "reward" and prediction is None:
        raise ProtocolError(f"{at}.prediction: a {kind} joined without the request's id needs the prediction it judges")
    return Feedback(request_id, kind, truth, version, prediction)


def _rows(value: object, at: str, kind: Kind) -> tuple[Any, ...]:
    if kind == "reward":
        if not _finite(value):
            raise ProtocolError(f"{at}: must be a finite number, got {value!r}")
        return (float(value),)  # type: ignore[arg-type]
    rows = value if isinstance(value, list) else [value]
    if not rows:
        raise ProtocolError(f"{at}: is empty")
    for row in rows:
        ok = (
            _finite(row)
            if kind == "value"
            else (isinstance(row, str | int) and not isinstance(row, bool))
            or (isinstance(row, float) and row.is_integer())
        )
        if not ok:
            expected = "finite numbers" if kind == "value" else "class labels (strings or integers)"
            raise ProtocolError(f"{at}: must be {expected} (one per row), got {row!r}")
    return tuple(rows)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
