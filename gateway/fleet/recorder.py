"""The fleet's metrics source: one rollout step's observations from Prometheus, over every replica.

It implements gateway.rollout.observations.Recorder, so the rollout controller and its gates run unchanged: what
a replica measures of its own traffic in process, this reads of the whole fleet's from the series the replicas
export (gateway.fleet.queries has the PromQL, gateway.fleet.support the gates it cannot serve).

A step is observed from the moment every replica Prometheus scrapes applies its weights (each one's
`gateway_route_weight_ratio` shows the published shares): before that, some replicas still serve the previous step,
and their traffic is not this step's evidence. Until then the observations are empty and the `replicas` result
says what is awaited; the controller adds it to the gates, so a step never passes before the fleet applied it and
its progress deadline names the replicas that never did.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from gateway.fleet.prometheus import PrometheusError, Querier, Sample
from gateway.fleet.queries import FleetQueries, Window
from gateway.metrics import LATENCY_BUCKETS
from gateway.prediction import Task
from gateway.rollout.gates import GateResult
from gateway.rollout.observations import (
    ERROR_OUTCOMES,
    Arm,
    DriftVerdict,
    FeedbackVerdict,
    Recorder,
    ShadowArm,
    StepObservations,
)
from gateway.shadow.runner import Sink
from gateway.tap import Tap

logger = logging.getLogger(__name__)

# The request histogram's bins as the replicas export them: [0, 100 us], (100 us, 250 us], ..., (10 s, +Inf).
EDGES: Final = np.array((0.0, *LATENCY_BUCKETS, math.inf), dtype=np.float64)
EDGES.setflags(write=False)
_BIN_OF_BOUND: Final = {float(bound): i for i, bound in enumerate((*LATENCY_BUCKETS, math.inf))}
UNPAIRED: Final = "Prometheus holds the two histograms apart, never a copy paired with its request"
SHARE_TOLERANCE: Final = 1e-6


@runtime_checkable
class FleetRecorder(Recorder, Protocol):
    """A recorder that also says whether every replica applies its step."""

    def replicas_result(self) -> GateResult: ...


@dataclass(frozen=True, slots=True)
class Target:
    """What one rollout's recorder reads: the route, its two versions (by name for the route's series, by
    repository number for the versions' series) and the shares every replica must show for the step."""

    route: str
    model: str
    candidate: str
    candidate_version: str
    baseline: str
    baseline_version: str
    shares: Mapping[str, float]
    shadowing: bool  # the step copies traffic to the candidate
    task: Task  # only the prediction-shift gate reads it, and the fleet refuses that gate


class PrometheusRecorder:
    """One step's observations from Prometheus. `read` runs in the controller's worker thread."""

    def __init__(self, target: Target, prometheus: Querier, queries: FleetQueries, *, clock: Callable[[], float]):
        self._target = target
        self._prometheus = prometheus
        self._queries = queries
        self._clock = clock
        self.since: float | None = None  # when every replica showed the step's shares
        self.replicas = 0  # replicas seen at the latest look
        self.lagging: tuple[str, ...] = ()  # replicas that did not show them at the latest look

    @property
    def taps(self) -> Mapping[str, Tap]:
        return {}

    @property
    def sink(self) -> Sink | None:
        return None

    def read(self) -> StepObservations:
        now = self._clock()
        if self.since is None:
            if not self._applied(now):
                return self._nothing()
            self.since = now
            logger.info("route %s: all %d replica(s) apply the step; observing it", self._target.route, self.replicas)
        window = Window(self.since, now)
        target, q = self._target, self._queries
        candidate = self._arm(target.candidate_version, window)
        baseline = self._arm(target.baseline_version, window)
        copies = self._counts(q.shadow_requests(target.route, target.candidate, window), now, "outcome")
        rows = self._counts(q.shadow_rows(target.route, target.candidate, window), now, "result")
        shadow = ShadowArm(
            completed=copies.get("completed", 0),
            failed=copies.get("failed", 0),
            timed_out=copies.get("timed_out", 0),
            dropped=copies.get("dropped", 0),
            rows=rows.get("agreed", 0) + rows.get("disagreed", 0),
            agreed=rows.get("agreed", 0),
            unpaired=UNPAIRED,
        )
        return StepObservations(target.task, candidate, baseline, shadow, self._drift(window), FeedbackVerdict())

    def replicas_result(self) -> GateResult:
        """Whether the fleet applies the step: `pass` once every replica showed its shares, else `inconclusive`."""
        if self.since is not None:
            return GateResult(
                "replicas", "pass", float(self.replicas), None, self.replicas, "every replica applies the step"
            )
        if self.replicas == 0:
            detail = f"no replica reports route {self._target.route}'s weights (is Prometheus scraping the fleet?)"
        else:
            lagging = ", ".join(self.lagging)
            detail = f"{len(self.lagging)} of {self.replicas} replica(s) do not apply the step yet: {lagging}"
        return GateResult("replicas", "inconclusive", float(self.replicas - len(self.lagging)), None, 0, detail)

    # --- the figures -------------------------------------------------------------------------------------------

    def _applied(self, now: float) -> bool:
        """Whether every replica shows the step's shares for every version of the route, and, in a shadow step, has
        the candidate's shadow series: a shadow step's weights are the step before's, so they alone cannot tell,
        and a replica creates those series when it starts copying to the candidate (it keeps them while the route
        has the version, so this tells the first shadow step, the usual one, and no later change of percent)."""
        target, q = self._target, self._queries
        shown: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
        for sample in self._prometheus.query(q.weights(target.route), now):
            shown.setdefault(_replica(sample), {})[sample.labels.get("version", "")] = sample.value
        shadowing: set[tuple[tuple[str, str], ...]] = set()
        if target.shadowing:
            shadowing = {_replica(s) for s in self._prometheus.query(q.shadowing(target.route, target.candidate), now)}
        lagging = [
            _describe(replica)
            for replica, shares in sorted(shown.items())
            if any(abs(shares.get(name, 0.0) - share) > SHARE_TOLERANCE for name, share in target.shares.items())
            or (target.shadowing and replica not in shadowing)
        ]
        self.replicas, self.lagging = len(shown), tuple(lagging)
        return bool(shown) and not lagging

    def _arm(self, version: str, window: Window) -> Arm:
        target, q = self._target, self._queries
        outcomes = self._counts(q.requests(target.model, version, window), window.end, "outcome")
        errors = sum(outcomes.get(o, 0) for o in ERROR_OUTCOMES)
        latency = self._histogram(self._prometheus.query(q.latency(target.model, version, window), window.end))
        return Arm(sum(outcomes.values()), errors, latency, latency_edges=EDGES)

    def _drift(self, window: Window) -> DriftVerdict:
        target, q = self._target, self._queries
        version = target.candidate_version
        windows = self._prometheus.query(q.drift_windows(target.model, version, window), window.end)
        if not windows:
            return DriftVerdict()  # no replica monitors the candidate's drift
        detected = self._prometheus.query(q.drift_detected(target.model, version), window.end)
        drifting = any(s.value >= 1.0 for s in detected)
        features: tuple[str, ...] = ()
        if drifting:
            found = self._prometheus.query(q.drifted_features(target.model, version), window.end)
            features = tuple(sorted(s.labels.get("feature", "") for s in found))
        return DriftVerdict(True, _count(windows[0]), drifting, features)

    def _counts(self, expr: str, at: float, label: str) -> dict[str, int]:
        return {s.labels.get(label, ""): _count(s) for s in self._prometheus.query(expr, at)}

    def _nothing(self) -> StepObservations:
        empty = Arm(latency=np.zeros(len(EDGES) - 1, dtype=np.int64), latency_edges=EDGES)
        return StepObservations(
            self._target.task, empty, empty, ShadowArm(unpaired=UNPAIRED), DriftVerdict(), FeedbackVerdict()
        )

    @staticmethod
    def _histogram(samples: tuple[Sample, ...]) -> npt.NDArray[np.int64]:
        """Per-bin counts on EDGES from cumulative `le` buckets."""
        cumulative = np.zeros(len(EDGES) - 1, dtype=np.int64)
        for sample in samples:
            bound = float(sample.labels.get("le", "nan"))
            index = _BIN_OF_BOUND.get(bound)
            if index is None:
                raise PrometheusError(
                    f"bucket le={sample.labels.get('le')!r} is not one of this gateway's request-latency buckets"
                    " (a replica of another build?)"
                )
            cumulative[index] = _count(sample)
        # Cumulative counts of one window are monotonic; a replica restarting between scrapes could nudge one
        # bucket below the one before, which is no negative count.
        return np.clip(np.diff(cumulative, prepend=0), 0, None).astype(np.int64)


def _count(sample: Sample) -> int:
    """A counted figure: scraped counters are integers, and a restart's remainder is never negative."""
    return max(0, round(sample.value))


def _replica(sample: Sample) -> tuple[tuple[str, str], ...]:
    """Which replica a series is from: its labels but those that tell series of one replica apart."""
    return tuple(sorted((k, v) for k, v in sample.labels.items() if k not in _SERIES_LABELS))


_SERIES_LABELS: Final = frozenset({"__name__", "version", "outcome"})


def _describe(replica: tuple[tuple[str, str], ...]) -> str:
    labels = dict(replica)
    return labels.get("instance") or labels.get("pod") or ",".join(f"{k}={v}" for k, v in replica) or "(one replica)"
