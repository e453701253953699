from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from gateway.app import Settings, create_app
from gateway.protocol import DTYPES

INFER = "/v2/models/affine/infer"


def affine_body(rows: list[list[float]], **extra: Any) -> bytes:
    shape = [len(rows), len(rows[0])]
    return orjson.dumps({"inputs": [{"name": "X", "shape": shape, "datatype": "FP32", "data": rows}], **extra})


def test_server_metadata_and_health(repo_client: TestClient) -> None:
    meta = repo_client.get("/v2").json()
    assert meta["name"] == "gateway" and "binary_tensor_data" in meta["extensions"]
    assert repo_client.get("/v2/health/live").status_code == 200
    assert repo_client.get("/v2/health/ready").status_code == 200


def test_model_metadata_reads_the_signature(repo_client: TestClient) -> None:
    meta = repo_client.get("/v2/models/affine").json()
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "Y", "datatype": "FP32", "shape": [-1, 4]}]
    assert repo_client.get("/v2/models/affine/versions/1").json()["name"] == "affine"


def test_model_ready_per_version(repo_client: TestClient) -> None:
    assert repo_client.get("/v2/models/affine/ready").status_code == 200
    assert repo_client.get("/v2/models/affine/versions/2/ready").status_code == 200
    assert repo_client.get("/v2/models/affine/versions/7/ready").status_code == 404
    assert repo_client.get("/v2/models/nope/ready").status_code == 404


def test_unversioned_infer_goes_to_the_highest_version(repo_client: TestClient) -> None:
    response = repo_client.post(INFER, content=affine_body([[1, 2, 3, 4]], id="abc"))
    assert response.status_code == 200
    body = response.json()
    assert body["model_name"] == "affine" and body["model_version"] == "2" and body["id"] == "abc"
    assert body["outputs"][0]["data"] == [4.0, 7.0, 10.0, 13.0]  # x * 3 + 1
    assert response.headers["x-gateway-route"].startswith("affine/v2;")


def test_pinned_version_serves_and_is_echoed(repo_client: TestClient) -> None:
    response = repo_client.post("/v2/models/affine/versions/1/infer", content=affine_body([[1, 1, 1, 1]]))
    assert response.json()["model_version"] == "1"
    assert response.json()["outputs"][0]["data"] == [3.0] * 4


def test_outputs_subset_and_all_types_match_onnxruntime(repo_client: TestClient, all_types_repo: Path) -> None:
    session = ort.InferenceSession(str(all_types_repo / "all_types" / "1" / "model.onnx"))
    inputs, feeds = [], {}
    rng = np.random.default_rng(0)
    for datatype, dtype in DTYPES.items():
        if datatype == "BYTES":
            array = np.array([["a", "bc"], ["", "d"]], dtype=object)
        elif datatype == "BOOL":
            array = rng.integers(0, 2, (2, 2)).astype(bool)
        else:
            array = rng.integers(0, 100, (2, 2)).astype(dtype)
        feeds[f"in_{datatype}"] = array
        inputs.append({"name": f"in_{datatype}", "datatype": datatype, "shape": [2, 2], "data": array.tolist()})
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    response = repo_client.post("/v2/models/all_types/infer", content=orjson.dumps({"inputs": inputs}))
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert len(outputs) == len(DTYPES)
    for name, array in expected.items():
        assert outputs[name]["shape"] == [2, 2]
        assert outputs[name]["data"] == array.ravel().tolist()
    only = repo_client.post(
        "/v2/models/all_types/infer", content=orjson.dumps({"inputs": inputs, "outputs": [{"name": "out_INT8"}]})
    )
    assert [o["name"] for o in only.json()["outputs"]] == ["out_INT8"]


def test_binary_extension_both_ways(repo_client: TestClient) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    head = orjson.dumps(
        {
            "inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}}],
            "outputs": [{"name": "Y", "parameters": {"binary_data": True}}],
        }
    )
    response = repo_client.post(
        INFER, content=head + x.tobytes(), headers={"Inference-Header-Content-Length": str(len(head))}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    meta = orjson.loads(response.content[:length])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 32
    y = np.frombuffer(response.content[length:], dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(y, x * 3 + 1)


def test_bytes_binary_round_trip(repo_client: TestClient) -> None:
    words = ["a", "héllo", "", "z"]
    raw = b"".join(struct.pack("<I", len(w.encode())) + w.encode() for w in words)
    inputs = []
    blobs = b""
    for datatype in DTYPES:
        if datatype == "BYTES":
            inputs.append(
                {"name": "in_BYTES", "datatype": "BYTES", "shape": [2, 2], "parameters": {"binary_data_size": len(raw)}}
            )
            blobs += raw
        else:
            inputs.append(
                {
                    "name": f"in_{datatype}",
                    "datatype": datatype,
                    "shape": [2, 2],
                    "data": [0, 0, 0, 0] if datatype != "BOOL" else [False] * 4,
                }
            )
    head = orjson.dumps({"inputs": inputs, "outputs": [{"name": "out_BYTES", "parameters": {"binary_data": True}}]})
    response = repo_client.post(
        "/v2/models/all_types/infer", content=head + blobs, headers={"Inference-Header-Content-Length": str(len(head))}
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    assert response.content[length:] == raw


@pytest.mark.parametrize(
    ("content", "headers", "status", "message"),
    [
        (b"{bad", {}, 400, "not valid JSON"),
        (affine_body([[1, 2, 3]]), {}, 400, "input 'X' has shape [1, 3]; the model expects FP32[-1, 4]"),
        (orjson.dumps({"inputs": [{"name": "Z", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}), {}, 400,
         "unknown input 'Z'; the model's inputs are: X"),
        (orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}), {}, 400,
         "input 'X' has datatype FP64; the model expects FP32"),
        (affine_body([[1, 2, 3, 4]], outputs=[{"name": "nope"}]), {}, 400, "unknown output 'nope'"),
        (affine_body([[1, 2, 3, 4]]), {"Inference-Header-Content-Length": "x"}, 400, "Unable to parse"),
        (affine_body([[1, 2, 3, 4]]), {"Inference-Header-Content-Length": "100000"}, 400, "outside the body"),
        (affine_body([[1, 2, 3, 4]], outputs=[{"name": "Y", "parameters": {"classification": 2}}]), {}, 501,
         "classification"),
    ],
)  # fmt: skip
def test_bad_requests_get_4xx_naming_the_fault(
    repo_client: TestClient, content: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    response = repo_client.post(INFER, content=content, headers=headers)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert repo_client.post(INFER, content=affine_body([[1, 2, 3, 4]])).status_code == 200  # nothing else disturbed


def test_unknown_model_and_version_are_404(repo_client: TestClient) -> None:
    assert repo_client.post("/v2/models/nope/infer", content=affine_body([[1, 2, 3, 4]])).json() == {
        "error": "unknown model 'nope'"
    }
    response = repo_client.post("/v2/models/affine/versions/9/infer", content=affine_body([[1, 2, 3, 4]]))
    assert response.status_code == 404 and "has no version '9'" in response.json()["error"]


def test_starlette_404_and_405_use_the_v2_error_shape(repo_client: TestClient) -> None:
    assert repo_client.get("/nowhere").json() == {"error": "Not Found"}
    response = repo_client.get(INFER)
    assert response.status_code == 405 and response.json() == {"error": "Method Not Allowed"}


def test_body_over_the_limit_is_413_and_counted(all_types_repo: Path, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"model_repository: {all_types_repo}\nserver: {{max_body_bytes: 100}}\n"
        "routes:\n  affine:\n    versions: {v1: 1}\n"
    )
    registry = CollectorRegistry()
    with TestClient(create_app(Settings(config_path=config, watch=False), registry=registry)) as client:
        response = client.post(INFER, content=affine_body([[1.0] * 4] * 10))
        assert response.status_code == 413 and "over the limit of 100 bytes" in response.json()["error"]
        assert client.post(INFER, content=affine_body([[1.0] * 4])).status_code == 200
    refused = {"model": "_unknown", "version": "_unknown", "outcome": "invalid_request"}
    assert registry.get_sample_value("gateway_requests_total", refused) == 1


def test_requests_are_counted_by_outcome(repo_client: TestClient, registry: CollectorRegistry) -> None:
    repo_client.post(INFER, content=affine_body([[1, 2, 3, 4]]))
    repo_client.post(INFER, content=b"{")
    repo_client.post("/v2/models/nope/infer", content=b"{}")

    def count(model: str, version: str, outcome: str) -> float | None:
        return registry.get_sample_value(
            "gateway_requests_total", {"model": model, "version": version, "outcome": outcome}
        )

    assert count("affine", "2", "success") == 1
    assert count("affine", "2", "invalid_request") == 1
    assert count("_unknown", "_unknown", "not_found") == 1
    assert registry.get_sample_value("gateway_request_duration_seconds_count", {"model": "affine", "version": "2"}) == 2
    assert (
        registry.get_sample_value("gateway_inference_compute_seconds_count", {"model": "affine", "version": "2"}) == 1
    )
    assert registry.get_sample_value("gateway_model_ready", {"model": "affine", "version": "1"}) == 1
    assert registry.get_sample_value("gateway_inflight_requests") == 0


def test_a_broken_version_is_reported_and_the_others_serve(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import models

    models.affine_repository(tmp_path, {1: 2.0, 2: 3.0})
    (tmp_path / "affine" / "3").mkdir()
    (tmp_path / "affine" / "3" / "model.onnx").write_bytes(b"not an onnx file")
    (tmp_path / "affine" / "04").mkdir()  # leading zero: ignored, as Triton does
    (tmp_path / "affine" / "latest").mkdir()  # not numeric: ignored
    registry = CollectorRegistry()
    with TestClient(create_app(Settings(model_repository=tmp_path), registry=registry)) as client:
        body = client.post(INFER, content=affine_body([[1, 1, 1, 1]])).json()
        assert body["model_version"] == "2"
    assert f"{tmp_path / 'affine' / '3' / 'model.onnx'}: onnxruntime cannot load it" in caplog.text
    assert registry.get_sample_value("gateway_model_load_failures_total", {"model": "affine", "version": "3"}) == 1
    assert registry.get_sample_value("gateway_model_ready", {"model": "affine", "version": "3"}) == 0


def test_the_common_request_takes_the_fast_lane_and_the_rest_the_general_codec(
    repo_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.dataplane as dataplane
    from gateway.protocol import decode_request as general

    seen: list[bytes] = []

    def counting(body: bytes, header_length: int | None = None) -> Any:
        seen.append(body)
        return general(body, header_length)

    monkeypatch.setattr(dataplane, "decode_request", counting)
    plain = repo_client.post(INFER, content=affine_body([[1, 2, 3, 4]], id="a"))
    assert plain.status_code == 200 and plain.json()["id"] == "a"
    assert plain.json()["outputs"][0]["data"] == [4.0, 7.0, 10.0, 13.0]  # version 2: 3x + 1
    assert seen == []  # served without the general decoder
    named = repo_client.post(INFER, content=affine_body([[1, 2, 3, 4]], outputs=[{"name": "Y"}]))
    assert named.status_code == 200 and named.json()["outputs"][0]["data"] == [
        4.0,
        7.0,
        10.0,
        13.0,
    ]  # version 2: 3x + 1
    bad = repo_client.post(INFER, content=affine_body([[1, 2, 3]]))
    assert bad.status_code == 400 and "shape [1, 3]" in bad.json()["error"]
    assert len(seen) == 2  # `outputs` and the misfit went the general way, which named the fault
