"""Graceful drain: SIGTERM mid-load on loopback. Readiness goes 503 first, the listener keeps accepting for the drain
delay with every answer closing its connection, every request the server read gets a complete answer (none is cut
off), the prediction log holds every record it accepted, and the process exits 0 within its bound. A second signal
exits at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import models
import orjson
from server import free_port, wait_ready

BODY = orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]})


def config(tmp_path: Path) -> Path:
    repo = models.affine_repository(tmp_path / "repo", {1: 2.0})
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"model_repository: {repo}\nroutes:\n  affine:\n    versions: {{a: 1}}\n"
        f"prediction_log: {{path: {tmp_path / 'predictions.jsonl'}, sample_rate: 1.0}}\n"
    )
    return path


@dataclass
class Clients:
    url: str
    outcomes: dict[str, int] = field(default_factory=dict)
    closes: int = 0  # answers that carried Connection: close
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not self.stop.is_set():
                try:
                    response = client.post("/v2/models/affine/infer", content=BODY)
                    outcome = str(response.status_code)
                    closed = response.headers.get("connection") == "close"
                except httpx.ConnectError:  # the listener is closed: a request the server never read
                    outcome, closed = "refused", False
                    time.sleep(0.01)  # back off: the server is going away
                except httpx.HTTPError as exc:
                    outcome, closed = type(exc).__name__, False
                with self.lock:
                    self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
                    self.closes += closed


def start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config(tmp_path)), "--port", str(port), *extra],
            stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    class _Server:  # what wait_ready reads
        def __init__(self) -> None:
            self.process, self.url = process, url

        def output(self) -> str:
            return log.read_text(errors="replace")

    wait_ready(_Server(), 60.0)  # type: ignore[arg-type]
    return process, url, log


def test_sigterm_under_load_drains_without_cutting_a_request(tmp_path: Path) -> None:
    """The clients play a load balancer's part: they keep sending until half the drain delay after readiness went
    503 (an endpoint controller takes that long to notice), then send nothing new. Had they kept connecting, a
    connection still in the kernel's accept queue when the listener closes would be reset with its request unread:
    that is what the drain delay is for."""
    process, url, log = start(tmp_path, "--drain-delay", "1.0", "--drain-timeout", "10")
    clients = Clients(url)
    threads = [threading.Thread(target=clients.run, daemon=True) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        end = time.monotonic() + 10
        while sum(clients.outcomes.values()) < 500 and time.monotonic() < end:
            time.sleep(0.01)  # poll interval, bounded by the deadline: let the load build up
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        readiness = None
        while time.monotonic() - signalled < 0.9:
            readiness = httpx.get(f"{url}/v2/health/ready", timeout=2).status_code
            if readiness == 503:
                break
            time.sleep(0.01)  # poll interval, bounded by the drain delay
        assert readiness == 503  # out of rotation at once, while still serving
        noticed = time.monotonic() + 0.5
        while time.monotonic() < noticed:
            time.sleep(0.01)  # the load balancer noticing, bounded
        clients.stop.set()
        code = process.wait(timeout=15)
        elapsed = time.monotonic() - signalled
    finally:
        clients.stop.set()
        for thread in threads:
            thread.join(timeout=15)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, log.read_text()[-3000:]
    assert 1.0 <= elapsed < 12.0
    outcomes = clients.outcomes
    assert set(outcomes) == {"200"}, outcomes  # no request was cut off, none refused, none answered with an error
    assert outcomes["200"] > 500 and clients.closes >= 8  # each client's connection was closed by an answer
    records = [
        line for path in tmp_path.glob("predictions.jsonl*") for line in path.read_text().splitlines() if line.strip()
    ]
    assert len(records) == outcomes["200"]  # every answered request was logged, and flushed before the exit


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    process, url, log = start(tmp_path, "--drain-delay", "30")
    process.send_signal(signal.SIGTERM)
    end = time.monotonic() + 5
    while httpx.get(f"{url}/v2/health/ready", timeout=2).status_code != 503 and time.monotonic() < end:
        time.sleep(0.01)  # poll interval, bounded by the deadline
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)
    assert time.monotonic() - signalled < 5  # not the 30 s drain delay
    assert "again: exiting now" in log.read_text()
