"""The fleet controller's decisions on a fake clock with a fake metrics source: the in-process state machine and
gates walk each rollout, and every step lands in the published routing file (weights, version order, shadow, no
rollout block); a bad candidate is rolled back; a step holds until every replica applies it; a restart resumes;
the source's edits are taken up, and what a fleet cannot judge is refused by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml

from gateway.errors import ConfigError
from gateway.fleet.controller import FleetController, load_source
from gateway.fleet.prometheus import PrometheusError
from gateway.fleet.publication import HEADER
from gateway.fleet.recorder import EDGES, Target
from gateway.fleet.settings import FleetSettings, PrometheusSettings
from gateway.rollout.gates import GateResult
from gateway.rollout.observations import Arm, DriftVerdict, FeedbackVerdict, ShadowArm, StepObservations
from gateway.shadow.runner import Sink
from gateway.tap import Tap
from gateway.webhook import Webhook

ROOT = Path(__file__).resolve().parent.parent
ROLLOUT = """
    rollout:
      candidate: canary
      steps:
        - {shadow: 100, duration: 10s, min_requests: 200}
        - {weight: 25, duration: 10s, min_requests: 200}
        - {weight: 100, duration: 10s}
      interval: 5s
      failure_limit: 2
      progress_deadline: 120s
      gates: {max_prediction_shift_js: null, max_p99_latency_ratio: 2.0, min_samples: 100}
      state_file: state/fraud.json
"""
SOURCE = (
    f"model_repository: {ROOT / 'config' / 'models'}\n"
    "routes:\n"
    "  fraud:  # the route under rollout\n"
    "    model: breast_cancer\n"
    "    versions: {stable: 1, canary: 2}\n"
    "    split: {weights: {stable: 100}, baseline: stable, sticky: {key: [header:x-user-id], salt: s1}}\n"
    "    shadow: {to: canary, percent: 0, max_inflight: 8}\n"
    f"{ROLLOUT}"
    "  other:\n"
    "    model: breast_cancer\n"
    "    versions: {a: 1, b: 2}\n"
    "    split: {weights: {a: 70, b: 30}, baseline: a}\n"
)


@dataclass
class Scripted:
    """A fleet as the recorder would see it: per second of a step, `rate` requests on the route, the candidate's
    error share, its latency against the baseline's, and whether every replica applies the step."""

    error_share: float = 0.0
    slowdown: float = 1.0
    applied: bool = True
    reachable: bool = True  # Prometheus answers


class FakeRecorder:
    def __init__(self, target: Target, fleet: Scripted, clock: Callable[[], float]) -> None:
        self.target, self._fleet, self._clock = target, fleet, clock
        self._start = clock()

    @property
    def taps(self) -> dict[str, Tap]:
        return {}

    @property
    def sink(self) -> Sink | None:
        return None

    def read(self) -> StepObservations:
        if not self._fleet.reachable:
            raise PrometheusError("http://prometheus:9090: ConnectError: refused (query: ...)")
        seconds = self._clock() - self._start
        share = self.target.shares.get("canary", 0.0)
        n = int(100 * seconds)  # 100 requests a second on the route
        served = int(n * share)
        candidate_errors = int(served * self._fleet.error_share)
        copies = n if self.target.shadowing else 0
        copy_errors = int(copies * self._fleet.error_share)
        rng = np.random.default_rng(int(seconds))
        base = _latency(n - served, 1.0, rng)
        shadow = ShadowArm(
            completed=copies - copy_errors, failed=copy_errors, rows=copies - copy_errors, agreed=copies - copy_errors
        )
        return StepObservations(
            "classification",
            Arm(served, candidate_errors, _latency(served, self._fleet.slowdown, rng), latency_edges=EDGES),
            Arm(n - served, 0, base, latency_edges=EDGES),
            shadow,
            DriftVerdict(),
            FeedbackVerdict(),
        )

    def replicas_result(self) -> GateResult:
        if self._fleet.applied:
            return GateResult("replicas", "pass", 2.0, None, 2, "every replica applies the step")
        return GateResult("replicas", "inconclusive", 1.0, None, 0, "1 of 2 replica(s) do not apply the step yet: b")


def _latency(n: int, scale: float, rng: np.random.Generator) -> Any:
    seconds = scale * 1e-3 * np.exp(rng.normal(0.0, 0.3, n))
    return np.bincount(np.searchsorted(EDGES[1:-1], seconds, side="left"), minlength=len(EDGES) - 1).astype(np.int64)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(
    tmp: Path, fleet: Scripted, clock: Clock, source: str = SOURCE, webhook: Webhook | None = None
) -> FleetController:
    (tmp / "gateway.source.yaml").write_text(source)
    settings = FleetSettings(
        source=tmp / "gateway.source.yaml",
        output=tmp / "gateway.yaml",
        prometheus=PrometheusSettings("http://prometheus:9090"),
        lock=tmp / "gateway.yaml.lock",
    )

    def recorder(target: Target) -> FakeRecorder:
        return FakeRecorder(target, fleet, clock)

    controller = FleetController(settings, _NoPrometheus(), clock=clock, recorders=recorder, webhook=webhook)
    controller.start()
    return controller


class _NoPrometheus:
    def query(self, expr: str, at: float) -> tuple[Any, ...]:
        raise AssertionError("the fake recorders ask no Prometheus")


def published(tmp: Path) -> dict[str, Any]:
    text = (tmp / "gateway.yaml").read_text()
    assert text.startswith(HEADER.split("{", 1)[0])
    document: dict[str, Any] = yaml.safe_load(text)
    return document


async def run_until(controller: FleetController, clock: Clock, done: Callable[[], bool], limit: float = 600) -> None:
    end = clock.now + limit
    while not done():
        assert clock.now < end, "no decision within the simulated limit"
        clock.now += 1.0
        await controller.check_once()


@pytest.mark.anyio
async def test_a_good_candidate_walks_every_step_into_the_routing_file(tmp_path: Path) -> None:
    clock = Clock()
    controller = make(tmp_path, Scripted(), clock)
    route = published(tmp_path)["routes"]["fraud"]
    assert "rollout" not in route  # a replica serving the file runs no controller of its own
    assert route["shadow"] == {"percent": 100, "max_inflight": 8, "to": "canary"}
    assert route["split"]["weights"] == {"canary": 0, "stable": 100}
    assert list(route["versions"]) == ["canary", "stable"]  # the candidate next to the baseline, as in process
    assert published(tmp_path)["routes"]["other"] == yaml.safe_load(SOURCE)["routes"]["other"]

    seen: list[tuple[float, str, bool]] = []

    def record() -> bool:
        fraud = published(tmp_path)["routes"]["fraud"]
        step = (fraud["split"]["weights"]["canary"], fraud["split"]["baseline"], "shadow" in fraud)
        if not seen or seen[-1] != step:
            seen.append(step)
        return controller.controllers["fraud"].state.phase == "succeeded"

    await run_until(controller, clock, record)
    assert seen == [(0, "stable", True), (25, "stable", False), (100, "stable", False), (100, "canary", False)]
    state = orjson.loads((tmp_path / "state" / "fraud.json").read_bytes())
    assert [t["to"] for t in state["history"]] == ["validating", "shadowing", "progressing", "progressing", "succeeded"]
    assert controller.transitions[("fraud", "succeeded")] == 1
    # Every gate the fleet judges had its say, and the fleet's own condition joined them.
    names = {r.name for r in controller.controllers["fraud"].results} | {"replicas"}
    assert {"error_rate", "p99_latency_ratio", "replicas"} <= names


@pytest.mark.anyio
async def test_a_candidate_that_errors_is_rolled_back_everywhere(tmp_path: Path) -> None:
    clock = Clock()
    controller = make(tmp_path, Scripted(error_share=0.05), clock)
    await run_until(controller, clock, lambda: controller.controllers["fraud"].state.phase == "failed")
    route = published(tmp_path)["routes"]["fraud"]
    assert route["split"]["weights"] == {"canary": 0, "stable": 100} and "shadow" not in route
    assert "error_rate" in controller.controllers["fraud"].state.reason


@pytest.mark.anyio
async def test_the_webhook_hears_every_phase_change(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []

    def receive(request: httpx.Request) -> httpx.Response:
        events.append(orjson.loads(request.content))
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(receive)) as client:
        clock = Clock()
        source = SOURCE.replace(
            "state_file: state/fraud.json", "state_file: state/fraud.json\n      webhook_url: http://hooks/r"
        )
        webhook = Webhook(client)
        controller = make(tmp_path, Scripted(error_share=0.05), clock, source, webhook)
        await run_until(controller, clock, lambda: controller.controllers["fraud"].state.phase == "failed")
        await webhook.send_pending()
    assert [(e["event"], e["route"], e["step"]) for e in events] == [
        ("rollout_validating", "fraud", 1), ("rollout_shadowing", "fraud", 1), ("rollout_failed", "fraud", 1),
    ]  # fmt: skip


@pytest.mark.anyio
async def test_a_step_the_replicas_do_not_apply_never_passes_and_its_deadline_names_them(tmp_path: Path) -> None:
    clock = Clock()
    controller = make(tmp_path, Scripted(applied=False), clock)
    await run_until(controller, clock, lambda: controller.controllers["fraud"].state.phase == "failed")
    state = controller.controllers["fraud"].state
    assert state.step == 0 and "progress deadline" in state.reason and "replicas: 1 of 2 replica(s)" in state.reason
    assert [r.name for r in controller.controllers["fraud"].results] == ["replicas"]  # no gate judged unseen traffic


@pytest.mark.anyio
async def test_without_prometheus_a_step_holds_at_its_weights(tmp_path: Path) -> None:
    clock = Clock()
    fleet = Scripted(reachable=False)
    controller = make(tmp_path, fleet, clock)
    before = (tmp_path / "gateway.yaml").read_bytes()
    for _ in range(300):  # past the step's duration and its progress deadline: no evidence is no verdict
        clock.now += 1.0
        await controller.check_once()
    state = controller.controllers["fraud"].state
    assert (state.phase, state.step) == ("shadowing", 0) and (tmp_path / "gateway.yaml").read_bytes() == before
    fleet.reachable = True
    await run_until(controller, clock, lambda: controller.controllers["fraud"].state.step == 1)


@pytest.mark.anyio
async def test_a_restarted_controller_resumes_at_the_same_step(tmp_path: Path) -> None:
    clock = Clock()
    first = make(tmp_path, Scripted(), clock)
    await run_until(first, clock, lambda: first.controllers["fraud"].state.step == 1)
    before = (tmp_path / "gateway.yaml").read_bytes()
    second = make(tmp_path, Scripted(), clock)
    assert second.controllers["fraud"].state.step == 1
    assert "resumed after a restart" in second.controllers["fraud"].state.reason
    assert (tmp_path / "gateway.yaml").read_bytes() == before  # the weights never jumped


@pytest.mark.anyio
async def test_the_source_edits_are_taken_up_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    controller = make(tmp_path, Scripted(), clock)
    source = tmp_path / "gateway.source.yaml"
    source.write_text("routes: [")
    await controller.check_once()
    assert controller.rejected == 1 and "fraud" in controller.controllers  # the last good source stays in force
    await controller.check_once()
    assert controller.rejected == 1  # not tried again until it changes
    source.write_text(SOURCE.replace(ROLLOUT, ""))
    await controller.check_once()
    assert not controller.controllers
    route = published(tmp_path)["routes"]["fraud"]
    assert route["split"]["weights"] == {"stable": 100} and route["shadow"]["percent"] == 0  # the source, as it is


GOLDEN = ROOT / "config" / "data" / "breast_cancer_test.csv"
SPLIT = "    split: {weights: {stable: 100}, baseline: stable,"
REFUSED = [
    ("gates: {max_prediction_shift_js: null,", "gates: {", "max_prediction_shift_js"),  # its default is 0.10
    ("interval: 5s", f"interval: 5s\n      validate: {{golden_set: {GOLDEN}}}", "validate"),
    (SPLIT, f"    experiment: {{arms: [stable, canary]}}\n{SPLIT}", "block_on_feedback"),
]


@pytest.mark.parametrize(("text", "replacement", "key"), REFUSED)
def test_what_a_fleet_cannot_judge_is_refused_by_its_key(tmp_path: Path, text: str, replacement: str, key: str) -> None:
    (tmp_path / "gateway.source.yaml").write_text(SOURCE.replace(text, replacement, 1))
    with pytest.raises(ConfigError, match=rf"routes\.fraud\.rollout\.(gates\.)?{key}: .*fleet controller"):
        load_source(tmp_path / "gateway.source.yaml", output=tmp_path / "gateway.yaml")


def test_a_relative_repository_cannot_move_to_another_folder(tmp_path: Path) -> None:
    (tmp_path / "gateway.source.yaml").write_text(SOURCE.replace(str(ROOT / "config" / "models"), "./models"))
    with pytest.raises(ConfigError, match="model_repository: './models' is relative"):
        load_source(tmp_path / "gateway.source.yaml", output=tmp_path / "live" / "gateway.yaml")
