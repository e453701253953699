"""Per-endpoint metrics of remote versions, on the request path's lock-free families (gateway/tally.py).

The `endpoint` label is the base URL the config names: bounded by the config, as every label value is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Gauge

from gateway.metrics import LATENCY_BUCKETS
from gateway.tally import Count, CounterFamily, HistogramFamily, Spread, Tally

# What became of a request meant for an endpoint: answered 2xx, refused by it with a 4xx (the request's fault),
# failed (see ERRORS), or never sent because the endpoint was ejected.
OUTCOMES: Final = ("success", "refused", "failed", "ejected")
# Why a request failed: no connection, no answer in time, the connection dropped mid-request, a 5xx, an answer
# that is not V2.
ERRORS: Final = ("connect", "timeout", "disconnect", "status", "malformed")
COPIES: Final = ("decoded", "failed")  # sampled copies for the side channels: decoded, or undecodable and dropped


@dataclass(frozen=True, slots=True)
class EndpointMetrics:
    """The children one endpoint records into, bound once."""

    outcomes: dict[str, Count]
    errors: dict[str, Count]
    latency: Spread
    retries: Count
    ejections: Count
    fallbacks: Count
    copies: dict[str, Count]


class RemoteMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests = CounterFamily(
            "gateway_remote_requests", "Requests for remote endpoints by outcome (success, refused, failed, ejected).",
            ["endpoint", "outcome"],
        )  # fmt: skip
        self._errors = CounterFamily(
            "gateway_remote_errors",
            "Failed remote requests by kind (connect, timeout, disconnect, status, malformed).",
            ["endpoint", "kind"],
        )
        self._latency = HistogramFamily(
            "gateway_remote_request_duration_seconds", "Round trip of a request to a remote endpoint, retry included.",
            ["endpoint"], LATENCY_BUCKETS,
        )  # fmt: skip
        self._retries = CounterFamily(
            "gateway_remote_retries", "Requests sent again because the first connect failed (never sent before).",
            ["endpoint"],
        )  # fmt: skip
        self._ejections = CounterFamily(
            "gateway_remote_ejections", "Times an endpoint was ejected after failures in a row.", ["endpoint"]
        )
        self._fallbacks = CounterFamily(
            "gateway_remote_fallbacks", "Requests the route's baseline served while their endpoint was ejected.",
            ["endpoint"],
        )  # fmt: skip
        self._copies = CounterFamily(
            "gateway_remote_copies", "Sampled remote requests decoded for drift, the log, shadows and rollouts.",
            ["endpoint", "outcome"],
        )  # fmt: skip
        Tally(
            registry, self._requests, self._errors, self._latency, self._retries, self._ejections, self._fallbacks,
            self._copies,
        )  # fmt: skip
        self._ejected = Gauge(
            "gateway_remote_ejected", "1 while an endpoint is ejected (its requests refused or diverted), else 0.",
            ["endpoint"], registry=registry,
        )  # fmt: skip
        self._ready = Gauge(
            "gateway_remote_ready", "The endpoint's last /v2/health/ready: 1 ready, 0 not or unreachable.",
            ["endpoint"], registry=registry,
        )  # fmt: skip

    def bind(self, endpoint: str, ejected: Callable[[], float], ready: Callable[[], float]) -> EndpointMetrics:
        self._ejected.labels(endpoint).set_function(ejected)
        self._ready.labels(endpoint).set_function(ready)
        return EndpointMetrics(
            outcomes={o: self._requests.labels(endpoint, o) for o in OUTCOMES},
            errors={k: self._errors.labels(endpoint, k) for k in ERRORS},
            latency=self._latency.labels(endpoint),
            retries=self._retries.labels(endpoint),
            ejections=self._ejections.labels(endpoint),
            fallbacks=self._fallbacks.labels(endpoint),
            copies={o: self._copies.labels(endpoint, o) for o in COPIES},
        )

    def forget(self, endpoint: str) -> None:
        """Drop a retired endpoint's series."""
        for outcome in OUTCOMES:
            self._requests.remove(endpoint, outcome)
        for kind in ERRORS:
            self._errors.remove(endpoint, kind)
        for outcome in COPIES:
            self._copies.remove(endpoint, outcome)
        for family in (self._latency, self._retries, self._ejections, self._fallbacks):
            family.remove(endpoint)
        for gauge in (self._ejected, self._ready):
            try:
                gauge.remove(endpoint)
            except KeyError:
                pass
