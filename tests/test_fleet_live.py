"""A fleet rollout end to end: a real Prometheus scraping two real gateway processes that watch one routing file,
and `gateway rollout-controller` judging two rollouts from Prometheus and publishing each step into that file.

- `breast_cancer`: the demo's good MLP (version 2) against its logistic regression (1), with a drift monitor: shadow
  100 %, then 50 %, then 100 %: promoted;
- `affine`: a candidate that errors on a fifth of the inputs (tests/models.py `faulty`) at 50 %: rolled back.

Load runs throughout, to both replicas, paced and seeded. The test watches the routing file and both replicas'
`gateway_route_weight_ratio`: every step the controller publishes is shown by both replicas, alike, before the next
one; the same users are routed to the same versions by both; and at the end both serve the promoted candidate and
the rolled-back baseline. Every wait polls with a deadline; the module takes about 30 s.
"""

from __future__ import annotations

import contextlib
import csv
import random
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import models
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_server import poll, prometheus
from server import Server, free_port, gateway, running

ROOT = Path(__file__).resolve().parent.parent
ROWS = ROOT / "config" / "data" / "breast_cancer_train.csv"
RATE = 300.0  # requests a second, both replicas and routes together: enough for 50-sample gates in a second
SOURCE = """
model_repository: ./models
routes:
  breast_cancer:
    versions: {stable: 1, canary: 2}
    split: {weights: {stable: 100}, baseline: stable, sticky: {key: [header:x-user-id], salt: fleet-test}}
    drift: {sample_rate: 1.0, window_size: 50}
    rollout:
      candidate: canary
      steps:
        - {shadow: 100, duration: 2s, min_requests: 100}
        - {weight: 50, duration: 1s, min_requests: 100}
        - {weight: 100, duration: 1s, min_requests: 50}
      interval: 0.3s
      failure_limit: 2
      progress_deadline: 60s
      gates: {max_error_rate: 0.05, max_error_rate_increase: 0.05, max_p99_latency_ratio: 10, min_shadow_agreement: 0.9,
              block_on_drift: true, max_prediction_shift_js: null, min_samples: 50}
      state_file: state/breast_cancer.json
  affine:
    versions: {stable: 1, faulty: 4}
    split: {weights: {stable: 100}, baseline: stable, sticky: {key: [header:x-user-id], salt: fleet-test}}
    rollout:
      candidate: faulty
      steps:
        - {weight: 50, duration: 1s, min_requests: 100}
        - {weight: 100, duration: 1s}
      interval: 0.3s
      failure_limit: 1
      progress_deadline: 60s
      gates: {max_error_rate: 0.05, max_error_rate_increase: 0.05, max_prediction_shift_js: null, min_samples: 50}
      state_file: state/affine.json
"""
TERMINAL = ("succeeded", "failed", "aborted")


@dataclass
class Fleet:
    folder: Path
    replicas: tuple[str, str]  # admin base URLs (metrics)
    servers: tuple[Server, Server]
    controller_metrics: str
    load: Load

    def state(self, route: str) -> dict[str, Any]:
        path = self.folder / "state" / f"{route}.json"
        return orjson.loads(path.read_bytes()) if path.exists() else {}

    def published(self) -> dict[str, tuple[dict[str, float], str | None]]:
        """Route -> (shares, the version it shadows) as the routing file says."""
        document = yaml.safe_load((self.folder / "gateway.yaml").read_text())
        return {
            name: (_shares(route["split"]["weights"]), (route.get("shadow") or {}).get("to"))
            for name, route in document["routes"].items()
        }

    def applied(self, admin: str) -> dict[str, tuple[dict[str, float], str | None]]:
        """Route -> (shares, the version it has shadow series for) as a replica's metrics show them."""
        text = httpx.get(f"{admin}/metrics", timeout=5.0).text
        shares: dict[str, dict[str, float]] = {}
        shadows: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if family.name == "gateway_route_weight_ratio":
                    shares.setdefault(sample.labels["route"], {})[sample.labels["version"]] = sample.value
                elif sample.name == "gateway_shadow_requests_total":
                    shadows[sample.labels["route"]] = sample.labels["version"]
        return {route: (split, shadows.get(route)) for route, split in shares.items()}


def _shares(weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {name: weight / total for name, weight in weights.items()}


def _same(shown: tuple[dict[str, float], str | None] | None, published: tuple[dict[str, float], str | None]) -> bool:
    """Whether a replica shows what was published: the shares, and the shadow's series when the step shadows (a
    replica creates them when it starts copying, and keeps them while the route has the version)."""
    if shown is None:
        return False
    (mine, copied), (theirs, shadow) = shown, published
    return (
        mine.keys() == theirs.keys()
        and all(abs(mine[k] - theirs[k]) < 1e-6 for k in mine)
        and (shadow is None or copied == shadow)
    )


with ROWS.open() as _f:
    ROWS_CACHE = [[float(v) for v in row[:30]] for row in list(csv.reader(_f))[1:]]


class Load:
    """Paced, seeded requests to both replicas on both routes until stopped; failures are counted, not raised."""

    def __init__(self, servers: tuple[Server, Server]) -> None:
        self.rows = ROWS_CACHE
        self.servers = servers
        self.stop = threading.Event()
        self.answers: dict[tuple[str, int], int] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(20261212)
        clients = [httpx.Client(base_url=s.url, timeout=10.0) for s in self.servers]
        start, sent = time.monotonic(), 0
        try:
            while not self.stop.is_set():
                pause = start + sent / RATE - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # pacing to RATE, not a wait for anything
                route = "breast_cancer" if sent % 2 else "affine"
                if route == "breast_cancer":
                    data = rng.choice(self.rows)
                    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": data}]}
                else:
                    data = [rng.uniform(0.0, 5.0) for _ in range(4)]  # the faulty version refuses a first value >= 4
                    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": data}]}
                headers = {"x-user-id": f"u{rng.randrange(1000)}"}
                response = clients[sent % 2].post(
                    f"/v2/models/{route}/infer", content=orjson.dumps(body), headers=headers
                )
                key = (route, response.status_code)
                self.answers[key] = self.answers.get(key, 0) + 1
                sent += 1
        finally:
            for client in clients:
                client.close()


PROBES = random.Random(7)


def routed(client: httpx.Client, route: str, user: str) -> str:
    """The version the replica behind `client` serves `user` on `route` (from the route header). A breast_cancer
    probe is a training row, as the load sends: the drift monitors see every row served, and a made-up one would
    look like drift."""
    if route == "breast_cancer":
        row = PROBES.choice(ROWS_CACHE)
        body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]}
    else:
        body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}]}
    response = client.post(f"/v2/models/{route}/infer", content=orjson.dumps(body), headers={"x-user-id": user})
    return response.headers["x-gateway-route"].split(";")[0].split("/")[1]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet-live")
    shutil.copytree(ROOT / "config" / "models", tmp / "models")
    models.affine(tmp / "models" / "affine" / "1" / "model.onnx", scale=2.0)
    models.faulty(tmp / "models" / "affine" / "4" / "model.onnx", scale=2.0)
    (tmp / "gateway.source.yaml").write_text(SOURCE)
    admins = (free_port(), free_port())
    controller_port = free_port()
    # The replicas start on the source's own weights, before any rollout (as a fleet does when its controller is
    # deployed); the controller's first publication is the rollouts' first steps.
    document = yaml.safe_load(SOURCE)
    for route in document["routes"].values():
        del route["rollout"]
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(document))
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(prometheus(tmp, [f"127.0.0.1:{p}" for p in admins]))
        servers = tuple(
            stack.enter_context(
                gateway(
                    [
                        *("--config", str(tmp / "gateway.yaml"), "--admin-port", str(port), "--reload-interval", "0.2"),
                        # No shedding on a lagging loop: this shared 2-core machine lags at times, and a refusal
                        # (503) counts against the version that served it, which is not what this test judges.
                        *("--max-loop-lag", "0"),
                    ],
                    tmp / f"gateway-{i}.log",
                    cwd=tmp,
                )
            )
            for i, port in enumerate(admins)
        )
        fleet_config = {
            "source": "gateway.source.yaml",
            "output": "gateway.yaml",
            "prometheus": {"url": url, "selector": {"job": "gateway"}},
            "tick": "100ms",
        }
        (tmp / "fleet.yaml").write_text(yaml.safe_dump(fleet_config))
        command = [
            *(sys.executable, "-m", "gateway", "rollout-controller", "--config", str(tmp / "fleet.yaml")),
            *("--metrics-port", str(controller_port), "--log-level", "debug"),
        ]
        log = stack.enter_context((tmp / "controller.log").open("wb"))
        load = Load((servers[0], servers[1]))
        load.thread.start()
        stack.callback(load.thread.join, 30)
        stack.callback(load.stop.set)
        controller = stack.enter_context(running(command, log))
        yield Fleet(
            tmp,
            (f"http://127.0.0.1:{admins[0]}", f"http://127.0.0.1:{admins[1]}"),
            (servers[0], servers[1]),
            f"http://127.0.0.1:{controller_port}",
            load,
        )
        assert controller.poll() is None, (tmp / "controller.log").read_text()


def test_the_fleet_promotes_a_good_candidate_and_rolls_back_a_bad_one_on_every_replica(fleet: Fleet) -> None:
    # Route -> each publication (shares, shadowed version) once both replicas showed it.
    steps: dict[str, list[tuple[dict[str, float], str | None]]] = {"breast_cancer": [], "affine": []}
    users = [f"u{i}" for i in range(10)]
    clients = [httpx.Client(base_url=server.url, timeout=5.0) for server in fleet.servers]

    def watch() -> bool:
        published = fleet.published()
        applied = [fleet.applied(admin) for admin in fleet.replicas]
        for route, shares in published.items():
            if steps[route] and _same(steps[route][-1], shares):
                continue
            if not all(_same(a.get(route), shares) for a in applied):
                continue  # not applied everywhere yet
            # Both replicas route every user alike (the same weights, the same version order): asked of both, and
            # counted only when neither moved on meanwhile (the controller may publish the next step at any time).
            versions = [(routed(clients[0], route, u), routed(clients[1], route, u)) for u in users]
            if fleet.published()[route] == shares and all(
                _same(fleet.applied(admin).get(route), shares) for admin in fleet.replicas
            ):
                assert all(a == b for a, b in versions), versions
                steps[route].append(shares)
        return all(fleet.state(route).get("phase") in TERMINAL for route in steps)

    poll("both rollouts decided", watch, deadline=90.0, interval=0.1)

    def settled() -> bool:
        watch()
        return _final(steps)

    poll("both replicas apply the decisions", settled, deadline=30.0, interval=0.1)

    good, bad = fleet.state("breast_cancer"), fleet.state("affine")
    assert good["phase"] == "succeeded", good["reason"]
    assert [(t["to"], t["step"]) for t in good["history"]] == [
        ("validating", -1), ("shadowing", 0), ("progressing", 1), ("progressing", 2), ("succeeded", 2),
    ]  # fmt: skip
    assert bad["phase"] == "failed"
    assert bad["history"][-1]["step"] == 0 and "error_rate" in bad["reason"], bad["reason"]
    # Every step the controller published was applied by both replicas alike: shadow (all on stable), 50 %, 100 %.
    assert [(s["canary"], to) for s, to in steps["breast_cancer"]] == [(0.0, "canary"), (0.5, None), (1.0, None)]
    assert [(s["faulty"], to) for s, to in steps["affine"]] == [(0.5, None), (0.0, None)]
    for user in users:
        assert {routed(c, "breast_cancer", user) for c in clients} == {"canary"}
        assert {routed(c, "affine", user) for c in clients} == {"stable"}
    for client in clients:
        client.close()
    # Nothing failed but the faulty candidate's own refusals while it served.
    assert {k for k in fleet.load.answers if k[1] != 200} <= {("affine", 400), ("affine", 500)}
    # The controller exports its rollouts as a replica does in process.
    text = httpx.get(f"{fleet.controller_metrics}/metrics", timeout=5.0).text
    assert 'gateway_rollout_phase{phase="succeeded",route="breast_cancer"} 1.0' in text
    assert 'gateway_rollout_transitions_total{route="affine",to="failed"} 1.0' in text


def _final(steps: dict[str, list[tuple[dict[str, float], str | None]]]) -> bool:
    good, bad = steps["breast_cancer"], steps["affine"]
    return bool(good and bad) and good[-1][0].get("canary") == 1.0 and bad[-1][0].get("faulty") == 0.0
