"""Remote versions against real servers on loopback: the gateway in front (a process, so the transport's direct path
forwards), another gateway process and a KServe model server (the `kserve` package, in its own virtualenv:
benchmarks/kserve_env.py) behind it. JSON and tritonclient's binary form through the gateway, remote faults as
502/503/504, an endpoint killed mid-load (fast 503s or the baseline, then recovery), a remote version in a canary
split and in a shadow, and its sampled copies reaching drift and the prediction log."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import models
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from server import Server, free_port, gateway

from benchmarks.kserve_env import ensure_venv, server_command

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "config" / "models"
ROW = [13.08, 15.71, 85.63, 520.0, 0.1075, 0.127, 0.04568, 0.0311, 0.1967, 0.06811, 0.1852, 0.7477, 1.383, 14.67,
       0.004097, 0.01898, 0.01698, 0.00649, 0.01678, 0.002425, 14.5, 20.49, 96.09, 630.5, 0.1312, 0.2776, 0.189,
       0.07283, 0.3184, 0.08183]  # fmt: skip


def body(rows: list[list[float]], request_id: str | None = None) -> bytes:
    request: dict[str, object] = {"inputs": [{"name": "input", "shape": [len(rows), 30], "datatype": "FP32",
                                              "data": rows}]}  # fmt: skip
    if request_id is not None:
        request["id"] = request_id
    return orjson.dumps(request)


def affine(first: float) -> bytes:
    return orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [first, 2, 3, 4]}]})


def poll(check: Callable[[], bool], deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline}s: {what}")
        time.sleep(0.05)  # poll interval, bounded by the deadline


@dataclass
class Process:
    """A server process this module starts, kills and restarts on its own port."""

    command: list[str]
    port: int
    log: Path
    ready_path: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, deadline: float = 60.0) -> None:
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                self.command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command[:3]} exited:\n{self.log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # poll interval, bounded by the deadline
        raise TimeoutError(f"{self.command[:3]} not ready in {deadline}s:\n{self.log.read_text(errors='replace')}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the whole group: KServe may fork
            self.process.wait()


@contextlib.contextmanager
def running(process: Process) -> Iterator[Process]:
    process.start()
    try:
        yield process
    finally:
        process.kill()


@dataclass(frozen=True)
class Fleet:
    front: Server
    remote: Process  # a gateway serving the demo repository
    flaky: Process  # another, killed and restarted by one test
    kserve: Process
    log: Path  # the front's prediction log


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("remote")
    repository = work / "models"
    shutil.copytree(DEMO, repository)
    models.affine_repository(repository, {1: 2.0})
    python = ensure_venv()
    gateway_cmd = [sys.executable, "-m", "gateway", "serve", "--drain-delay", "0", "--model-repository", str(DEMO)]
    remote = Process([*gateway_cmd, "--port", str(port := free_port())], port, work / "remote.log", "/v2/health/ready")
    flaky_port = free_port()
    flaky = Process([*gateway_cmd, "--port", str(flaky_port)], flaky_port, work / "flaky.log", "/v2/health/ready")
    kserve_port = free_port()
    kserve = Process(server_command(python, kserve_port), kserve_port, work / "kserve.log", "/v2/models/affine/ready")
    fast = "ejection: {consecutive_failures: 3, base_time: 300ms, max_time: 1s}, health_interval: 200ms"
    profile = "models/breast_cancer/2/profile.json"
    gpu = f'{{endpoint: "{remote.url}", model: breast_cancer, version: "2", profile: {profile}}}'
    config = work / "gateway.yaml"
    config.write_text(f"""
model_repository: models
prediction_log: {{path: predictions.jsonl, sample_rate: 1.0}}
routes:
  breast_cancer:
    versions:
      stable: 1
      gpu: {gpu}
    split: {{weights: {{stable: 50, gpu: 50}}, baseline: stable, sticky: {{key: [header:x-user-id], salt: s1}}}}
    drift: {{sample_rate: 1.0, window_size: 50}}
  shadowed:
    model: breast_cancer
    versions: {{stable: 1, gpu: {gpu}}}  # the same version as the first route's (one model, one name, one block)
    split: {{weights: {{stable: 100}}, baseline: stable}}
    shadow: {{to: gpu, percent: 100}}
  affine:
    versions: {{local: 1, kserve: {{endpoint: "{kserve.url}", model: affine, timeout: 500ms}}}}
    split: {{weights: {{local: 100}}, baseline: local}}
  flaky:
    model: breast_cancer
    versions: {{stable: 1, remote: {{endpoint: "{flaky.url}", model: breast_cancer, version: "2", {fast}}}}}
    split: {{weights: {{stable: 50, remote: 50}}, baseline: stable}}
  sturdy:
    model: breast_cancer
    versions:
      stable: 1
      backup: {{endpoint: "{flaky.url}", model: breast_cancer, version: "2", fallback: baseline, {fast}}}
    split: {{weights: {{stable: 50, backup: 50}}, baseline: stable}}
""")
    with running(remote), running(flaky), running(kserve):
        # --max-loop-lag 0: the machine runs four servers and the tests; load shedding is not what is tested here
        with gateway(["--config", str(config), "--max-loop-lag", "0"], work / "front.log") as front:
            yield Fleet(front, remote, flaky, kserve, work / "predictions.jsonl")


def post(fleet: Fleet, path: str, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{fleet.front.url}/v2/models/{path}/infer", content=content, headers=headers, timeout=10.0)


def metric(fleet: Fleet, name: str, **labels: str) -> float:
    text = httpx.get(f"{fleet.front.url}/metrics", timeout=5.0).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_json_through_the_gateway_is_the_remote_answer_named_for_the_route(fleet: Fleet) -> None:
    rows = [ROW, [v * 1.1 for v in ROW]]
    through = post(fleet, "breast_cancer/versions/gpu", body(rows, "r-1"))
    direct = httpx.post(f"{fleet.remote.url}/v2/models/breast_cancer/versions/2/infer", content=body(rows, "r-1"))
    assert through.status_code == 200, through.text
    assert through.headers["x-gateway-route"] == "breast_cancer/gpu;version=gpu;reason=pin"
    answer, expected = through.json(), direct.json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("breast_cancer", "gpu", "r-1")
    assert answer["outputs"] == expected["outputs"]
    kserve = post(fleet, "affine/versions/kserve", affine(1.0))
    assert kserve.status_code == 200, kserve.text
    assert kserve.json()["model_version"] == "kserve" and kserve.json()["outputs"][0]["data"] == [4.0, 7.0, 10.0, 13.0]


def test_tritonclient_binary_through_the_gateway_to_both_servers(fleet: Fleet) -> None:
    client = triton.InferenceServerClient(fleet.front.address)
    direct = triton.InferenceServerClient(f"127.0.0.1:{fleet.remote.port}")
    x = np.random.default_rng(7).normal(size=(5, 30)).astype(np.float32) * 10 + 20
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=True), triton.InferRequestedOutput("label")]
    got = client.infer("breast_cancer", [tensor], model_version="gpu", outputs=outputs)
    want = direct.infer("breast_cancer", [tensor], model_version="2", outputs=outputs)
    assert got.get_response()["model_version"] == "gpu"
    assert np.array_equal(got.as_numpy("probabilities"), want.as_numpy("probabilities"))
    assert np.array_equal(got.as_numpy("label"), want.as_numpy("label"))
    x4 = np.arange(8, dtype=np.float32).reshape(2, 4)
    tensor4 = triton.InferInput("X", [2, 4], "FP32")
    tensor4.set_data_from_numpy(x4, binary_data=True)  # a binary request KServe reads; it answers in JSON
    answer = client.infer("affine", [tensor4], model_version="kserve", outputs=[triton.InferRequestedOutput("Y")])
    assert np.array_equal(answer.as_numpy("Y"), x4 * 3 + 1)


def test_remote_faults_are_502_503_504_naming_the_endpoint(fleet: Fleet) -> None:
    slow = post(fleet, "affine/versions/kserve", affine(-1.0))  # the KServe model sleeps 2 s; the timeout is 0.5 s
    assert slow.status_code == 504 and fleet.kserve.url in slow.json()["error"], slow.text
    broken = post(fleet, "affine/versions/kserve", affine(-2.0))  # it raises: a 500 there
    assert broken.status_code == 502 and f"{fleet.kserve.url} answered 500" in broken.json()["error"]
    assert post(fleet, "affine/versions/kserve", affine(1.0)).status_code == 200
    assert metric(fleet, "gateway_remote_errors_total", endpoint=fleet.kserve.url, kind="timeout") == 1
    assert metric(fleet, "gateway_remote_errors_total", endpoint=fleet.kserve.url, kind="status") == 1
    # A request the remote gateway refuses (400) is the client's, named by the gateway's own check of it.
    short = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]})
    wrong = post(fleet, "breast_cancer/versions/gpu", short)
    assert wrong.status_code == 400 and wrong.json()["error"].startswith("input 'input' has shape [1, 2]")
    assert metric(fleet, "gateway_requests_total", model="breast_cancer", version="gpu", outcome="invalid_request") == 1


def test_a_remote_version_in_a_sticky_canary_split(fleet: Fleet) -> None:
    served: dict[str, int] = {}
    for user in range(60):
        response = post(fleet, "breast_cancer", body([ROW]), **{"x-user-id": f"user-{user}"})
        assert response.status_code == 200, response.text
        name = response.headers["x-gateway-route"].split(";")[0].split("/")[1]
        assert response.json()["model_version"] == {"stable": "1", "gpu": "gpu"}[name]
        served[name] = served.get(name, 0) + 1
        again = post(fleet, "breast_cancer", body([ROW]), **{"x-user-id": f"user-{user}"})
        assert again.headers["x-gateway-route"] == response.headers["x-gateway-route"]  # sticky
    assert served["stable"] >= 15 and served["gpu"] >= 15, served


def test_sampled_copies_of_remote_requests_reach_drift_and_the_prediction_log(fleet: Fleet) -> None:
    for i in range(20):
        assert post(fleet, "breast_cancer/versions/gpu", body([ROW], f"log-{i}")).status_code == 200
    poll(
        lambda: metric(fleet, "gateway_drift_samples_taken_total", model="breast_cancer", version="gpu") >= 20,
        10, "drift samples of the remote version",
    )  # fmt: skip
    assert metric(fleet, "gateway_remote_copies_total", endpoint=fleet.remote.url, outcome="decoded") >= 20

    def logged() -> bool:
        if not fleet.log.exists():
            return False
        records = [orjson.loads(line) for line in fleet.log.read_bytes().splitlines() if line]
        return sum(1 for r in records if r.get("version") == "gpu" and str(r.get("id", "")).startswith("log-")) >= 20

    poll(logged, 10, "prediction log records of the remote version")


def test_a_remote_version_as_the_shadow(fleet: Fleet) -> None:
    for _ in range(30):
        response = post(fleet, "shadowed", body([ROW]))
        assert response.status_code == 200 and response.json()["model_version"] == "1", response.text
    poll(
        lambda: metric(fleet, "gateway_shadow_requests_total", route="shadowed", version="gpu", outcome="completed")
        >= 30, 10, "shadow copies to the remote version",
    )  # fmt: skip
    assert metric(fleet, "gateway_shadow_rows_total", route="shadowed", version="gpu") >= 30


def test_an_endpoint_killed_mid_load_fails_fast_or_falls_back_then_recovers(fleet: Fleet) -> None:
    seen: list[tuple[float, int, float, str]] = []  # (when, status, seconds, error)
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=fleet.front.url, timeout=10.0) as client:
            while not stop.is_set():
                start = time.monotonic()
                answer = client.post("/v2/models/flaky/versions/remote/infer", content=body([ROW]))
                error = answer.json().get("error", "") if answer.status_code != 200 else ""
                seen.append((start, answer.status_code, time.monotonic() - start, error))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        poll(lambda: sum(s == 200 for _, s, _, _ in seen) >= 20, 10, "load before the kill")
        killed_at = time.monotonic()
        fleet.flaky.kill()
        poll(lambda: sum("is ejected" in e for _, _, _, e in seen) >= 50, 10, "ejected answers")
        fast = [seconds for _, status, seconds, error in seen if "is ejected" in error]
        assert all(status in (200, 502, 503) for _, status, _, _ in seen)
        assert sorted(fast)[len(fast) // 2] < 0.01, "an ejected endpoint's 503s come at once"

        def diverted() -> bool:  # same endpoint, but this version falls back to its baseline while it is ejected
            sturdy = post(fleet, "sturdy/versions/backup", body([ROW]))
            assert sturdy.status_code in (200, 503), sturdy.text  # a 503 when this request was the half-open probe
            return sturdy.status_code == 200 and sturdy.headers["x-gateway-route"].endswith("reason=fallback")

        poll(diverted, 10, "a request served by the baseline instead")
        ready = httpx.get(f"{fleet.front.url}/v2/models/flaky/versions/remote/ready")
        assert ready.status_code == 503
        fleet.flaky.start()
        restarted = time.monotonic()
        poll(lambda: any(when > restarted and status == 200 for when, status, _, _ in seen), 15, "recovery")
    finally:
        stop.set()
        worker.join()
    assert killed_at < restarted
    assert metric(fleet, "gateway_remote_ejections_total", endpoint=fleet.flaky.url) >= 1
    assert metric(fleet, "gateway_remote_fallbacks_total", endpoint=fleet.flaky.url) >= 1
    poll(lambda: httpx.get(f"{fleet.front.url}/v2/models/flaky/versions/remote/ready").status_code == 200, 10,
         "model ready again")  # fmt: skip


def test_promtool_accepts_the_exposition_with_remote_series(fleet: Fleet) -> None:
    assert post(fleet, "breast_cancer/versions/gpu", body([ROW])).status_code == 200
    text = httpx.get(f"{fleet.front.url}/metrics").text
    assert f'gateway_remote_requests_total{{endpoint="{fleet.remote.url}",outcome="success"}}' in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package 'prometheus' (.ci/run does)")
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
