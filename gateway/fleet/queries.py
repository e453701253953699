"""The PromQL a fleet controller asks: each figure a gate reads, summed over every replica, from the series the
gateway exports (gateway.metrics, gateway.shadow.runner, gateway.drift.collector).

A gate counts what happened since its step began, so every count here is the increase of a counter between two
instants, S (the step's start, once every replica applied it) and now, exactly as scraped:

    sum by (L) (
        ((M - M @ S) unless resets(M[D]) > 0)   # a replica's series that ran through the step: now less then
      or M                                       # one that restarted in the step, or is new: all it has counted
    )

with D = now - S. `increase()` would extrapolate to the window's edges and hand back fractions of a request, where
the always-valid tests need counts; a replica that restarts in a step counts from its restart (it under-counts,
never over-counts), and one that goes away takes its step's counts with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.rollout.observations import ANSWERED_OUTCOMES

# The series, by the names the gateway exports them (tests/test_fleet_queries.py checks them against a real
# exposition, and tests/test_fleet_live.py runs every query on a real Prometheus).
REQUESTS: Final = "gateway_requests_total"  # {model, version (repository number), outcome}
LATENCY: Final = "gateway_request_duration_seconds_bucket"  # {model, version, le}
SHADOW_REQUESTS: Final = "gateway_shadow_requests_total"  # {route, version (name), outcome}
SHADOW_ROWS: Final = "gateway_shadow_rows_total"  # {route, version (name), result}
DRIFT_WINDOWS: Final = "gateway_drift_windows_total"  # {model, version}
DRIFT_DETECTED: Final = "gateway_drift_detected"  # {model, version}: 0 or 1
DRIFTED_FEATURE: Final = "gateway_drift_feature_drifted"  # {model, version, feature}: 0 or 1, latest window
ROUTE_WEIGHT: Final = "gateway_route_weight_ratio"  # {route, version (name)}: the share each replica applies


@dataclass(frozen=True, slots=True)
class Window:
    """A step's observation, in unix seconds: from `start` (every replica applied the step) to `end` (now)."""

    start: float
    end: float

    @property
    def range_ms(self) -> int:
        return max(1, math.ceil((self.end - self.start) * 1000))


def selector(metric: str, labels: Mapping[str, str], *, regex: Mapping[str, Sequence[str]] | None = None) -> str:
    """`metric{a="x",b=~"y|z"}`: exact matchers for `labels`, alternations for `regex` (values escaped)."""
    matchers = [f"{name}={_quoted(value)}" for name, value in labels.items()]
    for name, values in (regex or {}).items():
        matchers.append(f"{name}=~{_quoted('|'.join(_regex_literal(v) for v in values))}")
    return f"{metric}{{{','.join(matchers)}}}"


def step_increase(series: str, window: Window, by: Sequence[str] = ()) -> str:
    """What `series` (a counter selector) counted in `window`, summed over replicas, by the labels `by`."""
    grouping = f" by ({', '.join(by)})" if by else ""
    at = f"{window.start:.3f}"
    return (
        f"sum{grouping} ((({series} - {series} @ {at}) unless resets({series}[{window.range_ms}ms]) > 0) or {series})"
    )


@dataclass(frozen=True, slots=True)
class FleetQueries:
    """The queries of one fleet, every selector carrying the fleet's own labels (`scope`, e.g. {job: gateway})."""

    scope: Mapping[str, str]

    def _labels(self, **labels: str) -> dict[str, str]:
        return {**self.scope, **labels}

    def requests(self, model: str, version: str, window: Window) -> str:
        """Answered requests of one version by outcome (the error gates; outcomes as in-process: success and the
        server-side failures, a client's malformed request being no fault of the version)."""
        series = selector(REQUESTS, self._labels(model=model, version=version), regex={"outcome": ANSWERED_OUTCOMES})
        return step_increase(series, window, ("outcome",))

    def latency(self, model: str, version: str, window: Window) -> str:
        """One version's request-latency histogram, cumulative by bucket bound (the latency gate)."""
        return step_increase(selector(LATENCY, self._labels(model=model, version=version)), window, ("le",))

    def shadow_requests(self, route: str, version: str, window: Window) -> str:
        """Shadow copies to the candidate by outcome: completed, failed, timed_out, dropped (a shadow step's
        error gates)."""
        return step_increase(
            selector(SHADOW_REQUESTS, self._labels(route=route, version=version)), window, ("outcome",)
        )

    def shadow_rows(self, route: str, version: str, window: Window) -> str:
        """Rows of completed copies by whether they agreed with the primary's answer (shadow agreement)."""
        return step_increase(selector(SHADOW_ROWS, self._labels(route=route, version=version)), window, ("result",))

    def drift_windows(self, model: str, version: str, window: Window) -> str:
        """Drift windows the candidate's monitors closed in the step, on every replica (no series: not monitored)."""
        return step_increase(selector(DRIFT_WINDOWS, self._labels(model=model, version=version)), window)

    def drift_detected(self, model: str, version: str) -> str:
        """1 when any replica's drift verdict on the candidate is drifting: each replica judges its own share, as a
        replica's own controller would, and one that sees drift is enough to stop the rollout."""
        return f"max({selector(DRIFT_DETECTED, self._labels(model=model, version=version))})"

    def drifted_features(self, model: str, version: str) -> str:
        """The features any replica's latest window on the candidate found drifted (for the gate's detail)."""
        series = selector(DRIFTED_FEATURE, self._labels(model=model, version=version))
        return f"max by (feature) ({series}) > 0"

    def shadowing(self, route: str, version: str) -> str:
        """One series per replica that has copied (or copies) the route's traffic to `version`: a replica creates
        a shadow's series when it starts copying, and keeps them while the route has the version."""
        return selector(SHADOW_REQUESTS, self._labels(route=route, version=version, outcome="completed"))

    def weights(self, route: str) -> str:
        """Every replica's applied share per version of the route: the step is applied when all show its shares."""
        return selector(ROUTE_WEIGHT, self._labels(route=route))


def _quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


_REGEX_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def _regex_literal(value: str) -> str:
    return "".join(f"\\{c}" if c in _REGEX_SPECIAL else c for c in value)
