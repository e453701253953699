"""Shadow copies. ShadowLane and ShadowHub on fake runners: agreement row by row, the percent draw, the in-flight cap,
timeouts, failures, sinks, series and shutdown, all read back from the Prometheus text. Then the real app on affine
ONNX versions: clients are answered by the primary only, never wait for a shadow copy, and every copy is counted."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import models
import numpy as np
import numpy.typing as npt
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gateway.app import Settings, create_app
from gateway.backends import Arrays, Execution
from gateway.drift.sampler import DriftKey, DriftSampler
from gateway.errors import OverloadedError
from gateway.prediction import PredictionReader
from gateway.shadow.comparison import Comparator
from gateway.shadow.runner import DURATION_BUCKETS, Runner, ShadowHub, ShadowLane, ShadowResult, Sink
from gateway.shadow.settings import CompareSettings, ShadowSettings

ROUTE, VERSION = "fraud", "canary"
REGRESSION = PredictionReader("regression", "Y")
CLASSIFICATION = PredictionReader("classification", "label")
SCORES = PredictionReader("classification", "probabilities", argmax=True, score_output="probabilities")
INPUTS: Arrays = {"X": np.ones((3, 2), dtype=np.float32)}
PRIMARY = {"Y": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])}
OUTCOMES = ("completed", "failed", "timed_out", "dropped")

Series = dict[str, dict[tuple[tuple[str, str], ...], float]]


# --- reading the exposition back --------------------------------------------------------------------------------


def scrape_text(text: str) -> Series:
    """Sample name -> {sorted label pairs: value}, parsed back from Prometheus' text format."""
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return series


def scrape(registry: CollectorRegistry) -> Series:
    return scrape_text(generate_latest(registry).decode())


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get(name, {}).get(tuple(sorted(labels.items())))


def outcomes(series: Series, route: str = ROUTE, version: str = VERSION) -> dict[str, float | None]:
    name = "gateway_shadow_requests_total"
    return {o: value(series, name, route=route, version=version, outcome=o) for o in OUTCOMES}


def rows(series: Series, route: str = ROUTE, version: str = VERSION) -> dict[str, float | None]:
    name = "gateway_shadow_rows_total"
    return {r: value(series, name, route=route, version=version, result=r) for r in ("agreed", "disagreed")}


def inflight(series: Series, route: str = ROUTE, version: str = VERSION) -> float | None:
    return value(series, "gateway_shadow_inflight", route=route, version=version)


def durations(series: Series, route: str = ROUTE, version: str = VERSION) -> float | None:
    return value(series, "gateway_shadow_duration_seconds_count", route=route, version=version)


def counted(**counts: float) -> dict[str, float | None]:
    """The four outcome counters with `counts` set and the others 0."""
    return {o: float(counts.get(o, 0)) for o in OUTCOMES}


# --- fakes ------------------------------------------------------------------------------------------------------


class FakeRunner:
    """A shadow version's infer: answers `outputs` (or raises `error`), after `gate` is set when one is given."""

    def __init__(
        self,
        outputs: dict[str, npt.NDArray[Any]] | None = None,
        *,
        error: Exception | None = None,
        gate: asyncio.Event | None = None,
        compute_seconds: float | None = 0.002,
    ) -> None:
        self.outputs = outputs if outputs is not None else PRIMARY
        self.error = error
        self.gate = gate
        self.compute_seconds = compute_seconds
        self.calls = 0
        self.cancelled = 0

    async def __call__(self, inputs: Arrays, headers: Mapping[str, str], start: float) -> Execution:
        self.calls += 1
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if self.error is not None:
            raise self.error
        return Execution(dict(self.outputs), self.compute_seconds)


class Rig:
    """A hub on its own registry, a seeded draw, and a sink that keeps every result."""

    def __init__(self, seed: int = 0) -> None:
        self.registry = CollectorRegistry()
        self.sampler = DriftSampler(capacity=100, rng=random.Random(seed))
        self.hub = ShadowHub(self.registry, self.sampler, random=random.Random(seed).random)
        self.results: list[ShadowResult] = []

    def lane(
        self,
        runner: Runner,
        *,
        reader: PredictionReader = REGRESSION,
        percent: float = 100.0,
        settings: ShadowSettings | None = None,
        sink: Sink | None = None,
        record: bool = True,
        version: str = VERSION,
    ) -> ShadowLane:
        settings = settings if settings is not None else ShadowSettings(to=version)
        return self.hub.lane(
            route=ROUTE, version=version, infer=runner, drift_key=DriftKey("model", version), settings=settings,
            percent=percent, comparator=Comparator(reader, settings.compare),
            sink=sink if sink is not None else (self.results.append if record else None),
        )  # fmt: skip

    def series(self) -> Series:
        return scrape(self.registry)


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `condition` on the running loop until it holds, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.001)


def offer(
    lane: ShadowLane,
    primary: dict[str, npt.NDArray[Any]] = PRIMARY,
    *,
    compute: float | None = 0.001,
    elapsed: float = 0.004,
) -> None:
    """One served request offered to the lane: the primary's answer, its model time and the request's latency."""
    lane.offer(INPUTS, primary, compute, elapsed)


async def offer_and_settle(rig: Rig, lane: ShadowLane, primary: dict[str, npt.NDArray[Any]] = PRIMARY) -> None:
    offer(lane, primary)
    await until(lambda: rig.hub.running == 0, "the copy to finish")


# --- ShadowLane: agreement ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("abs_tol", "rel_tol", "agreed"),
    [
        (0.0, 0.0, 1),  # only the identical row
        (0.01, 0.0, 2),  # + the row 0.005 off
        (0.0, 0.1, 4),  # + the rows within 10 % of the primary (not of the shadow: row 3 is 10.5 off 100)
        (1e-6, 1e-3, 1),  # the defaults
    ],
)
def test_regression_rows_agree_within_abs_tol_plus_rel_tol_times_the_primary(
    abs_tol: float, rel_tol: float, agreed: int
) -> None:
    primary = {"Y": np.array([[1.0, 1.0], [1.0, 1.0], [100.0, 100.0], [100.0, 100.0], [110.5, 0.0], [5.0, 5.0]])}
    shadow = {"Y": np.array([[1.0, 1.0], [1.005, 1.0], [109.5, 100.0], [110.5, 100.0], [101.0, 0.0], [5.0, 7.0]])}
    settings = ShadowSettings(to=VERSION, compare=CompareSettings(kind="regression", abs_tol=abs_tol, rel_tol=rel_tol))
    rig = Rig()
    lane = rig.lane(FakeRunner(shadow, compute_seconds=0.25), settings=settings)

    asyncio.run(offer_and_settle(rig, lane, primary))

    series = rig.series()
    assert outcomes(series) == counted(completed=1)
    assert rows(series) == {"agreed": agreed, "disagreed": 6 - agreed}  # the last row is off in one value only
    assert durations(series) == 1 and inflight(series) == 0
    [result] = rig.results
    assert (result.outcome, result.rows, result.agreed) == ("completed", 6, agreed)
    # latency is the request's: the shadow's is the primary's request with the shadow's model time in its place
    assert result.primary_seconds == 0.004
    assert result.shadow_seconds == pytest.approx(0.004 - 0.001 + 0.25)
    assert result.primary is not None and result.shadow is not None
    np.testing.assert_array_equal(result.primary, primary["Y"])
    np.testing.assert_array_equal(result.shadow, shadow["Y"])


def test_classification_rows_agree_when_the_labels_are_equal() -> None:
    primary = {"label": np.array([0, 1, 1, 0, 2], dtype=np.int64)}
    shadow = {"label": np.array([[0], [1], [0], [0], [1]], dtype=np.int64)}  # [rows, 1] reads as one label a row
    rig = Rig()
    lane = rig.lane(FakeRunner(shadow), reader=CLASSIFICATION)

    asyncio.run(offer_and_settle(rig, lane, primary))

    assert rows(rig.series()) == {"agreed": 3, "disagreed": 2}
    [result] = rig.results
    assert result.primary is not None and result.shadow is not None
    assert result.primary.tolist() == [0, 1, 1, 0, 2] and result.shadow.tolist() == [0, 1, 0, 0, 1]


def test_classification_by_argmax_compares_the_winning_class_not_the_scores() -> None:
    primary = {"probabilities": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=np.float32)}
    shadow = {"probabilities": np.array([[0.6, 0.4], [0.45, 0.55], [0.4, 0.6]], dtype=np.float32)}
    rig = Rig()
    lane = rig.lane(FakeRunner(shadow), reader=SCORES)

    asyncio.run(offer_and_settle(rig, lane, primary))

    assert rows(rig.series()) == {"agreed": 2, "disagreed": 1}


@pytest.mark.parametrize(
    ("reader", "primary", "shadow"),
    [
        (REGRESSION, PRIMARY, {"Y": np.zeros((2, 2))}),  # fewer rows
        (REGRESSION, PRIMARY, {"Y": np.zeros((3, 3))}),  # more values a row
        (REGRESSION, PRIMARY, {"Z": np.zeros((3, 2))}),  # not the compared output
        (REGRESSION, PRIMARY, {"Y": np.array(1.0)}),  # no batch dimension
        (CLASSIFICATION, {"label": np.array([0, 1, 1])}, {"label": np.array([0, 1, 1, 1])}),
        (CLASSIFICATION, {"label": np.array([0, 1, 1])}, {"label": np.zeros((3, 2), dtype=np.int64)}),
    ],
    ids=["fewer-rows", "wider-rows", "missing-output", "scalar", "more-labels", "label-matrix"],
)
def test_a_shadow_answer_of_another_shape_disagrees_on_every_row(
    reader: PredictionReader, primary: dict[str, npt.NDArray[Any]], shadow: dict[str, npt.NDArray[Any]]
) -> None:
    rig = Rig()
    lane = rig.lane(FakeRunner(shadow), reader=reader)

    asyncio.run(offer_and_settle(rig, lane, primary))

    series = rig.series()
    assert outcomes(series) == counted(completed=1)  # the shadow answered; it just does not line up
    assert rows(series) == {"agreed": 0, "disagreed": 3}
    [result] = rig.results
    assert (result.rows, result.agreed, result.shadow) == (3, 0, None)
    assert result.primary is not None and result.primary.shape[0] == 3


def test_a_primary_answer_that_cannot_be_read_counts_as_failed_and_the_lane_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig()
    lane = rig.lane(FakeRunner())

    async def scenario() -> None:
        with caplog.at_level(logging.ERROR, logger="gateway.shadow.runner"):
            await offer_and_settle(rig, lane, {"Z": np.zeros((3, 2))})
        await offer_and_settle(rig, lane)

    asyncio.run(scenario())

    assert outcomes(rig.series()) == counted(completed=1, failed=1)
    assert "cannot compare answers" in caplog.text
    assert [r.outcome for r in rig.results] == ["failed", "completed"]


def test_a_completed_copy_feeds_the_shadow_versions_drift_sampler_with_the_shadows_answer() -> None:
    rig = Rig()
    key = DriftKey("model", VERSION)
    rig.sampler.configure(key, 1.0)
    shadow = {"Y": np.full((3, 2), 7.0)}
    lane = rig.lane(FakeRunner(shadow))

    asyncio.run(offer_and_settle(rig, lane))

    [(sampled_key, sampled_in, sampled_out, count)] = rig.sampler.drain(10)
    assert (sampled_key, count) == (key, 3)
    np.testing.assert_array_equal(sampled_in["X"], INPUTS["X"])
    np.testing.assert_array_equal(sampled_out["Y"], shadow["Y"])


# --- ShadowLane: which requests are copied -----------------------------------------------------------------------


@pytest.mark.parametrize("percent", [0.0, 30.0, 100.0])
def test_percent_is_one_seeded_draw_per_offer(percent: float) -> None:
    seed, offers = 11, 200
    replay = random.Random(seed)
    expected = sum(replay.random() < percent / 100 for _ in range(offers))
    rig = Rig(seed)
    runner = FakeRunner()
    lane = rig.lane(runner, percent=percent)

    async def scenario() -> None:
        for _ in range(offers):
            await offer_and_settle(rig, lane)

    asyncio.run(scenario())

    if percent in (0.0, 100.0):
        assert expected == (offers if percent else 0)
    else:
        assert 0 < expected < offers
    assert runner.calls == expected
    assert outcomes(rig.series()) == counted(completed=expected)
    assert len(rig.results) == expected  # an unchosen request costs nothing, not even a result


def test_offers_in_one_loop_iteration_respect_the_cap() -> None:
    """A batch resumes many requests at once: the cap must hold before any copy has run."""
    rig = Rig()
    settings = ShadowSettings(to=VERSION, max_inflight=2, timeout=60.0)

    async def scenario() -> None:
        runner = FakeRunner(gate=asyncio.Event())
        lane = rig.lane(runner, settings=settings)
        for _ in range(10):
            offer(lane)
        assert inflight(rig.series()) == 2
        assert outcomes(rig.series()) == counted(dropped=8)
        await rig.hub.aclose()

    asyncio.run(scenario())
    assert inflight(rig.series()) == 0


def test_copies_over_max_inflight_are_dropped_and_counted() -> None:
    rig = Rig()
    settings = ShadowSettings(to=VERSION, max_inflight=2, timeout=60.0)

    async def scenario() -> None:
        gate = asyncio.Event()
        runner = FakeRunner(gate=gate)
        lane = rig.lane(runner, settings=settings)
        offer(lane)
        assert inflight(rig.series()) == 1  # counted from the offer, before the copy first runs
        await until(lambda: runner.calls == 1, "the first copy to start")
        offer(lane)
        await until(lambda: runner.calls == 2, "the second copy to start")
        offer(lane, elapsed=0.003)  # over the cap: dropped at once, never run
        assert runner.calls == 2
        assert outcomes(rig.series()) == counted(dropped=1)
        assert [(r.outcome, r.primary_seconds) for r in rig.results] == [("dropped", 0.003)]
        gate.set()
        await until(lambda: rig.hub.running == 0, "the held copies to finish")
        offer(lane)  # room again
        await until(lambda: rig.hub.running == 0, "the last copy to finish")
        assert runner.calls == 3

    asyncio.run(scenario())

    series = rig.series()
    assert outcomes(series) == counted(completed=3, dropped=1)
    assert inflight(series) == 0 and durations(series) == 3


def test_a_copy_that_never_answers_is_timed_out_and_counted() -> None:
    rig = Rig()
    settings = ShadowSettings(to=VERSION, timeout=0.05)  # the timeout under test
    runner = FakeRunner()
    elapsed: list[float] = []

    async def scenario() -> None:
        runner.gate = asyncio.Event()  # never set
        lane = rig.lane(runner, settings=settings)
        start = time.monotonic()
        offer(lane)
        await until(lambda: outcomes(rig.series())["timed_out"] == 1, "the copy to time out")
        elapsed.append(time.monotonic() - start)

    asyncio.run(scenario())

    series = rig.series()
    assert elapsed[0] >= 0.049
    assert runner.cancelled == 1  # abandoned, not left running
    assert outcomes(series) == counted(timed_out=1)
    assert inflight(series) == 0
    assert durations(series) == 0 and rows(series) == {"agreed": 0, "disagreed": 0}
    assert rig.results == [ShadowResult("timed_out", 0, 0, 0.004, None, None, None)]


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (RuntimeError("the shadow version broke"), "failed"),
        (ValueError("bad input for this version"), "failed"),
        (OverloadedError("queue full"), "dropped"),  # the shadow version's own back-pressure
    ],
    ids=["runtime-error", "value-error", "overloaded"],
)
def test_a_runner_that_raises_is_counted_by_kind(error: Exception, outcome: str) -> None:
    rig = Rig()
    lane = rig.lane(FakeRunner(error=error))

    async def scenario() -> None:
        await offer_and_settle(rig, lane)
        await offer_and_settle(rig, lane)

    asyncio.run(scenario())

    series = rig.series()
    assert outcomes(series) == counted(**{outcome: 2})
    assert inflight(series) == 0 and durations(series) == 0
    assert [r.outcome for r in rig.results] == [outcome, outcome]
    assert all(r.primary is None and r.shadow is None and r.rows == 0 for r in rig.results)


def test_offer_without_a_running_loop_counts_a_drop_and_makes_no_coroutine() -> None:
    rig = Rig()
    runner = FakeRunner()
    lane = rig.lane(runner)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        offer(lane)  # a synchronous caller: no loop to run the copy on
        gc.collect()  # an orphaned coroutine would warn "was never awaited" when collected

    assert [str(w.message) for w in caught] == []
    assert runner.calls == 0 and rig.hub.running == 0
    assert outcomes(rig.series()) == counted(dropped=1)
    assert rig.results == [ShadowResult("dropped", 0, 0, 0.004, None, None, None)]


# --- sinks -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("primary_compute", "shadow_compute"),
    [(0.001, None), (None, 0.002), (None, None)],
    ids=["shadow-model-time-unknown", "primary-model-time-unknown", "neither-known"],
)
def test_the_sink_gets_predictions_and_paired_latency_only_when_it_can_be_told(
    primary_compute: float | None, shadow_compute: float | None
) -> None:
    rig = Rig()
    shadow = {"Y": PRIMARY["Y"] + 1.0}
    lane = rig.lane(FakeRunner(shadow, compute_seconds=shadow_compute))

    async def scenario() -> None:
        offer(lane, compute=primary_compute, elapsed=0.5)
        await until(lambda: rig.hub.running == 0, "the copy to finish")

    asyncio.run(scenario())

    [result] = rig.results
    assert isinstance(result, ShadowResult)
    assert (result.outcome, result.rows, result.agreed, result.primary_seconds) == ("completed", 3, 0, 0.5)
    if primary_compute is None:  # a batched primary: its own model time unknown, so no pair
        assert result.shadow_seconds is None
    else:  # the shadow's wall time stands in for its model time
        assert result.shadow_seconds is not None and 0.5 - primary_compute < result.shadow_seconds < 10
    assert result.primary is not None and result.shadow is not None
    np.testing.assert_array_equal(result.shadow - result.primary, np.ones((3, 2)))


def test_a_sink_that_raises_does_not_break_the_lane(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    calls: list[str] = []

    def broken(result: ShadowResult) -> None:
        calls.append(result.outcome)
        raise RuntimeError("listener bug")

    lane = rig.lane(FakeRunner(), sink=broken)
    quiet = rig.lane(FakeRunner(), record=False, version="other")  # no sink at all

    async def scenario() -> None:
        with caplog.at_level(logging.ERROR, logger="gateway.shadow.runner"):
            await offer_and_settle(rig, lane)
            await offer_and_settle(rig, lane)
            await offer_and_settle(rig, quiet)

    asyncio.run(scenario())

    series = rig.series()
    assert calls == ["completed", "completed"]
    assert outcomes(series) == counted(completed=2)
    assert rows(series) == {"agreed": 6, "disagreed": 0}
    assert outcomes(series, version="other") == counted(completed=1)
    assert caplog.text.count("the result listener failed") == 2


# --- ShadowHub: series, reloads and shutdown ---------------------------------------------------------------------


def test_lane_series_are_exported_at_zero_with_their_types_and_labels() -> None:
    rig = Rig()
    rig.lane(FakeRunner())
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(rig.registry).decode())}

    assert families["gateway_shadow_requests"].type == "counter"
    assert families["gateway_shadow_rows"].type == "counter"
    assert families["gateway_shadow_inflight"].type == "gauge"
    assert families["gateway_shadow_duration_seconds"].type == "histogram"
    series = rig.series()
    assert outcomes(series) == counted()
    assert rows(series) == {"agreed": 0, "disagreed": 0}
    assert inflight(series) == 0 and durations(series) == 0
    buckets = {dict(labels)["le"]: count for labels, count in series["gateway_shadow_duration_seconds_bucket"].items()}
    assert len(buckets) == len(DURATION_BUCKETS) + 1 and "+Inf" in buckets and set(buckets.values()) == {0.0}


def test_the_duration_histogram_observes_completed_copies() -> None:
    rig = Rig()
    lane = rig.lane(FakeRunner())

    async def scenario() -> None:
        for _ in range(3):
            await offer_and_settle(rig, lane)

    asyncio.run(scenario())

    series = rig.series()
    assert durations(series) == 3
    assert value(series, "gateway_shadow_duration_seconds_bucket", route=ROUTE, version=VERSION, le="+Inf") == 3
    total = value(series, "gateway_shadow_duration_seconds_sum", route=ROUTE, version=VERSION)
    assert total is not None and 0 < total < 30  # wall time on the loop, not the runtime's compute_seconds


def test_counters_survive_a_new_lane_for_the_same_route_and_version() -> None:
    rig = Rig()

    async def scenario() -> None:
        await offer_and_settle(rig, rig.lane(FakeRunner()))
        await offer_and_settle(rig, rig.lane(FakeRunner()))  # a reload builds a new lane

    asyncio.run(scenario())

    assert outcomes(rig.series()) == counted(completed=2)


def test_retain_forgets_the_series_of_versions_no_longer_shadowed() -> None:
    rig = Rig()

    async def scenario() -> None:
        await offer_and_settle(rig, rig.lane(FakeRunner(), version="canary"))
        await offer_and_settle(rig, rig.lane(FakeRunner(), version="other"))

    asyncio.run(scenario())
    assert outcomes(rig.series(), version="other") == counted(completed=1)

    rig.hub.retain([(ROUTE, "canary")])

    series = rig.series()
    assert outcomes(series, version="canary") == counted(completed=1)
    for name, samples in series.items():
        if name.startswith("gateway_shadow_"):
            assert all(dict(labels)["version"] == "canary" for labels in samples), name
    assert inflight(series, version="other") is None and durations(series, version="other") is None

    asyncio.run(offer_and_settle(rig, rig.lane(FakeRunner(), version="other")))  # shadowed again: from zero
    assert outcomes(rig.series(), version="other") == counted(completed=1)


def test_retain_keeps_a_pair_while_a_copy_of_it_is_in_flight() -> None:
    rig = Rig()

    async def scenario() -> None:
        gate = asyncio.Event()
        lane = rig.lane(FakeRunner(gate=gate), settings=ShadowSettings(to=VERSION, timeout=60.0))
        offer(lane)
        await until(lambda: inflight(rig.series()) == 1, "the copy to start")
        rig.hub.retain([])
        assert inflight(rig.series()) == 1  # still exported: the copy is still counted when it ends
        gate.set()
        await until(lambda: rig.hub.running == 0, "the copy to finish")
        assert outcomes(rig.series()) == counted(completed=1)
        rig.hub.retain([])

    asyncio.run(scenario())

    assert not any(name.startswith("gateway_shadow_") and samples for name, samples in rig.series().items())


def test_aclose_cancels_the_running_copies() -> None:
    rig = Rig()
    runner = FakeRunner()

    async def scenario() -> None:
        runner.gate = asyncio.Event()  # never set
        lane = rig.lane(runner, settings=ShadowSettings(to=VERSION, timeout=60.0))
        offer(lane)
        offer(lane)
        await until(lambda: runner.calls == 2, "both copies to start")
        assert rig.hub.running == 2 and inflight(rig.series()) == 2
        await rig.hub.aclose()
        assert rig.hub.running == 0

    asyncio.run(scenario())

    series = rig.series()
    assert runner.cancelled == 2
    assert inflight(series) == 0
    assert outcomes(series) == counted()  # a cancelled copy is no outcome of the shadow version's
    assert rig.results == []


# --- through the real app ----------------------------------------------------------------------------------------

SHADOW = "{to: shadowed, percent: 100, compare: {kind: regression}}"
INFER = "/v2/models/affine/infer"
STABLE_HEADER = "affine/stable;version=1;reason=weighted"


def config_text(repo: Path, shadow: str) -> str:
    return (
        f"model_repository: {repo}\n"
        "routes:\n"
        "  affine:\n"
        "    versions: {stable: 1, shadowed: 2}\n"
        "    split: {weights: {stable: 100}}\n"
        f"    shadow: {shadow}\n"
    )


def body(rows: list[list[float]]) -> bytes:
    tensor = {"name": "X", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}
    return orjson.dumps({"inputs": [tensor]})


def request_rows(i: int) -> list[list[float]]:
    """Two rows without a zero, so X*2+1 and X*3+1 differ in every value."""
    return [[i + 1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, -(i + 1.0)]]


class Probe:
    """Wraps the shadow version's runner as the hub builds each lane: notes each copy's first input value as the copy
    starts (tasks start in the order they were spawned), and while `hold` is set keeps copies waiting until
    `release` is set on the loop."""

    def __init__(self) -> None:
        self.seen: list[float] = []
        self.hold = False
        self.release = asyncio.Event()  # bound to the app's loop on first wait

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = ShadowHub.lane

        def lane(hub: ShadowHub, **kwargs: Any) -> ShadowLane:
            kwargs["infer"] = self.wrap(kwargs["infer"])
            return original(hub, **kwargs)

        monkeypatch.setattr(ShadowHub, "lane", lane)

    def wrap(self, infer: Runner) -> Runner:
        async def run(inputs: Arrays, headers: Mapping[str, str], start: float) -> Execution:
            self.seen.append(float(inputs["X"].flat[0]))
            if self.hold:
                await self.release.wait()
            execution: Execution = await infer(inputs, headers, start)
            return execution

        return run


@contextlib.contextmanager
def gateway(tmp_path: Path, scales: tuple[float, float], shadow: str = SHADOW) -> Iterator[TestClient]:
    repo = models.affine_repository(tmp_path / "repo", {1: scales[0], 2: scales[1]})
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(repo, shadow))
    app = create_app(Settings(config_path=path, watch=False), registry=CollectorRegistry(), seed=5)
    with TestClient(app) as client:
        yield client


def metrics(client: TestClient) -> Series:
    return scrape_text(client.get("/metrics").text)


def app_outcomes(client: TestClient) -> dict[str, float | None]:
    return outcomes(metrics(client), "affine", "shadowed")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.005)


def served_by_stable(client: TestClient, i: int) -> None:
    response = client.post(INFER, content=body(request_rows(i)))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_version"] == "1"
    assert response.headers["x-gateway-route"] == STABLE_HEADER
    expected = [x * 2.0 + 1.0 for row in request_rows(i) for x in row]  # version 1: X*2+1, never the shadow's X*3+1
    assert answer["outputs"][0]["data"] == expected


def test_clients_get_the_primarys_answer_and_every_request_is_copied(tmp_path: Path) -> None:
    n = 25
    with gateway(tmp_path, (2.0, 3.0)) as client:
        for i in range(n):
            served_by_stable(client, i)
        wait_for(lambda: app_outcomes(client)["completed"] == n, f"{n} shadow copies")
        series = metrics(client)

    assert outcomes(series, "affine", "shadowed") == counted(completed=n)
    assert rows(series, "affine", "shadowed") == {"agreed": 0, "disagreed": 2 * n}  # the scales differ
    assert durations(series, "affine", "shadowed") == n
    assert inflight(series, "affine", "shadowed") == 0
    # a copy is not a client request: version 2 served nobody
    assert value(series, "gateway_requests_total", model="affine", version="1", outcome="success") == n
    assert not value(series, "gateway_requests_total", model="affine", version="2", outcome="success")


def test_versions_with_the_same_scale_agree_on_every_row(tmp_path: Path) -> None:
    n = 10
    with gateway(tmp_path, (2.0, 2.0)) as client:
        for i in range(n):
            served_by_stable(client, i)
        wait_for(lambda: app_outcomes(client)["completed"] == n, f"{n} shadow copies")
        series = metrics(client)

    assert rows(series, "affine", "shadowed") == {"agreed": 2 * n, "disagreed": 0}


def test_requests_pinned_to_the_shadow_version_are_not_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = Probe()
    probe.install(monkeypatch)
    with gateway(tmp_path, (2.0, 3.0)) as client:
        dataplane = client.app.state.dataplane  # type: ignore[attr-defined]
        for pin in ("shadowed", "2"):
            response = client.post(f"/v2/models/affine/versions/{pin}/infer", content=body([[7.0, 1.0, 1.0, 1.0]]))
            assert response.status_code == 200
            assert response.json()["model_version"] == "2"
            assert response.json()["outputs"][0]["data"] == [22.0, 4.0, 4.0, 4.0]
            assert response.headers["x-gateway-route"] == "affine/shadowed;version=2;reason=pin"
        assert client.post(INFER, content=body([[9.0, 1.0, 1.0, 1.0]])).status_code == 200
        # copies start in the order their requests were answered: had a pinned one been copied, it would show first
        wait_for(lambda: probe.seen == [9.0], "the unpinned request's copy")
        pinned_stable = client.post("/v2/models/affine/versions/stable/infer", content=body([[10.0, 1.0, 1.0, 1.0]]))
        assert pinned_stable.headers["x-gateway-route"] == "affine/stable;version=1;reason=pin"
        wait_for(lambda: probe.seen == [9.0, 10.0], "the copy of the request pinned to the primary")
        wait_for(lambda: app_outcomes(client)["completed"] == 2, "both copies to complete")
        decisions = dataplane.snapshot.decisions
        assert decisions[("affine", "shadowed", "pin")].shadow is None
        assert decisions[("affine", "stable", "pin")].shadow is not None


def test_a_held_shadow_copy_never_delays_the_clients_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = Probe()
    probe.hold = True
    probe.install(monkeypatch)
    slow = "{to: shadowed, percent: 100, timeout_ms: 600000, compare: {kind: regression}}"
    with gateway(tmp_path, (2.0, 3.0), slow) as client:
        served_by_stable(client, 0)  # answered while its copy cannot finish
        wait_for(lambda: inflight(metrics(client), "affine", "shadowed") == 1, "the first copy to be in flight")
        served_by_stable(client, 1)
        wait_for(lambda: inflight(metrics(client), "affine", "shadowed") == 2, "the second copy to be in flight")
        assert app_outcomes(client) == counted()  # both answered, neither copy done
        portal = client.portal
        assert portal is not None
        portal.call(probe.release.set)
        wait_for(lambda: app_outcomes(client)["completed"] == 2, "the released copies to complete")
        series = metrics(client)

    assert inflight(series, "affine", "shadowed") == 0
    assert rows(series, "affine", "shadowed") == {"agreed": 0, "disagreed": 4}


def test_a_shadow_copy_past_timeout_ms_is_abandoned_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = Probe()
    probe.hold = True  # never released: every copy outlives its timeout
    probe.install(monkeypatch)
    stuck = "{to: shadowed, percent: 100, timeout_ms: 50, compare: {kind: regression}}"
    with gateway(tmp_path, (2.0, 3.0), stuck) as client:
        for i in range(3):
            served_by_stable(client, i)
        wait_for(lambda: app_outcomes(client)["timed_out"] == 3, "three copies to time out")
        series = metrics(client)

    assert outcomes(series, "affine", "shadowed") == counted(timed_out=3)
    assert inflight(series, "affine", "shadowed") == 0


def test_a_copy_over_max_inflight_is_dropped_while_the_client_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = Probe()
    probe.hold = True
    probe.install(monkeypatch)
    capped = "{to: shadowed, percent: 100, max_inflight: 1, timeout_ms: 600000, compare: {kind: regression}}"
    with gateway(tmp_path, (2.0, 3.0), capped) as client:
        served_by_stable(client, 0)
        wait_for(lambda: inflight(metrics(client), "affine", "shadowed") == 1, "the first copy to be in flight")
        served_by_stable(client, 1)
        assert app_outcomes(client) == counted(dropped=1)
        portal = client.portal
        assert portal is not None
        portal.call(probe.release.set)
        wait_for(lambda: app_outcomes(client)["completed"] == 1, "the held copy to complete")
        assert app_outcomes(client) == counted(completed=1, dropped=1)
    assert probe.seen == [1.0]
