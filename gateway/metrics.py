"""Every serving metric the gateway exports, on an injected registry, with label children bound once per version."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.tally import Count, CounterFamily, HistogramFamily, Spread, Tally

# 100 us to 10 s: a tiny model answers in well under a millisecond, a slow one or a queue can take seconds.
LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

# Bounded outcome vocabulary (Triton's failure reasons, in our words).
OUTCOMES: Final = (
    "success", "invalid_request", "model_rejected", "not_found", "unavailable", "rejected", "expired", "unsupported",
    "error",
)  # fmt: skip

UNKNOWN: Final = "_unknown"  # label value for requests that name no served model: bounded, never the raw name


@dataclass(frozen=True, slots=True)
class VersionMetrics:
    """The children one (model, version) records into, bound at load so a request does no label lookup."""

    outcomes: dict[str, Count]
    latency: Spread
    compute: Spread
    success: Count = field(init=False)  # outcomes["success"], the one every served request counts into

    def __post_init__(self) -> None:
        object.__setattr__(self, "success", self.outcomes["success"])


class Metrics:
    """The serving metrics, bound to one registry."""

    def __init__(self, registry: CollectorRegistry, *, build_version: str, runtime_version: str) -> None:
        self.registry = registry
        # The request path's series: lock-free, written on the event loop (see tally.py).
        self.requests = CounterFamily(
            "gateway_requests",
            "Inference requests by served model version and outcome.",
            ["model", "version", "outcome"],
        )
        self.latency = HistogramFamily(
            "gateway_request_duration_seconds", "Inference request time, body received to response encoded.",
            ["model", "version"], LATENCY_BUCKETS,
        )  # fmt: skip
        self.compute = HistogramFamily(
            "gateway_inference_compute_seconds", "Time inside the model runtime per request (per batch when batched).",
            ["model", "version"], LATENCY_BUCKETS,
        )  # fmt: skip
        self.route_requests = CounterFamily(
            "gateway_route_requests", "Routing decisions by route, served version and reason.",
            ["route", "version", "reason"],
        )  # fmt: skip
        Tally(registry, self.requests, self.latency, self.compute, self.route_requests)
        self.inflight = Count()  # requests being served; read at scrape time
        Gauge("gateway_inflight_requests", "Inference requests being served now.", registry=registry).set_function(
            lambda: self.inflight.value
        )
        self.model_ready = Gauge(
            "gateway_model_ready", "1 when a model version is loaded and serving, else 0.",
            ["model", "version"], registry=registry,
        )  # fmt: skip
        self.model_load_failures = Counter(
            "gateway_model_load_failures", "Model versions that failed to load.", ["model", "version"],
            registry=registry,
        )  # fmt: skip
        self.build_info = Gauge(
            "gateway_build_info", "Build and runtime versions; always 1.",
            ["version", "python", "onnxruntime"], registry=registry,
        )  # fmt: skip
        self.config_reloads = Counter(
            "gateway_config_reloads", "Config reload attempts by outcome (applied or rejected).", ["outcome"],
            registry=registry,
        )  # fmt: skip
        self.config_generation = Gauge(
            "gateway_config_generation", "Number of the config generation serving now (1 at start).", registry=registry
        )
        self.config_last_reload = Gauge(
            "gateway_config_last_reload_timestamp_seconds", "Unix time the serving config was applied.",
            registry=registry,
        )  # fmt: skip
        # As Prometheus' own prometheus_config_last_reload_successful: a rejection leaves the previous config serving
        # and this at 0 until a file is applied, so an alert lasts as long as the bad file does.
        self.config_last_reload_successful = Gauge(
            "gateway_config_last_reload_successful", "1 when the last config (re)load was applied, 0 when rejected.",
            registry=registry,
        )  # fmt: skip
        self.route_weight = Gauge(
            "gateway_route_weight_ratio", "Share of a route's unpinned traffic each version is configured to get.",
            ["route", "version"], registry=registry,
        )  # fmt: skip
        self.build_info.labels(build_version, platform.python_version(), runtime_version).set(1)
        self._unknown = self.bind(UNKNOWN, UNKNOWN)

    def bind(self, model: str, version: str) -> VersionMetrics:
        return VersionMetrics(
            outcomes={o: self.requests.labels(model, version, o) for o in OUTCOMES},
            latency=self.latency.labels(model, version),
            compute=self.compute.labels(model, version),
        )

    @property
    def unknown(self) -> VersionMetrics:
        """Where requests that named no served model or version are counted."""
        return self._unknown

    def forget(self, model: str, version: str) -> None:
        """Drop a retired version's series so the exposition stays bounded across many rollouts."""
        for outcome in OUTCOMES:
            _remove(self.requests, model, version, outcome)
        _remove(self.latency, model, version)
        _remove(self.compute, model, version)


def _remove(metric: Counter | Histogram | Gauge | CounterFamily | HistogramFamily, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
