"""What the gates judge: one rollout step's traffic, candidate against baseline, gathered since the step began.

This is the metrics-source seam of the design. `Recorder` is the interface the controller reads through; the
in-process implementation, `LocalRecorder`, reads the versions' own request counters, drains the taps on their
served requests and the shadow results, and asks the drift monitor for the candidate's verdict. A fleet controller
only adds another implementation (the same figures from Prometheus' HTTP API over every replica).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from gateway.drift.monitor import DriftMonitor, VersionSnapshot
from gateway.drift.sampler import DriftKey
from gateway.metrics import VersionMetrics
from gateway.prediction import PredictionError, PredictionReader, Task
from gateway.rollout.statistics import LATENCY_EDGES, latency_counts
from gateway.shadow.runner import ShadowResult, Sink
from gateway.tap import Tap

logger = logging.getLogger(__name__)

# What a candidate is to blame for: server-side failures, and inputs its model refused although they matched its
# signature (a version that refuses what the baseline serves is a regression). A malformed request is not.
ERROR_OUTCOMES: Final = ("error", "unavailable", "rejected", "model_rejected")
ANSWERED_OUTCOMES: Final = ("success", *ERROR_OUTCOMES)
MAX_PREDICTIONS = 50_000  # per arm and step: enough for any distribution gate, bounded memory
MAX_PENDING_SHADOW = 50_000

_BINS = len(LATENCY_EDGES) - 1


def _no_latency() -> npt.NDArray[np.int64]:
    return np.zeros(_BINS, dtype=np.int64)


def _no_predictions() -> npt.NDArray[Any]:
    return np.zeros(0, dtype=np.int64)


def _log_edges() -> npt.NDArray[np.float64]:
    return LATENCY_EDGES


@dataclass(frozen=True, slots=True)
class Arm:
    """One version's share of the step: answered requests, server errors among them, a histogram of their latency
    over `latency_edges`, and their predictions. In process the histogram holds sampled successful requests on the
    fine LATENCY_EDGES; a fleet source has only what the replicas export, every answered request on the buckets of
    `gateway_request_duration_seconds`, so the edges travel with the counts."""

    requests: int = 0
    errors: int = 0
    latency: npt.NDArray[np.int64] = field(default_factory=_no_latency)
    predictions: npt.NDArray[Any] = field(default_factory=_no_predictions)
    latency_edges: npt.NDArray[np.float64] = field(default_factory=_log_edges)


@dataclass(frozen=True, slots=True)
class ShadowArm:
    """The step's shadow copies to the candidate. Latency is paired request latency: the primary's, and the same
    request's with the candidate's model time in place of the primary's (only pairs where both are known).
    `unpaired` says why no copy could be paired, when none is."""

    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    dropped: int = 0
    rows: int = 0
    agreed: int = 0
    primary_latency: npt.NDArray[np.int64] = field(default_factory=_no_latency)
    shadow_latency: npt.NDArray[np.int64] = field(default_factory=_no_latency)
    primary_predictions: npt.NDArray[Any] = field(default_factory=_no_predictions)
    shadow_predictions: npt.NDArray[Any] = field(default_factory=_no_predictions)
    unpaired: str = "the primary reports no model time"  # a batched primary's copies carry no model time of its own

    @property
    def answered(self) -> int:
        """Copies the candidate was given a fair chance to answer (dropped ones never reached it)."""
        return self.completed + self.failed + self.timed_out


@dataclass(frozen=True, slots=True)
class DriftVerdict:
    monitored: bool = False  # drift is on for the route and the candidate has a profile
    windows: int = 0  # windows closed for the candidate since the step began
    drifting: bool = False
    drifted_features: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FeedbackVerdict:
    """The route's experiment (gateway/experiment) on candidate against baseline, from feedback on what each served:
    whether the candidate is not worse by more than the margin (None: not decided yet)."""

    declared: bool = False  # the route's experiment compares exactly these two versions
    not_worse: bool | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class StepObservations:
    task: Task
    candidate: Arm
    baseline: Arm
    shadow: ShadowArm
    drift: DriftVerdict
    feedback: FeedbackVerdict = FeedbackVerdict()


class Recorder(Protocol):
    """One step's observations. `taps` and `sink` are what the snapshot wires into the request path (empty/None for
    a source that reads elsewhere); `read` may run in a worker thread and returns everything since the step began."""

    @property
    def taps(self) -> Mapping[str, Tap]: ...

    @property
    def sink(self) -> Sink | None: ...

    def read(self) -> StepObservations: ...


@dataclass(frozen=True, slots=True)
class Side:
    """A version as the recorder sees it: its name in the route, its counters and its drift key."""

    name: str
    metrics: VersionMetrics
    drift_key: DriftKey


class _Accumulator:
    """Latency histogram and predictions gathered from drained samples."""

    def __init__(self) -> None:
        self.latency = _no_latency()
        self.parts: list[npt.NDArray[Any]] = []
        self.count = 0

    def add_predictions(self, predictions: npt.NDArray[Any]) -> None:
        if self.count >= MAX_PREDICTIONS:
            return
        self.parts.append(predictions)
        self.count += int(predictions.shape[0])

    def predictions(self) -> npt.NDArray[Any]:
        if not self.parts:
            return _no_predictions()
        if len(self.parts) > 1:
            self.parts = [np.concatenate(self.parts)]
        return self.parts[0]


def _answered(metrics: VersionMetrics) -> tuple[int, int]:
    outcomes = metrics.outcomes
    errors = sum(int(outcomes[o].value) for o in ERROR_OUTCOMES)
    return int(outcomes["success"].value) + errors, errors


class LocalRecorder:
    """The in-process recorder of one step. `sink` runs on the event loop (it only appends); `read` runs in the
    controller's worker thread, one at a time (a lock keeps two reads from interleaving)."""

    def __init__(
        self,
        candidate: Side,
        baseline: Side,
        *,
        reader: PredictionReader,
        candidate_rate: float,
        baseline_rate: float,
        monitor: DriftMonitor | None,
        random: Callable[[], float],
        feedback: Callable[[], FeedbackVerdict] | None = None,
    ) -> None:
        self._feedback = feedback
        self._candidate = candidate
        self._baseline = baseline
        self._reader = reader
        self._monitor = monitor
        self._start = {side.name: _answered(side.metrics) for side in (candidate, baseline)}
        self._taps = {
            candidate.name: Tap(candidate_rate, random=random),
            baseline.name: Tap(baseline_rate, random=random),
        }
        self._arms = {candidate.name: _Accumulator(), baseline.name: _Accumulator()}
        self._pending: deque[ShadowResult] = deque()
        self._shadow_counts = {"completed": 0, "failed": 0, "timed_out": 0, "dropped": 0}
        self._rows = 0
        self._agreed = 0
        self._paired = (_Accumulator(), _Accumulator())  # (primary, shadow)
        self._lock = threading.Lock()
        self.shadow_overflow = 0  # shadow results dropped because the controller fell behind
        # The candidate's drift windows closed before this step are not this step's evidence.
        self._windows_before = self._drift_snapshot()[0]

    @property
    def taps(self) -> Mapping[str, Tap]:
        return self._taps

    @property
    def lost(self) -> int:
        """Samples this step lost to full buffers (tapped requests and shadow results)."""
        return sum(tap.dropped for tap in self._taps.values()) + self.shadow_overflow

    @property
    def sink(self) -> Sink | None:
        return self._record_shadow

    def _record_shadow(self, result: ShadowResult) -> None:
        if len(self._pending) >= MAX_PENDING_SHADOW:
            self.shadow_overflow += 1
            return
        self._pending.append(result)

    def read(self) -> StepObservations:
        with self._lock:
            self._drain_taps()
            self._drain_shadow()
            return StepObservations(
                task=self._reader.task,
                candidate=self._arm(self._candidate),
                baseline=self._arm(self._baseline),
                shadow=self._shadow_arm(),
                drift=self._drift(),
                feedback=FeedbackVerdict() if self._feedback is None else self._feedback(),
            )

    def _arm(self, side: Side) -> Arm:
        answered, errors = _answered(side.metrics)
        start_answered, start_errors = self._start[side.name]
        accumulator = self._arms[side.name]
        return Arm(
            max(0, answered - start_answered),
            max(0, errors - start_errors),
            accumulator.latency.copy(),
            accumulator.predictions(),
        )

    def _drain_taps(self) -> None:
        for name, tap in self._taps.items():
            samples = tap.drain()
            if not samples:
                continue
            accumulator = self._arms[name]
            accumulator.latency += latency_counts(np.fromiter((s[0] for s in samples), np.float64, len(samples)))
            for _, outputs in samples:
                if accumulator.count >= MAX_PREDICTIONS:
                    break
                try:
                    accumulator.add_predictions(self._reader.predictions(outputs))
                except PredictionError:
                    pass  # an answer without the compared output (a request asking for a subset of outputs)

    def _drain_shadow(self) -> None:
        popleft = self._pending.popleft
        primary_seconds: list[float] = []
        shadow_seconds: list[float] = []
        primary, shadow = self._paired
        while True:
            try:
                result = popleft()
            except IndexError:
                break
            self._shadow_counts[result.outcome] += 1
            if result.outcome != "completed":
                continue
            self._rows += result.rows
            self._agreed += result.agreed
            if result.primary_seconds is not None and result.shadow_seconds is not None:
                primary_seconds.append(result.primary_seconds)
                shadow_seconds.append(result.shadow_seconds)
            if result.primary is not None and result.shadow is not None:
                primary.add_predictions(result.primary)
                shadow.add_predictions(result.shadow)
        if primary_seconds:
            primary.latency += latency_counts(np.asarray(primary_seconds, dtype=np.float64))
            shadow.latency += latency_counts(np.asarray(shadow_seconds, dtype=np.float64))

    def _shadow_arm(self) -> ShadowArm:
        primary, shadow = self._paired
        counts = self._shadow_counts
        return ShadowArm(
            completed=counts["completed"],
            failed=counts["failed"],
            timed_out=counts["timed_out"],
            dropped=counts["dropped"],
            rows=self._rows,
            agreed=self._agreed,
            primary_latency=primary.latency.copy(),
            shadow_latency=shadow.latency.copy(),
            primary_predictions=primary.predictions(),
            shadow_predictions=shadow.predictions(),
        )

    def _drift_snapshot(self) -> tuple[int, VersionSnapshot | None]:
        snapshot = None if self._monitor is None else self._monitor.snapshot().get(self._candidate.drift_key)
        return (0 if snapshot is None else snapshot.windows_total), snapshot

    def _drift(self) -> DriftVerdict:
        windows, snapshot = self._drift_snapshot()
        if snapshot is None:
            return DriftVerdict()
        drifted: tuple[str, ...] = ()
        if snapshot.window is not None:
            drifted = tuple(f.name for f in snapshot.window.features if f.drifted)
        # A re-registered monitor (a reloaded profile) starts its count again: then every window is this step's.
        since = windows - self._windows_before if windows >= self._windows_before else windows
        return DriftVerdict(True, since, snapshot.drifting, drifted)
