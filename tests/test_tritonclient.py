"""End to end: `gateway serve` on the bundled demo, called with the real tritonclient, answers as onnxruntime does."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from server import Server, gateway
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "config" / "models" / "breast_cancer"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # No arguments but the port: the bundled demo config, found from the working directory.
    with gateway([], tmp_path_factory.mktemp("logs") / "gateway.log", cwd=ROOT) as server:
        yield server


@pytest.fixture(scope="module")
def client(demo: Server) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(demo.address)
    yield c
    c.close()


def rows(n: int) -> np.ndarray:
    with (ROOT / "config" / "data" / "breast_cancer_test.csv").open() as f:
        reader = csv.reader(f)
        next(reader)
        return np.array([[float(v) for v in row[:30]] for _, row in zip(range(n), reader, strict=False)], np.float32)


def expected(version: int, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(MODELS / str(version) / "model.onnx"))
    return dict(zip(["label", "probabilities"], session.run(["label", "probabilities"], {"input": x}), strict=True))


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("breast_cancer") and client.is_model_ready("breast_cancer", "2")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("breast_cancer")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert meta["parameters"]["training_data_sha256"]
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("version", ["1", "2"])
def test_infer_equals_onnxruntime(client: httpclient.InferenceServerClient, binary: bool, version: str) -> None:
    x = rows(16)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
    result = client.infer("breast_cancer", [inp], model_version=version, outputs=outputs, request_id="req-7")
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == version
    want = expected(int(version), x)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    np.testing.assert_array_equal(result.as_numpy("probabilities"), want["probabilities"])


def test_unversioned_infer_is_routed_and_reports_the_version(client: httpclient.InferenceServerClient) -> None:
    x = rows(1)
    inp = httpclient.InferInput("input", [1, 30], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("breast_cancer", [inp], headers={"x-canary": "1"})  # the demo's override
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_array_equal(result.as_numpy("probabilities"), expected(2, x)["probabilities"])


def test_errors_reach_the_client_as_exceptions(client: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("input", [1, 29], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 29), np.float32))
    with pytest.raises(InferenceServerException) as bad:
        client.infer("breast_cancer", [inp])
    assert bad.value.status() == "400" and "expects FP32[-1, 30]" in str(bad.value.message())
    with pytest.raises(InferenceServerException) as missing:
        client.infer("nope", [inp])
    assert missing.value.status() == "404"
