"""End to end over HTTP: shifted traffic to one demo version turns its drift verdict on, and not the other's."""

from __future__ import annotations

import csv
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server import gateway

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "config" / "data"


def rows(name: str) -> list[list[float]]:
    with (DATA / name).open() as f:
        reader = csv.reader(f)
        next(reader)
        return [[float(v) for v in row[:30]] for row in reader]


def send(client: httpx.Client, version: str, data: list[list[float]], times: int) -> None:
    for _ in range(times):
        for start in range(0, len(data), 10):
            chunk = data[start : start + 10]
            body = {"inputs": [{"name": "input", "shape": [len(chunk), 30], "datatype": "FP32", "data": chunk}]}
            r = client.post(f"/v2/models/breast_cancer/versions/{version}/infer", content=orjson.dumps(body))
            assert r.status_code == 200, r.text


def test_shifted_traffic_flags_only_the_version_that_got_it(tmp_path: Path) -> None:
    # The demo config: drift on for both versions, windows of 300 rows, 2 of the last 3 windows to flag a version.
    with gateway([], tmp_path / "log", cwd=ROOT) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        send(client, "stable", rows("breast_cancer_test.csv"), 4)  # 684 rows: two full windows
        send(client, "canary", rows("breast_cancer_shifted.csv"), 4)
        deadline = time.monotonic() + 60
        while True:
            versions = {v["version"]: v for v in client.get("/admin/drift").json()["versions"]}
            if all(versions[v]["windows_total"] == 2 for v in ("1", "2")):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"windows not evaluated in time: {versions}")
            time.sleep(0.05)
        assert versions["2"]["drifting"] and not versions["1"]["drifting"]
        shifted = {"concave points error", "fractal dimension error", "worst compactness", "worst concavity"}
        # The four shifted columns, and the joint monitor (rows leave the reference's principal subspace too).
        assert set(versions["2"]["window"]["drifted_features"]) == shifted | {"joint:reconstruction_error"}
        assert versions["1"]["window"]["drifted_features"] == []
        exposition = client.get("/metrics").text
        promtool = shutil.which("promtool")
        assert promtool is not None, "install the Debian package 'prometheus' (.ci/run does)"
        check = subprocess.run([promtool, "check", "metrics"], input=exposition.encode(), capture_output=True)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
        families = {f.name: f for f in text_string_to_metric_families(exposition)}
        detected = {s.labels["version"]: s.value for s in families["gateway_drift_detected"].samples}
        assert detected == {"1": 0.0, "2": 1.0}
        taken = {s.labels["version"]: s.value for s in families["gateway_drift_samples_taken"].samples
                 if s.name.endswith("_total")}  # fmt: skip
        assert taken == {"1": 684.0, "2": 684.0}
    assert "breast_cancer/2 is drifting" in server.output()
