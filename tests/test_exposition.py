"""The /metrics text is valid for Prometheus' own checker and parses back to what the requests did."""

from __future__ import annotations

import shutil
import subprocess

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient


def scrape(client: TestClient) -> str:
    for body in (
        orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
        b"{",
    ):
        client.post("/v2/models/affine/infer", content=body)
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text: str = response.text
    return text


def test_promtool_accepts_the_exposition(repo_client: TestClient) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package 'prometheus' (.ci/run does)")
    result = subprocess.run([promtool, "check", "metrics"], input=scrape(repo_client).encode(), capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_exposition_parses_back(repo_client: TestClient) -> None:
    families = {f.name: f for f in text_string_to_metric_families(scrape(repo_client))}
    requests = {
        (s.labels["model"], s.labels["version"], s.labels["outcome"]): s.value
        for s in families["gateway_requests"].samples
        if s.name == "gateway_requests_total"
    }
    assert requests[("affine", "2", "success")] == 1 and requests[("affine", "2", "invalid_request")] == 1
    assert families["gateway_request_duration_seconds"].type == "histogram"
    buckets = [
        s.labels["le"] for s in families["gateway_request_duration_seconds"].samples if s.name.endswith("_bucket")
    ]
    assert buckets[0] == "0.0001" and "10.0" in buckets
    assert families["gateway_build_info"].samples[0].value == 1
    assert families["gateway_config_generation"].samples[0].value == 1
