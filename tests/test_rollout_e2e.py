"""Rollouts end to end: a real gateway process on loopback, load running throughout, time-compressed steps.

A good candidate goes shadow -> 5 -> 25 -> 50 -> 100 % and becomes the baseline; one that errors on some inputs is
rolled back on the error gate, a slow one on the latency gate (both while serving live traffic), and a disagreeing
one at the shadow step. No client request fails, but for the candidate's own errors while it was exposed, each of
which is counted."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import models
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server import Server, gateway

STEPS = (
    "[{shadow: 100, duration: 1s, min_requests: 150}, {weight: 5, duration: 1s, min_requests: 30},"
    " {weight: 25, duration: 1s, min_requests: 150}, {weight: 50, duration: 1s, min_requests: 150},"
    " {weight: 100, duration: 1s}]"
)
LIVE_STEPS = "[{weight: 25, duration: 1s, min_requests: 150}, {weight: 50, duration: 1s, min_requests: 150}]"
# A p99 ratio is judged on the tail, which a loaded 2-core host makes heavy: at a few thousand requests a step, 2.0
# is a line an equal candidate is shown to stay under; the slow candidate is several times slower.
GATES = (
    "{max_error_rate: 0.05, max_error_rate_increase: 0.05, max_p99_latency_ratio: 2.0, min_shadow_agreement: 0.9,"
    " max_prediction_shift_js: 0.2, min_samples: 30}"
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e-repo")
    models.affine(root / "affine" / "1" / "model.onnx", scale=2.0)
    models.affine(root / "affine" / "2" / "model.onnx", scale=2.0)
    models.affine(root / "affine" / "3" / "model.onnx", scale=3.0)
    models.faulty(root / "affine" / "4" / "model.onnx", scale=2.0)
    models.slow(root / "affine" / "5" / "model.onnx", scale=2.0, width=1024, layers=24)  # ~2 ms more a request
    return root


def config(repo: Path, state: Path, candidate: int, steps: str) -> str:
    return (
        f"model_repository: {repo}\nroutes:\n  affine:\n"
        f"    versions: {{stable: 1, canary: {candidate}}}\n"
        "    split: {weights: {stable: 100}, baseline: stable, sticky: {key: [header:x-user-id], salt: e2e}}\n"
        "    shadow: {percent: 0, compare: {kind: regression}}\n"
        f"    rollout:\n      candidate: canary\n      steps: {steps}\n      interval: 250ms\n"
        f"      failure_limit: 2\n      progress_deadline: 60s\n      gates: {GATES}\n      state_file: {state}\n"
    )


@dataclass
class Load:
    """Clients sending without pause from a few threads until stopped; every answer is tallied."""

    url: str
    bad_share: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not self._stop.is_set():
                first = 4.5 if rng.random() < self.bad_share else rng.uniform(0, 3.9)
                data = [first, rng.random(), rng.random(), rng.random()]
                body = orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": data}]})
                try:
                    response = client.post(
                        "/v2/models/affine/infer", content=body, headers={"x-user-id": f"u{rng.randrange(10**6)}"}
                    )
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(repr(exc))
                    continue
                with self._lock:
                    self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
                    if response.status_code == 200:
                        version = response.json()["model_version"]
                        self.versions[version] = self.versions.get(version, 0) + 1

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture()
def running(repo: Path, tmp_path: Path) -> Iterator[Any]:
    servers: list[tuple[Server, Load, list[threading.Thread]]] = []

    def start(candidate: int, steps: str, bad_share: float = 0.0) -> tuple[Server, Load]:
        path = tmp_path / "gateway.yaml"
        path.write_text(config(repo, tmp_path / "state.json", candidate, steps))
        context = gateway(["--config", str(path)], tmp_path / "gateway.log")
        server = context.__enter__()
        load = Load(server.url, bad_share)
        threads = [threading.Thread(target=load.run, args=(i,), daemon=True) for i in range(3)]
        for thread in threads:
            thread.start()
        servers.append((server, load, threads))
        contexts.append(context)
        return server, load

    contexts: list[Any] = []
    yield start
    for _, load, threads in servers:
        load.stop()
        for thread in threads:
            thread.join(timeout=15)
    for context in contexts:
        context.__exit__(None, None, None)


def wait_for(server: Server, phases: set[str], deadline: float = 90.0) -> dict[str, Any]:
    end = time.monotonic() + deadline
    status: dict[str, Any] = {}
    while time.monotonic() < end:
        status = httpx.get(f"{server.url}/admin/rollouts/affine", timeout=5).json()
        if status["phase"] in phases:
            return status
        time.sleep(0.1)  # poll interval, bounded by the deadline
    raise AssertionError(f"rollout still {status.get('phase')}: {status.get('reason')}\n{server.output()[-3000:]}")


def counter(server: Server, name: str, labels: dict[str, str]) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def settle(load: Load) -> None:
    """Let a few more requests through after the decision, then stop the clients."""
    seen = sum(load.statuses.values())
    end = time.monotonic() + 10
    while sum(load.statuses.values()) < seen + 100 and time.monotonic() < end:
        time.sleep(0.05)  # poll interval, bounded by the deadline
    load.stop()


def test_a_good_candidate_is_promoted_with_load_running_and_no_request_failing(running: Any) -> None:
    server, load = running(2, STEPS)
    status = wait_for(server, {"succeeded", "failed"})
    assert status["phase"] == "succeeded", status["reason"]
    assert [h["to"] for h in status["history"]] == [
        "validating", "shadowing", "progressing", "progressing", "progressing", "progressing", "succeeded",
    ]  # fmt: skip
    settle(load)
    assert load.failures == [] and set(load.statuses) == {200}, (load.statuses, load.failures[:3])
    assert load.versions.get("1", 0) > 0 and load.versions.get("2", 0) > 0
    assert counter(server, "gateway_route_weight_ratio", {"route": "affine", "version": "canary"}) == 1.0
    latest = httpx.post(
        f"{server.url}/v2/models/affine/infer",
        content=orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}),
    )
    assert latest.json()["model_version"] == "2"  # the candidate is the baseline now


def test_a_candidate_that_errors_is_rolled_back_on_the_error_gate(running: Any) -> None:
    server, load = running(4, LIVE_STEPS, bad_share=0.1)
    status = wait_for(server, {"succeeded", "failed"})
    assert status["phase"] == "failed" and "error_rate" in status["reason"], status["reason"]
    settle(load)
    assert load.failures == []
    refused = load.statuses.get(400, 0)
    assert set(load.statuses) <= {200, 400} and refused > 0
    # Every failed request is the candidate's own refusal while it was exposed, and each is counted.
    assert counter(server, "gateway_requests_total", {"version": "4", "outcome": "model_rejected"}) == refused
    assert counter(server, "gateway_requests_total", {"version": "1", "outcome": "model_rejected"}) == 0


def test_a_slow_candidate_is_rolled_back_on_the_latency_gate(running: Any) -> None:
    server, load = running(5, LIVE_STEPS)
    status = wait_for(server, {"succeeded", "failed"})
    assert status["phase"] == "failed" and "p99_latency_ratio" in status["reason"], status["reason"]
    settle(load)
    assert load.failures == [] and set(load.statuses) == {200}


def test_a_disagreeing_candidate_is_stopped_at_the_shadow_step(running: Any) -> None:
    server, load = running(3, STEPS)
    status = wait_for(server, {"succeeded", "failed"})
    assert status["phase"] == "failed" and "shadow_agreement" in status["reason"], status["reason"]
    assert status["history"][-1]["step"] == 0  # the shadow step: it never served a client
    settle(load)
    assert load.failures == [] and set(load.statuses) == {200}
    assert set(load.versions) == {"1"}
