"""Prometheus' HTTP API, the one call the fleet controller makes: an instant query (`/api/v1/query`) at a given time.

Every fault (unreachable, a non-2xx answer, a query Prometheus refuses, an answer that is not an instant vector) is
a PrometheusError naming the expression and the reason; no figure is made up for a query that failed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import httpx

from gateway.errors import GatewayError


class PrometheusError(GatewayError):
    """A query that did not give an answer."""


@dataclass(frozen=True, slots=True)
class Sample:
    labels: Mapping[str, str]
    value: float


class Querier(Protocol):
    def query(self, expr: str, at: float) -> tuple[Sample, ...]: ...


class Prometheus:
    """A synchronous client: the controller queries from a worker thread, one rollout at a time."""

    def __init__(self, url: str, *, timeout: float = 5.0, client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self._client = client if client is not None else httpx.Client(timeout=timeout)

    def query(self, expr: str, at: float) -> tuple[Sample, ...]:
        """The instant vector `expr` evaluates to at unix time `at`."""
        try:
            response = self._client.post(f"{self.url}/api/v1/query", data={"query": expr, "time": f"{at:.3f}"})
        except httpx.HTTPError as exc:
            raise PrometheusError(f"{self.url}: {type(exc).__name__}: {exc} (query: {expr})") from exc
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("status") != "success":
            reason = body.get("error") if isinstance(body, dict) else response.text[:200]
            raise PrometheusError(f"{self.url}: HTTP {response.status_code}: {reason} (query: {expr})")
        data = body.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
            raise PrometheusError(f"{self.url}: not an instant vector (query: {expr})")
        return tuple(_sample(item, expr) for item in data["result"])

    def close(self) -> None:
        self._client.close()


def _sample(item: Any, expr: str) -> Sample:
    try:
        labels = {str(k): str(v) for k, v in item["metric"].items()}
        value = float(item["value"][1])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise PrometheusError(f"malformed sample {item!r} (query: {expr})") from exc
    if math.isnan(value):
        raise PrometheusError(f"NaN for {labels} (query: {expr})")
    return Sample(MappingProxyType(labels), value)
