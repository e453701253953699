"""Feedback end to end: predictions, then delayed feedback (unknown ids, duplicates, expired ids, malformed bodies,
a batch, a stateless reward) give exactly the expected per-version counts, quality, test decision, alert and
Prometheus series; and over real HTTP through the direct path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import models
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server import gateway
from starlette.testclient import TestClient

from gateway.app import Settings, create_app

# Version 1 multiplies by 2, version 2 by -1: on a one-hot input, 1's argmax is the hot feature (right), 2's is not.
CONFIG = """
model_repository: {repo}
routes:
  affine:
    versions: {{a: 1, b: 2}}
    split:
      weights: {{a: 50, b: 50}}
      baseline: a
      overrides:
        - {{header: {{x-arm: a}}, to: a}}
        - {{header: {{x-arm: b}}, to: b}}
    experiment:
      metric: accuracy
      min_samples: 20
      window: 50
      alert: {{floor: 0.9}}
    feedback: {{max_records: 1000, ttl: 60s}}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def body(request_id: str, hot: int) -> bytes:
    data = [1.0 if i == hot else 0.0 for i in range(4)]
    return orjson.dumps(
        {"id": request_id, "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": data}]}
    )


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    repo = models.affine_repository(tmp_path / "repo", {1: 2.0, 2: -1.0})
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG.format(repo=repo))
    return path


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def client(config: Path, clock: Clock) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(config_path=config, watch=False), clock=clock)) as test_client:
        yield test_client


def serve(client: TestClient, arm: str, request_id: str, hot: int) -> None:
    response = client.post("/v2/models/affine/infer", content=body(request_id, hot), headers={"x-arm": arm})
    assert response.status_code == 200 and response.json()["id"] == request_id
    assert response.headers["x-gateway-route"].startswith(f"affine/{arm};")


def feedback(client: TestClient, payload: object, **headers: str) -> httpx.Response:
    response: httpx.Response = client.post("/v2/models/affine/feedback", content=orjson.dumps(payload), headers=headers)
    return response


def test_feedback_joins_predictions_counts_every_outcome_and_decides(client: TestClient, clock: Clock) -> None:
    for i in range(40):
        serve(client, "a", f"a{i}", i % 4)
        serve(client, "b", f"b{i}", i % 4)
    client.post("/v2/models/affine/infer", content=body("", 0).replace(b'"id":"",', b""))  # no id: not recorded
    # One at a time: accepted, then the same id again (409), an unknown id (404), a malformed body (400).
    ok = feedback(client, {"id": "a0", "label": 0})
    assert ok.status_code == 200 and ok.json() == {"id": "a0", "version": "a", "outcome": "accepted"}
    again = feedback(client, {"id": "a0", "label": 0})
    assert again.status_code == 409 and "already judged" in again.json()["error"]
    unknown = feedback(client, {"id": "nope", "label": 1})
    assert unknown.status_code == 404 and "'nope' was never served" in unknown.json()["error"]
    malformed = feedback(client, {"id": "a1", "label": 1, "reward": 1})
    assert malformed.status_code == 400 and "exactly one of label, value or reward" in malformed.json()["error"]
    wrong_rows = feedback(client, {"id": "a1", "label": [1, 2]})
    assert wrong_rows.status_code == 400 and "2 labels for a prediction of 1 rows" in wrong_rows.json()["error"]
    # A batch: the rest of both arms' labels, with a duplicate and an unknown id inside.
    batch = [{"id": f"a{i}", "label": i % 4} for i in range(2, 40)] + [
        {"id": f"b{i}", "label": i % 4} for i in range(40)
    ]
    batch += [{"id": "a2", "label": 2}, {"id": "ghost", "label": 0}]
    answer = feedback(client, batch)
    assert answer.status_code == 200
    assert answer.json()["outcomes"] == {"accepted": 78, "duplicate": 1, "unknown": 1, "expired": 0, "rejected": 0}
    assert [p["index"] for p in answer.json()["problems"]] == [78, 79]
    # Expired: served, then judged after the record's 60 s.
    serve(client, "a", "late", 1)
    clock.now += 61.0
    expired = feedback(client, {"id": "late", "label": 1})
    assert expired.status_code == 404 and "has expired" in expired.json()["error"]
    # A stateless reward: the version from the answer's header, as another replica would receive it.
    reward = feedback(client, {"id": "elsewhere", "reward": 1}, **{"x-gateway-route": "affine/b;version=2;reason=x"})
    assert reward.status_code == 200 and reward.json()["version"] == "b"

    report = client.get("/admin/experiments").json()["affine"]
    # a1 was refused whole (a malformed body is not an outcome of an item): it is still waiting for its feedback.
    assert report["feedback"] == {"accepted": 80, "duplicate": 2, "unknown": 2, "expired": 1, "rejected": 1}
    assert report["record"]["recorded"] == 81 and report["record"]["expired"] == 1
    versions = report["versions"]
    assert versions["a"]["accuracy"]["n"] == 39 and versions["a"]["accuracy"]["cumulative"] == 1.0
    assert versions["b"]["accuracy"]["n"] == 40 and versions["b"]["accuracy"]["cumulative"] == 0.0
    assert versions["b"]["reward"]["cumulative"] == 1.0 and versions["b"]["conversion"]["n"] == 1
    assert versions["a"]["accuracy_per_class"]["2"] == {"n": 10, "accuracy": 1.0}
    experiment = report["experiment"]
    assert experiment["decision"] == "candidate worse" and experiment["not_worse_by_margin"] is False
    assert experiment["p_value"] < 0.05 and experiment["interval"][1] < 0
    assert experiment["alerts"] == {"a": False, "b": True}  # b's windowed accuracy is under the 0.9 floor

    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    counts = {s.labels["outcome"]: s.value for s in families["gateway_feedback"].samples if s.name.endswith("_total")}
    assert counts == {"accepted": 80, "duplicate": 2, "unknown": 2, "expired": 1, "rejected": 1, "malformed": 1}
    quality = {
        (s.labels["version"], s.labels["metric"], s.labels["window"]): s.value
        for s in families["gateway_quality"].samples
    }
    assert quality[("a", "accuracy", "cumulative")] == 1.0 and quality[("b", "accuracy", "window")] == 0.0
    alerts = {s.labels["version"]: s.value for s in families["gateway_quality_alert"].samples}
    assert alerts == {"a": 0.0, "b": 1.0}
    decision = {s.labels["decision"]: s.value for s in families["gateway_experiment_decision"].samples}
    assert decision["candidate_worse"] == 1.0 and decision["no_decision_yet"] == 0.0


def test_a_route_without_feedback_refuses_it(tmp_path: Path) -> None:
    repo = models.affine_repository(tmp_path / "repo", {1: 2.0})
    path = tmp_path / "gateway.yaml"
    path.write_text(f"model_repository: {repo}\nroutes:\n  affine:\n    versions: {{a: 1}}\n")
    with TestClient(create_app(Settings(config_path=path, watch=False))) as client:
        refused = feedback(client, {"id": "x", "label": 1})
        assert refused.status_code == 400 and "declares no feedback or experiment" in refused.json()["error"]
        assert client.post("/v2/models/nope/feedback", content=b"{}").status_code == 404


def test_feedback_over_real_http_joins_requests_the_direct_path_served(config: Path, tmp_path: Path) -> None:
    with gateway(["--config", str(config)], tmp_path / "log") as server:
        with httpx.Client(base_url=server.url) as http:
            for i in range(5):
                served = http.post("/v2/models/affine/infer", content=body(f"r{i}", i % 4), headers={"x-arm": "a"})
                assert served.status_code == 200
            judged = http.post(
                "/v2/models/affine/feedback", content=orjson.dumps([{"id": f"r{i}", "label": i % 4} for i in range(5)])
            )
            assert judged.json()["outcomes"]["accepted"] == 5
            report = http.get("/admin/experiments").json()["affine"]
            assert report["versions"]["a"]["accuracy"] == {"n": 5, "cumulative": 1.0, "window": 1.0, "window_n": 5}


def test_a_long_feedback_list_is_judged_in_slices_with_the_same_answer(client: TestClient) -> None:
    for i in range(450):
        serve(client, "a", f"n{i}", i % 4)
    items: list[dict[str, object]] = [{"id": f"n{i}", "label": i % 4} for i in range(450)]
    items.insert(300, {"id": "n1", "label": 1})  # a duplicate in the third slice
    answer = feedback(client, items)
    assert answer.json()["outcomes"] == {"accepted": 450, "duplicate": 1, "unknown": 0, "expired": 0, "rejected": 0}
    assert answer.json()["problems"][0]["index"] == 300
    malformed = feedback(client, [*items[:250], {"id": "x", "label": None}])  # the fault is in the second slice
    assert malformed.status_code == 400 and "feedback[250].label" in malformed.json()["error"]
    report = client.get("/admin/experiments").json()["affine"]
    assert report["versions"]["a"]["accuracy"]["n"] == 450  # the refused list judged nothing, not even its first slice
