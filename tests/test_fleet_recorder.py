"""The fleet's metrics source: Prometheus' answers become the observations the rollout gates judge, and the gates
decide on the replicas' coarse histogram buckets as they do in process on their fine bins."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

import httpx
import numpy as np
import pytest

from gateway.fleet.prometheus import Prometheus, PrometheusError, Sample
from gateway.fleet.queries import FleetQueries, Window
from gateway.fleet.recorder import EDGES, PrometheusRecorder, Target
from gateway.metrics import LATENCY_BUCKETS
from gateway.rollout.gates import evaluate
from gateway.rollout.observations import Arm, DriftVerdict, ShadowArm, StepObservations
from gateway.rollout.settings import Gates, Step

TARGET = Target(
    route="fraud", model="fraud", candidate="canary", candidate_version="2", baseline="stable", baseline_version="1",
    shares=MappingProxyType({"stable": 0.75, "canary": 0.25}), shadowing=False, task="classification",
)  # fmt: skip
QUERIES = FleetQueries({"job": "gateway"})
START = 1_000.0


class FakePrometheus:
    """Answers each query the recorder may ask from a table; an unknown query fails the test."""

    def __init__(self, answers: Mapping[str, list[Sample]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, float]] = []

    def query(self, expr: str, at: float) -> tuple[Sample, ...]:
        self.asked.append((expr, at))
        if expr not in self.answers:
            raise AssertionError(f"unexpected query {expr}")
        return tuple(self.answers[expr])


def sample(value: float, **labels: str) -> Sample:
    return Sample(MappingProxyType(labels), value)


def weights(*replicas: Mapping[str, float]) -> list[Sample]:
    return [
        sample(share, instance=f"10.0.0.{i}:8001", job="gateway", route="fraud", version=version)
        for i, shares in enumerate(replicas)
        for version, share in shares.items()
    ]


def cumulative(counts: Mapping[float, int]) -> list[Sample]:
    """`le` buckets as Prometheus sums them: `counts` maps a bucket bound to the requests in that bucket alone."""
    total, out = 0, []
    for bound in (*LATENCY_BUCKETS, float("inf")):
        total += counts.get(bound, 0)
        out.append(sample(float(total), le="+Inf" if bound == float("inf") else repr(bound)))
    return out


def fleet(step_end: float, *, applied: bool = True, drift: bool = True) -> dict[str, list[Sample]]:
    window = Window(START, step_end)
    shares = dict(TARGET.shares) if applied else {"stable": 1.0, "canary": 0.0}
    answers = {
        QUERIES.weights("fraud"): weights(dict(TARGET.shares), shares),
        QUERIES.requests("fraud", "2", window): [sample(480, outcome="success"), sample(20, outcome="error")],
        QUERIES.requests("fraud", "1", window): [sample(1500, outcome="success"), sample(3, outcome="rejected")],
        QUERIES.latency("fraud", "2", window): cumulative({0.001: 490, 0.005: 10}),
        QUERIES.latency("fraud", "1", window): cumulative({0.001: 1500, 0.0025: 3}),
        QUERIES.shadow_requests("fraud", "canary", window): [sample(0, outcome="completed")],
        QUERIES.shadow_rows("fraud", "canary", window): [],
        QUERIES.drift_windows("fraud", "2", window): [sample(3)] if drift else [],
        QUERIES.drift_detected("fraud", "2"): [sample(1)],
        QUERIES.drifted_features("fraud", "2"): [sample(1, feature="amount"), sample(1, feature="joint")],
    }
    return answers


def test_a_step_is_observed_from_when_every_replica_applies_it() -> None:
    now = [START - 5.0]
    prometheus = FakePrometheus(fleet(START + 10.0, applied=False))
    recorder = PrometheusRecorder(TARGET, prometheus, QUERIES, clock=lambda: now[0])
    nothing = recorder.read()
    assert nothing.candidate.requests == 0 and recorder.since is None
    waiting = recorder.replicas_result()
    assert (
        waiting.verdict == "inconclusive"
        and "1 of 2 replica(s)" in waiting.detail
        and "10.0.0.1:8001" in waiting.detail
    )
    assert [expr for expr, _ in prometheus.asked] == [QUERIES.weights("fraud")]  # nothing else is asked yet

    now[0] = START
    prometheus.answers = {**fleet(START), **fleet(START + 10.0)}
    recorder.read()
    assert recorder.since == START and recorder.replicas_result().verdict == "pass"
    now[0] = START + 10.0
    observed = recorder.read()
    assert {at for _, at in prometheus.asked[-8:]} == {START + 10.0}
    assert (observed.candidate.requests, observed.candidate.errors) == (500, 20)
    assert (observed.baseline.requests, observed.baseline.errors) == (1503, 3)
    bins = observed.candidate.latency
    assert bins.sum() == 500 and bins[list(EDGES).index(0.001) - 1] == 490 and bins[list(EDGES).index(0.005) - 1] == 10
    assert observed.drift == DriftVerdict(True, 3, True, ("amount", "joint"))
    assert observed.shadow.completed == 0 and observed.shadow.rows == 0


def test_no_replica_in_sight_holds_the_step_and_says_so() -> None:
    prometheus = FakePrometheus({QUERIES.weights("fraud"): []})
    recorder = PrometheusRecorder(TARGET, prometheus, QUERIES, clock=lambda: START)
    recorder.read()
    assert "no replica reports route fraud's weights" in recorder.replicas_result().detail


def test_a_shadow_step_waits_for_every_replica_to_copy_to_the_candidate() -> None:
    target = dataclasses.replace(TARGET, shadowing=True, shares=MappingProxyType({"stable": 1.0, "canary": 0.0}))
    answers = {
        QUERIES.weights("fraud"): weights({"stable": 1.0, "canary": 0.0}, {"stable": 1.0, "canary": 0.0}),
        QUERIES.shadowing("fraud", "canary"): [
            sample(0, instance="10.0.0.0:8001", job="gateway", route="fraud", version="canary", outcome="completed")
        ],
    }
    recorder = PrometheusRecorder(target, FakePrometheus(answers), QUERIES, clock=lambda: START)
    recorder.read()
    assert recorder.since is None and recorder.lagging == ("10.0.0.1:8001",)


def test_an_unmonitored_candidate_skips_the_drift_gate() -> None:
    now = [START]
    recorder = PrometheusRecorder(TARGET, FakePrometheus(fleet(START, drift=False)), QUERIES, clock=lambda: now[0])
    assert recorder.read().drift == DriftVerdict()


def test_a_bucket_this_gateway_does_not_export_is_refused() -> None:
    answers = fleet(START)
    answers[QUERIES.latency("fraud", "2", Window(START, START))] = [sample(5, le="0.3")]
    recorder = PrometheusRecorder(TARGET, FakePrometheus(answers), QUERIES, clock=lambda: START)
    with pytest.raises(PrometheusError, match="le='0.3'"):
        recorder.read()


def lognormal_buckets(n: int, median_ms: float, seed: int) -> np.ndarray:
    """A request-latency histogram as the replicas export it: n log-normal latencies counted into their buckets."""
    seconds = median_ms / 1e3 * np.exp(np.random.default_rng(seed).normal(0.0, 0.5, n))
    bins = np.searchsorted(np.array(LATENCY_BUCKETS), seconds, side="left")  # (a, b] buckets
    return np.bincount(bins, minlength=len(EDGES) - 1).astype(np.int64)


@pytest.mark.parametrize(("median_ms", "expected"), [(1.0, "pass"), (4.0, "fail")])
def test_the_latency_gate_judges_the_replicas_buckets(median_ms: float, expected: str) -> None:
    """The same gate code on Prometheus' coarse buckets: an equal candidate is passed, one 4x slower failed."""
    baseline = Arm(5000, 0, lognormal_buckets(5000, 1.0, 1), latency_edges=EDGES)
    candidate = Arm(5000, 0, lognormal_buckets(5000, median_ms, 2), latency_edges=EDGES)
    observations = StepObservations("classification", candidate, baseline, ShadowArm(), DriftVerdict())
    gates = Gates(max_p99_latency_ratio=2.0, max_prediction_shift_js=None)
    result = next(r for r in evaluate(gates, Step(weight=25), observations) if r.name == "p99_latency_ratio")
    assert result.verdict == expected, result.detail


def test_prometheus_answers_and_faults() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        query = dict(httpx.QueryParams(request.content.decode()))
        if query["query"] == "up":
            assert query["time"] == "12.500"
            result = [{"metric": {"job": "gateway"}, "value": [12.5, "1"]}]
            return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": result}})
        if query["query"] == "1":
            return httpx.Response(200, json={"status": "success", "data": {"resultType": "scalar", "result": [1, "1"]}})
        return httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "parse error"})

    client = Prometheus("http://prom:9090/", client=httpx.Client(transport=httpx.MockTransport(handler)))
    assert client.query("up", 12.5) == (Sample(MappingProxyType({"job": "gateway"}), 1.0),)
    with pytest.raises(PrometheusError, match="HTTP 400: parse error"):
        client.query("up{", 12.5)
    with pytest.raises(PrometheusError, match="not an instant vector"):
        client.query("1", 12.5)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    unreachable = Prometheus("http://prom:9090", client=httpx.Client(transport=httpx.MockTransport(down)))
    with pytest.raises(PrometheusError, match="ConnectError"):
        unreachable.query("up", 1.0)
