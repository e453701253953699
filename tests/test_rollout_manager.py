"""Rollouts inside the real app: live requests through the data plane, shadow copies and taps feeding the gates, a
fake clock driving the controller, decisions published as snapshots, state files, hot reloads, the admin API, the
metrics and the webhook."""

from __future__ import annotations

import http.server
import json
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import models
import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gateway.app import Settings, create_app
from gateway.reloader import Reloader
from gateway.rollouts import RolloutManager

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODELS = ROOT / "config" / "models"
DEMO_TEST = ROOT / "config" / "data" / "breast_cancer_test.csv"
DEMO_SHIFTED = ROOT / "config" / "data" / "breast_cancer_shifted.csv"

GATES = (
    "{max_error_rate: 0.05, max_error_rate_increase: 0.05, max_p99_latency_ratio: null, min_shadow_agreement: 0.9,"
    " max_prediction_shift_js: 0.2, min_samples: 30}"
)
STEPS = (
    "[{shadow: 100, duration: 10, min_requests: 100}, {weight: 50, duration: 10, min_requests: 100},"
    " {weight: 100, duration: 5}]"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rollout-repo")
    models.affine(root / "affine" / "1" / "model.onnx", scale=2.0)  # the baseline
    models.affine(root / "affine" / "2" / "model.onnx", scale=2.0)  # a good candidate: the same answers
    models.affine(root / "affine" / "3" / "model.onnx", scale=3.0)  # disagrees on every row
    models.faulty(root / "affine" / "4" / "model.onnx", scale=2.0)  # refuses rows whose first value is >= 4
    return root


def config(
    repo: Path,
    tmp: Path,
    *,
    candidate: int = 2,
    steps: str = STEPS,
    gates: str = GATES,
    weights: str = "{stable: 100}",
    extra: str = "",
    rollout: bool = True,
) -> str:
    text = (
        f"model_repository: {repo}\nroutes:\n  affine:\n"
        f"    versions: {{stable: 1, canary: {candidate}}}\n"
        f"    split: {{weights: {weights}, baseline: stable, sticky: {{key: [header:x-user-id], salt: s1}}}}\n"
    )
    if rollout:
        text += (
            "    shadow: {percent: 0, compare: {kind: regression}}\n"
            f"    rollout:\n      candidate: canary\n      steps: {steps}\n      interval: 5s\n"
            f"      failure_limit: 2\n      progress_deadline: 10m\n      gates: {gates}\n"
            f"      state_file: {tmp / 'state' / 'affine.json'}\n{extra}"
        )
    return text


class Rig:
    """A gateway app on a fake clock, with helpers to send traffic and let time pass."""

    def __init__(self, client: TestClient, clock: Clock, path: Path, registry: CollectorRegistry) -> None:
        self.client = client
        self.clock = clock
        self.path = path
        self.registry = registry
        self.rng = random.Random(7)
        self.manager: RolloutManager = client.app.state.rollouts  # type: ignore[attr-defined]
        self.reloader: Reloader = client.app.state.reloader  # type: ignore[attr-defined]

    def call(self, function: Callable[[], Any]) -> Any:
        portal = self.client.portal
        assert portal is not None
        return portal.call(function)

    def send(self, n: int, *, bad_share: float = 0.0) -> dict[str, int]:
        """n requests from random users; `bad_share` of them with a first value the faulty model refuses."""
        served: dict[str, int] = {}
        for _ in range(n):
            first = 4.5 if self.rng.random() < bad_share else self.rng.uniform(0, 3.9)
            data = [first, self.rng.uniform(0, 1), self.rng.uniform(0, 1), self.rng.uniform(0, 1)]
            body = orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": data}]})
            response = self.client.post(
                "/v2/models/affine/infer", content=body, headers={"x-user-id": f"u{self.rng.randrange(10**6)}"}
            )
            key = response.json()["model_version"] if response.status_code == 200 else str(response.status_code)
            served[key] = served.get(key, 0) + 1
        return served

    def shadows_settled(self, deadline: float = 10.0) -> None:
        """Wait until no shadow copy is in flight (they run after the answers)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            inflight = self.registry.get_sample_value(
                "gateway_shadow_inflight", {"route": "affine", "version": "canary"}
            )
            if not inflight:
                return
            time.sleep(0.01)  # poll interval, bounded by the deadline
        raise TimeoutError("shadow copies still in flight")

    def hub_inflight(self) -> float:
        """Shadow copies in flight on any route (a family summed over its series)."""
        return sum(
            sample.value
            for family in self.registry.collect()
            if family.name == "gateway_shadow_inflight"
            for sample in family.samples
        )

    def tick(self, seconds: float = 5.0) -> None:
        self.clock.now += seconds
        self.call(self.manager.tick)
        self.call(self.manager.idle)

    def status(self) -> dict[str, Any]:
        response = self.client.get("/admin/rollouts/affine")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def weight(self, version: str) -> float | None:
        return self.registry.get_sample_value("gateway_route_weight_ratio", {"route": "affine", "version": version})

    def run_until(self, phases: set[str], *, per_tick: int = 150, bad_share: float = 0.0, ticks: int = 40) -> None:
        for _ in range(ticks):
            if self.status()["phase"] in phases:
                return
            self.send(per_tick, bad_share=bad_share)
            self.shadows_settled()
            self.tick()
        raise AssertionError(f"still {self.status()['phase']}: {self.status()['reason']}")

    def rewrite(self, text: str) -> str:
        self.path.write_text(text)
        outcome: str = self.call(lambda: self.reloader.check_once(force=True))
        return outcome


@pytest.fixture()
def rig_factory(tmp_path: Path) -> Iterator[Callable[[str], Rig]]:
    stack: list[TestClient] = []

    def make(text: str) -> Rig:
        path = tmp_path / "gateway.yaml"
        path.write_text(text)
        registry = CollectorRegistry()
        clock = Clock()
        app = create_app(
            Settings(config_path=path, watch=False, rollout_tick=3600.0), registry=registry, seed=3, clock=clock
        )
        client = TestClient(app)
        client.__enter__()
        stack.append(client)
        return Rig(client, clock, path, registry)

    yield make
    for client in stack:
        client.__exit__(None, None, None)


def test_a_good_candidate_walks_every_step_and_becomes_the_baseline(
    repo: Path, tmp_path: Path, rig_factory: Callable[[str], Rig]
) -> None:
    rig = rig_factory(config(repo, tmp_path))
    status = rig.status()
    assert status["phase"] == "shadowing" and status["step"]["index"] == 1
    assert rig.weight("canary") == 0.0
    served = rig.send(200)
    assert served == {"1": 200}  # shadow answers never reach a client
    rig.shadows_settled()
    completed = rig.registry.get_sample_value(
        "gateway_shadow_requests_total", {"route": "affine", "version": "canary", "outcome": "completed"}
    )
    assert completed == 200
    rig.run_until({"progressing"})
    assert rig.status()["step"]["weight"] == 50 and rig.weight("canary") == 0.5
    served = rig.send(400)
    assert 120 < served.get("2", 0) < 280  # about half, by sticky bucket (binomial: 6.3 sd)
    rig.run_until({"succeeded"})
    status = rig.status()
    assert [h["to"] for h in status["history"]] == [
        "validating",
        "shadowing",
        "progressing",
        "progressing",
        "succeeded",
    ]
    assert rig.weight("canary") == 1.0 and rig.weight("stable") == 0.0
    assert rig.send(50) == {"2": 50}
    assert rig.registry.get_sample_value("gateway_rollout_phase", {"route": "affine", "phase": "succeeded"}) == 1.0
    assert (
        rig.registry.get_sample_value("gateway_rollout_transitions_total", {"route": "affine", "to": "succeeded"}) == 1
    )
    rig.call(rig.manager.flush)
    saved = json.loads((tmp_path / "state" / "affine.json").read_text())
    assert saved["phase"] == "succeeded" and saved["identity"]["candidate_version"] == 2


def test_a_disagreeing_candidate_is_rolled_back_at_the_shadow_step(
    repo: Path, tmp_path: Path, rig_factory: Callable[[str], Rig]
) -> None:
    rig = rig_factory(config(repo, tmp_path, candidate=3))
    rig.run_until({"failed"})
    status = rig.status()
    assert "step 1 of 3" in status["reason"] and "shadow_agreement" in status["reason"]
    assert rig.weight("canary") == 0.0
    agreement = next(g for g in status["gates"] if g["gate"] == "shadow_agreement")
    assert agreement["verdict"] == "fail" and agreement["value"] == 0.0
    disagreed = rig.registry.get_sample_value(
        "gateway_shadow_rows_total", {"route": "affine", "version": "canary", "result": "disagreed"}
    )
    assert disagreed is not None and disagreed > 0
    assert rig.send(100) == {"1": 100}  # never exposed, and no more copies: the shadow is off
    assert rig.registry.get_sample_value("gateway_rollout_phase", {"route": "affine", "phase": "failed"}) == 1.0


def test_a_candidate_that_errors_on_some_inputs_is_rolled_back_on_the_error_gate(
    repo: Path, tmp_path: Path, rig_factory: Callable[[str], Rig]
) -> None:
    steps = "[{weight: 50, duration: 10, min_requests: 100}, {weight: 100, duration: 5}]"
    rig = rig_factory(config(repo, tmp_path, candidate=4, steps=steps))
    refused = 0
    for _ in range(40):
        if rig.status()["phase"] == "failed":
            break
        refused += rig.send(150, bad_share=0.2).get("400", 0)
        rig.tick()
    status = rig.status()
    assert status["phase"] == "failed" and "error_rate" in status["reason"], status["reason"]
    assert refused > 0
    counted = rig.registry.get_sample_value(
        "gateway_requests_total", {"model": "affine", "version": "4", "outcome": "model_rejected"}
    )
    assert counted == refused  # the candidate's own errors during its exposure: every one counted
    served = rig.send(200, bad_share=0.2)
    assert set(served) == {"1"}  # rolled back: everyone on the baseline, which serves those rows fine


def test_validation_keeps_a_bad_candidate_dark_and_passes_a_good_one(
    tmp_path: Path, rig_factory: Callable[[str], Rig]
) -> None:
    def demo(candidate: int) -> str:
        return (
            f"model_repository: {DEMO_MODELS}\nroutes:\n  breast_cancer:\n"
            f"    versions: {{stable: 1, canary: {candidate}}}\n"
            "    split: {weights: {stable: 100}, baseline: stable}\n"
            "    rollout:\n      candidate: canary\n"
            f"      validate: {{golden_set: {DEMO_TEST}, label_column: target, min_metric: {{accuracy: 0.9}},"
            " max_metric_drop: 0.02, min_agreement: 0.9}\n"
            f"      steps: [{{shadow: 100, duration: 30}}]\n      state_file: {tmp_path / f'v{candidate}.json'}\n"
        )

    bad = rig_factory(demo(3))
    # Validating until its job ends (the start-up tick may already have run it): no traffic either way.
    assert bad.client.get("/admin/rollouts/breast_cancer").json()["phase"] in ("validating", "failed")
    bad.tick()
    status = bad.client.get("/admin/rollouts/breast_cancer").json()
    assert status["phase"] == "failed"
    assert "accuracy 0.819 < 0.900" in status["reason"] and "agreement 0.819 < 0.900" in status["reason"]
    checks = {c["name"]: c for c in status["validation"]["checks"]}
    assert checks["accuracy"]["verdict"] == "fail" and checks["accuracy"]["threshold"] == 0.9
    assert checks["schema"]["verdict"] == "pass"
    weight = bad.registry.get_sample_value(
        "gateway_route_weight_ratio", {"route": "breast_cancer", "version": "canary"}
    )
    assert weight == 0.0

    good = rig_factory(demo(2))
    good.tick()
    status = good.client.get("/admin/rollouts/breast_cancer").json()
    assert status["phase"] == "shadowing", status["reason"]
    assert status["reason"].startswith("validation passed")


def test_a_restart_resumes_at_the_same_step_and_weight(
    repo: Path, tmp_path: Path, rig_factory: Callable[[str], Rig]
) -> None:
    text = config(repo, tmp_path)
    first = rig_factory(text)
    first.run_until({"progressing"})
    first.call(first.manager.flush)
    first.client.__exit__(None, None, None)

    second = rig_factory(text)
    # No tick yet: the very first snapshot already has the step's weight (no jump back to 0).
    assert second.weight("canary") == 0.5
    status = second.status()
    assert status["phase"] == "progressing" and status["step"]["index"] == 2
    assert status["history"][-1]["reason"].startswith("resumed after a restart at step 2")
    served = second.send(400)
    assert 120 < served.get("2", 0) < 280


def test_hot_reload_continues_restarts_pauses_or_ends_the_rollout(
    repo: Path, tmp_path: Path, rig_factory: Callable[[str], Rig]
) -> None:
    rig = rig_factory(config(repo, tmp_path))
    rig.run_until({"progressing"})
    # New gates: the rollout continues at the same step.
    stricter = GATES.replace("max_error_rate: 0.05", "max_error_rate: 0.04")
    assert rig.rewrite(config(repo, tmp_path, gates=stricter)) == "applied"
    assert rig.status()["phase"] == "progressing" and rig.status()["step"]["index"] == 2
    # The candidate's weight edited by hand: paused, and the file's weights apply.
    assert rig.rewrite(config(repo, tmp_path, gates=stricter, weights="{stable: 100, canary: 0}")) == "applied"
    status = rig.status()
    assert status["phase"] == "paused" and "edited by hand" in status["reason"]
    assert rig.weight("canary") == 0.0
    assert rig.send(50) == {"1": 50}
    assert rig.client.post("/admin/rollouts/affine/resume").status_code == 200
    assert rig.status()["phase"] == "progressing" and rig.weight("canary") == 0.5
    # Another candidate: a new rollout from the start.
    assert rig.rewrite(config(repo, tmp_path, candidate=3, gates=stricter)) == "applied"
    status = rig.status()
    assert status["phase"] == "shadowing" and status["candidate"] == {"name": "canary", "version": 3}
    assert rig.weight("canary") == 0.0
    # The rollout block removed: the config's weights govern again.
    assert rig.rewrite(config(repo, tmp_path, weights="{stable: 80, canary: 20}", rollout=False)) == "applied"
    assert rig.client.get("/admin/rollouts").json() == {"rollouts": []}
    assert rig.weight("canary") == 0.2


def test_operator_actions_and_their_errors(repo: Path, tmp_path: Path, rig_factory: Callable[[str], Rig]) -> None:
    rig = rig_factory(config(repo, tmp_path))
    client = rig.client
    assert client.post("/admin/rollouts/affine/pause").json()["phase"] == "paused"
    conflict = client.post("/admin/rollouts/affine/pause")
    assert conflict.status_code == 409 and "only a running step can be paused" in conflict.json()["error"]
    assert client.post("/admin/rollouts/affine/resume").json()["phase"] == "shadowing"
    assert client.post("/admin/rollouts/affine/promote").json()["phase"] == "succeeded"
    assert rig.weight("canary") == 1.0
    unknown = client.post("/admin/rollouts/nope/abort")
    assert unknown.status_code == 404 and "routes with one: affine" in unknown.json()["error"]
    assert client.get("/admin/rollouts/nope").status_code == 404
    bad = client.post("/admin/rollouts/affine/explode")
    assert bad.status_code == 400 and "unknown rollout action 'explode'" in bad.json()["error"]
    assert client.post("/admin/rollouts/affine/abort").status_code == 409


def test_rollout_metrics_are_promtool_clean_and_parse_back(
    repo: Path, tmp_path: Path, rig_factory: Callable[[str], Rig]
) -> None:
    rig = rig_factory(config(repo, tmp_path))
    rig.send(200)
    rig.shadows_settled()
    rig.tick()
    text = rig.client.get("/metrics").text
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is installed by .ci/run"
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    phases = {s.labels["phase"]: s.value for s in families["gateway_rollout_phase"].samples}
    assert phases["shadowing"] == 1.0 and sum(phases.values()) == 1.0
    assert families["gateway_rollout_step"].samples[0].value == 1.0
    verdicts = {
        (s.labels["gate"], s.labels["verdict"])
        for s in families["gateway_rollout_gate_verdict"].samples
        if s.value == 1
    }
    assert ("shadow_agreement", "pass") in verdicts and ("p99_latency_ratio", "skipped") in verdicts
    assert {s.labels["outcome"] for s in families["gateway_shadow_requests"].samples} >= {"completed", "dropped"}
    assert families["gateway_rollout_transitions"].type == "counter"


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers["content-length"])
        _Receiver.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_rollback_fires_the_webhook(repo: Path, tmp_path: Path, rig_factory: Callable[[str], Rig]) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        rig = rig_factory(config(repo, tmp_path, candidate=3, extra=f"      webhook_url: {url}\n"))
        rig.run_until({"failed"})
        end = time.monotonic() + 15
        while time.monotonic() < end and not any(b["event"] == "rollout_failed" for b in _Receiver.bodies):
            time.sleep(0.05)  # poll interval, bounded by the deadline
        failed = next(b for b in _Receiver.bodies if b["event"] == "rollout_failed")
        assert failed["route"] == "affine" and failed["candidate_version"] == 3
        assert "shadow_agreement" in failed["reason"]
        assert any(b["event"] == "rollout_shadowing" for b in _Receiver.bodies)
    finally:
        server.shutdown()
        server.server_close()


def test_a_drifting_candidate_is_rolled_back_on_the_drift_gate(
    tmp_path: Path, rig_factory: Callable[[str], Rig]
) -> None:
    """The candidate's drift monitor fills from its shadow copies; live data unlike its training data blocks it."""
    text = (
        f"model_repository: {DEMO_MODELS}\nroutes:\n  breast_cancer:\n"
        "    versions: {stable: 1, canary: 2}\n"
        "    split: {weights: {stable: 100}, baseline: stable}\n"
        "    drift: {sample_rate: 1.0, window_size: 171, persistence_k: 1, persistence_m: 1}\n"
        "    rollout:\n      candidate: canary\n      steps: [{shadow: 100, duration: 10, min_requests: 100}]\n"
        "      gates: {min_samples: 30, max_p99_latency_ratio: null}\n"
        f"      state_file: {tmp_path / 'drift.json'}\n"
    )
    rig = rig_factory(text)
    rows = [[float(v) for v in line.split(",")[:30]] for line in DEMO_SHIFTED.read_text().splitlines()[1:]]
    monitor = rig.client.app.state.monitor  # type: ignore[attr-defined]
    for _ in range(20):
        if rig.client.get("/admin/rollouts/breast_cancer").json()["phase"] == "failed":
            break
        for row in rows:
            body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]})
            assert rig.client.post("/v2/models/breast_cancer/infer", content=body).status_code == 200
        end = time.monotonic() + 10
        while time.monotonic() < end and (monitor.sampler.depth or rig.hub_inflight()):
            time.sleep(0.01)  # poll interval, bounded by the deadline: the drift worker and the copies catch up
        rig.tick()
    status = rig.client.get("/admin/rollouts/breast_cancer").json()
    assert status["phase"] == "failed" and "drift" in status["reason"], status["reason"]
    drift = next(g for g in status["gates"] if g["gate"] == "drift")
    assert drift["verdict"] == "fail" and "the candidate is drifting" in drift["detail"]


def test_a_promotion_survives_the_old_baseline_file_being_touched(
    repo: Path, tmp_path: Path, rig_factory: Callable[[str], Rig]
) -> None:
    """A rollout is identified by its models' bytes, not their dates: a re-synced repository is the same rollout."""
    local = tmp_path / "repo"
    shutil.copytree(repo, local)
    text = config(local, tmp_path)
    rig = rig_factory(text)
    assert rig.client.post("/admin/rollouts/affine/promote").json()["phase"] == "succeeded"
    rig.call(rig.manager.flush)
    baseline = local / "affine" / "1" / "model.onnx"
    baseline.write_bytes(baseline.read_bytes())  # same bytes, new date (and inode)
    assert rig.rewrite(text + "# a comment\n") == "applied"
    assert rig.status()["phase"] == "succeeded" and rig.weight("canary") == 1.0
    rig.client.__exit__(None, None, None)
    restarted = rig_factory(text)
    assert restarted.status()["phase"] == "succeeded" and restarted.weight("canary") == 1.0
    assert restarted.send(20) == {"2": 20}


def test_one_failing_evaluation_does_not_stop_the_rollouts(
    repo: Path, tmp_path: Path, rig_factory: Callable[[str], Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = rig_factory(config(repo, tmp_path))
    controller = rig.manager.controllers["affine"]

    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(controller, "evaluate", broken)
    rig.tick()  # logged, not raised
    assert not controller.due(rig.clock.now)  # tried again one interval later, not at every tick
    monkeypatch.undo()
    rig.run_until({"progressing"})


def test_sticky_users_move_only_from_the_baseline_to_the_candidate_with_a_third_version(
    repo: Path, tmp_path: Path, rig_factory: Callable[[str], Rig]
) -> None:
    text = (
        f"model_repository: {repo}\nroutes:\n  affine:\n"
        "    versions: {canary: 2, other: 3, stable: 1}\n"  # the candidate declared first: the hard case
        "    split: {weights: {other: 20, stable: 80}, baseline: stable, sticky: {key: [header:x-user-id], salt: s3}}\n"
        "    rollout:\n      candidate: canary\n"
        "      steps: [{weight: 5, duration: 1}, {weight: 25, duration: 1}, {weight: 50, duration: 1}]\n"
        f"      gates: {GATES}\n      state_file: {tmp_path / 'sticky.json'}\n"
    )
    rig = rig_factory(text)
    users = [f"user-{i}" for i in range(600)]

    def served() -> dict[str, str]:
        out = {}
        for user in users:
            response = rig.client.post("/v2/models/affine/infer", content=BODY, headers={"x-user-id": user})
            out[user] = response.headers["x-gateway-route"].split(";")[0].split("/")[1]
        return out

    seen = [served()]
    for step in (2, 3):
        for _ in range(40):  # traffic and looks until the rollout moves on by itself
            if rig.status()["step"]["index"] == step:
                break
            rig.send(150)
            rig.tick()
        assert rig.status()["step"]["index"] == step, rig.status()["reason"]
        seen.append(served())
    for before, after in zip(seen, seen[1:], strict=False):
        moves = {(before[u], after[u]) for u in users if before[u] != after[u]}
        assert moves <= {("stable", "canary")}, moves
        assert all(after[u] == "other" for u in users if before[u] == "other")
    shares = [sum(v == "other" for v in s.values()) / len(users) for s in seen]
    assert all(0.12 < share < 0.28 for share in shares)  # the other version keeps its 20 % (binomial: 3.3 sd)


BODY = orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]})
