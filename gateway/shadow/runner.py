"""Shadow copies: a share of a route's live requests is also run on another version, off the client's answer.

`ShadowLane.offer` runs inline after the primary's answer is encoded: one draw decides, and an unchosen request
costs nothing more. A chosen one becomes a task on the event loop (bounded by `max_inflight`: over it, the copy is
dropped and counted) that runs the shadow version on the request's own decoded inputs under a timeout, compares its
answer with the primary's row by row, feeds the shadow version's drift monitor, and hands the result to a sink (the
rollout's gates) if one listens. The client's answer never waits for or depends on any of it, and a shadow answer
never reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Final, Literal, NamedTuple

import numpy.typing as npt
from prometheus_client import CollectorRegistry, Gauge

from gateway.admission import NO_HEADERS
from gateway.backends import Arrays
from gateway.drift.sampler import DriftKey, DriftSampler
from gateway.errors import OverloadedError
from gateway.shadow.comparison import Comparator
from gateway.shadow.settings import ShadowSettings
from gateway.tally import Count, CounterFamily, HistogramFamily, Spread, Tally

logger = logging.getLogger(__name__)

Outputs = Mapping[str, npt.NDArray[Any]]
Runner = Callable[[Arrays, Mapping[str, str], float], Any]  # the shadow version's infer: awaits an Execution
Outcome = Literal["completed", "failed", "timed_out", "dropped"]
OUTCOMES: Final = ("completed", "failed", "timed_out", "dropped")

# 100 us to 10 s, as the request histogram: a shadow answer is a request the client never sees.
DURATION_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class ShadowResult(NamedTuple):
    """One shadow run, for a listening rollout. Predictions are None unless the run completed.

    Latency is the request's: `primary_seconds` is what the client waited (body received to answer encoded), and
    `shadow_seconds` what it would have waited on the shadow version, i.e. the same request with the primary's model
    time swapped for the shadow's. None when that cannot be told (a batched primary reports no model time of its
    own), so a comparison uses only pairs that have both."""

    outcome: Outcome
    rows: int
    agreed: int
    primary_seconds: float | None
    shadow_seconds: float | None
    primary: npt.NDArray[Any] | None
    shadow: npt.NDArray[Any] | None


Sink = Callable[[ShadowResult], None]


@dataclass(slots=True)
class ShadowStats:
    """Per (route, shadow version), kept across snapshots so counters and the in-flight cap survive reloads."""

    outcomes: dict[str, Count]
    agreed: Count
    disagreed: Count
    duration: Spread
    inflight: int = 0


class ShadowLane:
    """One route's shadow target in one snapshot."""

    __slots__ = (
        "_comparator", "_drift_key", "_hub", "_infer", "_max_inflight", "_random", "_sampler", "_sink", "_stats",
        "_timeout", "probability", "route", "version",
    )  # fmt: skip

    def __init__(
        self,
        hub: ShadowHub,
        *,
        route: str,
        version: str,
        infer: Runner,
        drift_key: DriftKey,
        settings: ShadowSettings,
        percent: float,
        comparator: Comparator,
        stats: ShadowStats,
        sink: Sink | None,
    ) -> None:
        self._hub = hub
        self.route = route
        self.version = version
        self.probability = percent / 100.0
        self._infer = infer
        self._drift_key = drift_key
        self._max_inflight = settings.max_inflight
        self._timeout = settings.timeout
        self._comparator = comparator
        self._stats = stats
        self._sink = sink
        self._sampler = hub.sampler
        self._random = hub.random

    def offer(self, inputs: Arrays, primary: Outputs, primary_compute: float | None, elapsed: float) -> None:
        """Maybe copy one served request to the shadow version. Never raises, never blocks. `primary_compute` is the
        primary's model time (None if unknown), `elapsed` the request's latency."""
        if self._random() >= self.probability:
            return
        self.start(inputs, primary, primary_compute, elapsed)

    def chosen(self) -> bool:
        """`offer`'s draw alone, for a caller that decodes the request only when it is copied (a remote version);
        `start` then copies it."""
        return self._random() < self.probability

    def start(self, inputs: Arrays, primary: Outputs, primary_compute: float | None, elapsed: float) -> None:
        """Copy one request the draw chose: a task, unless `max_inflight` copies already run (dropped, counted)."""
        stats = self._stats
        if stats.inflight >= self._max_inflight:
            self._finish("dropped", ShadowResult("dropped", 0, 0, elapsed, None, None, None))
            return
        try:
            task = self._hub.spawn(self._run, inputs, primary, primary_compute, elapsed)
        except RuntimeError:  # no running loop (a test's synchronous call): count it, never fail the request
            self._finish("dropped", ShadowResult("dropped", 0, 0, elapsed, None, None, None))
            return
        # Counted from the spawn, not from when the task first runs: a batch resumes many requests in one loop
        # iteration, and each must see the copies already started. Released when the task ends, however it ends
        # (a task cancelled before its first step never runs its own `finally`).
        stats.inflight += 1
        task.add_done_callback(lambda _: self._release())

    def _release(self) -> None:
        self._stats.inflight -= 1

    async def _run(self, inputs: Arrays, primary: Outputs, primary_compute: float | None, elapsed: float) -> None:
        stats = self._stats
        start = perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                execution = await self._infer(inputs, NO_HEADERS, start)
        except TimeoutError:
            self._finish("timed_out", ShadowResult("timed_out", 0, 0, elapsed, None, None, None))
            return
        except OverloadedError:
            self._finish("dropped", ShadowResult("dropped", 0, 0, elapsed, None, None, None))
            return
        except Exception as exc:  # the shadow version's fault: counted, and what the rollout's error gate reads
            logger.debug("shadow %s/%s failed: %r", self.route, self.version, exc)
            self._finish("failed", ShadowResult("failed", 0, 0, elapsed, None, None, None))
            return
        wall = perf_counter() - start
        stats.duration.observe(wall)
        try:
            agreement = self._comparator.compare(primary, execution.outputs)
            self._sampler.offer(self._drift_key, inputs, execution.outputs)
        except Exception:
            logger.exception("shadow %s/%s: cannot compare answers", self.route, self.version)
            self._finish("failed", ShadowResult("failed", 0, 0, elapsed, None, None, None))
            return
        stats.agreed.value += agreement.agreed
        stats.disagreed.value += agreement.rows - agreement.agreed
        model = execution.compute_seconds if execution.compute_seconds is not None else wall
        estimate = None if primary_compute is None else max(0.0, elapsed - primary_compute + model)
        result = ShadowResult(
            "completed", agreement.rows, agreement.agreed, elapsed, estimate, agreement.primary, agreement.shadow
        )
        self._finish("completed", result)

    def _finish(self, outcome: Outcome, result: ShadowResult) -> None:
        self._stats.outcomes[outcome].value += 1
        sink = self._sink
        if sink is not None:
            try:
                sink(result)
            except Exception:  # a listener's fault must not break the shadow
                logger.exception("shadow %s/%s: the result listener failed", self.route, self.version)


class ShadowHub:
    """Owns the shadow tasks and counters of the whole gateway; the snapshot builder asks it for lanes."""

    def __init__(
        self, registry: CollectorRegistry, sampler: DriftSampler, *, random: Callable[[], float] = random.random
    ) -> None:
        self.sampler = sampler
        self.random = random
        self._tasks: set[asyncio.Task[None]] = set()
        self._stats: dict[tuple[str, str], ShadowStats] = {}
        self._requests = CounterFamily(
            "gateway_shadow_requests",
            "Shadow copies by route, shadow version and outcome (completed, failed, timed_out, dropped).",
            ["route", "version", "outcome"],
        )
        self._rows = CounterFamily(
            "gateway_shadow_rows",
            "Rows of completed shadow answers by whether they agreed with the primary answer.",
            ["route", "version", "result"],
        )
        self._duration = HistogramFamily(
            "gateway_shadow_duration_seconds", "Time a shadow copy took on the shadow version.",
            ["route", "version"], DURATION_BUCKETS,
        )  # fmt: skip
        Tally(registry, self._requests, self._rows, self._duration)
        self._inflight = Gauge(
            "gateway_shadow_inflight", "Shadow copies running now.", ["route", "version"], registry=registry
        )

    def stats(self, route: str, version: str) -> ShadowStats:
        key = (route, version)
        stats = self._stats.get(key)
        if stats is None:
            stats = ShadowStats(
                outcomes={o: self._requests.labels(route, version, o) for o in OUTCOMES},
                agreed=self._rows.labels(route, version, "agreed"),
                disagreed=self._rows.labels(route, version, "disagreed"),
                duration=self._duration.labels(route, version),
            )
            self._stats[key] = stats
            self._inflight.labels(route, version).set_function(lambda: stats.inflight)
        return stats

    def lane(
        self,
        *,
        route: str,
        version: str,
        infer: Runner,
        drift_key: DriftKey,
        settings: ShadowSettings,
        percent: float,
        comparator: Comparator,
        sink: Sink | None,
    ) -> ShadowLane:
        return ShadowLane(
            self, route=route, version=version, infer=infer, drift_key=drift_key, settings=settings,
            percent=percent, comparator=comparator, stats=self.stats(route, version), sink=sink,
        )  # fmt: skip

    def retain(self, keys: Iterable[tuple[str, str]]) -> None:
        """Forget the counters of (route, version) pairs that no longer shadow; their series leave /metrics."""
        keep = set(keys)
        for key in [k for k in self._stats if k not in keep and self._stats[k].inflight == 0]:
            del self._stats[key]
            for outcome in OUTCOMES:
                self._requests.remove(*key, outcome)
            self._rows.remove(*key, "agreed")
            self._rows.remove(*key, "disagreed")
            self._duration.remove(*key)
            try:
                self._inflight.remove(*key)
            except KeyError:
                pass

    def spawn(self, run: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> asyncio.Task[None]:
        """Start `run(*args)` as a task; RuntimeError (before the coroutine exists) when no loop is running."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(run(*args))
        self._tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        """Cancel the shadow copies still running (their clients were answered long ago)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
