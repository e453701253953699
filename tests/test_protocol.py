from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.errors import ProtocolError, UnsupportedError
from gateway.inference import InferenceResponse, Tensor
from gateway.protocol import DTYPES, decode_request, encode_response, parse_header_length

SAMPLES: dict[str, list[Any]] = {
    "BOOL": [True, False, False, True],
    "UINT8": [0, 1, 254, 255],
    "UINT16": [0, 1, 65534, 65535],
    "UINT32": [0, 1, 2**32 - 2, 2**32 - 1],
    "UINT64": [0, 1, 2**63, 2**64 - 1],
    "INT8": [-128, -1, 0, 127],
    "INT16": [-32768, -1, 0, 32767],
    "INT32": [-(2**31), -1, 0, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 2**63 - 1],
    "FP16": [0.5, -1.25, 1024.0, 0.0],
    "FP32": [0.1, -1.5, 3.25e10, 0.0],
    "FP64": [0.1, -1.5, 3.25e100, 1e-300],
    "BYTES": ["a", "", "héllo", "z z"],
}


def body(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": inputs, **extra})


def binary_body(arrays: dict[str, tuple[str, np.ndarray[Any, Any]]]) -> tuple[bytes, int]:
    inputs, blobs = [], []
    for name, (datatype, array) in arrays.items():
        raw = serialize(datatype, array)
        inputs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        blobs.append(raw)
    head = orjson.dumps({"inputs": inputs})
    return head + b"".join(blobs), len(head)


def serialize(datatype: str, array: np.ndarray[Any, Any]) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in array.ravel())
    return array.astype(DTYPES[datatype]).tobytes()


@pytest.mark.parametrize("datatype", list(SAMPLES))
@pytest.mark.parametrize("nested", [False, True])
def test_decode_json_every_datatype(datatype: str, nested: bool) -> None:
    values = SAMPLES[datatype]
    data: list[Any] = [values[:2], values[2:]] if nested else values
    request = decode_request(body([{"name": "x", "shape": [2, 2], "datatype": datatype, "data": data}]))
    tensor = request.inputs[0]
    assert tensor.array.shape == (2, 2)
    assert tensor.array.dtype == DTYPES[datatype]
    assert tensor.array.ravel().tolist() == np.array(values, dtype=DTYPES[datatype]).tolist()


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_decode_binary_every_datatype(datatype: str) -> None:
    array = np.array(SAMPLES[datatype], dtype=DTYPES[datatype]).reshape(2, 2)
    raw, head = binary_body({"x": (datatype, array)})
    request = decode_request(raw, head)
    assert request.inputs[0].array.tolist() == array.tolist()


@pytest.mark.parametrize("datatype", list(SAMPLES))
@pytest.mark.parametrize("binary", [False, True])
def test_encode_then_decode_round_trips(datatype: str, binary: bool) -> None:
    array = np.array(SAMPLES[datatype], dtype=DTYPES[datatype]).reshape(2, 2)
    encoded, head = encode_response(InferenceResponse("m", "3", (Tensor("y", datatype, array),), "id-1", (binary,)))
    assert (head is not None) == binary
    parsed = orjson.loads(encoded[:head] if head else encoded)
    assert parsed["model_version"] == "3" and parsed["id"] == "id-1"
    out = parsed["outputs"][0]
    assert out["shape"] == [2, 2] and out["datatype"] == datatype
    if head is not None:
        assert out["parameters"]["binary_data_size"] == len(encoded) - head
        back = decode_request(
            orjson.dumps({"inputs": [{**out, "name": "y"}]}) + encoded[head:],
            len(orjson.dumps({"inputs": [{**out, "name": "y"}]})),
        )
        assert back.inputs[0].array.tolist() == array.tolist()
    else:
        assert np.array(out["data"], dtype=DTYPES[datatype]).tolist() == array.ravel().tolist()


def test_fp32_json_uses_the_shortest_float32_repr() -> None:
    encoded, _ = encode_response(InferenceResponse("m", "1", (Tensor("y", "FP32", np.array([0.1], np.float32)),)))
    assert b'"data":[0.1]' in encoded


def test_mixed_binary_and_json_inputs_keep_order() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw_a = a.tobytes()
    head = orjson.dumps(
        {
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": len(raw_a)}},
                {"name": "b", "datatype": "INT64", "shape": [1], "data": [7]},
                {"name": "c", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 7}},
            ]
        }
    )
    request = decode_request(head + raw_a + struct.pack("<I", 3) + b"abc", len(head))
    assert request.inputs[0].array.tolist() == a.tolist()
    assert request.inputs[1].array.tolist() == [7]
    assert request.inputs[2].array.tolist() == ["abc"]


def test_outputs_and_binary_flags() -> None:
    request = decode_request(
        body(
            [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
            id="r1",
            parameters={"binary_data_output": True},
            outputs=[{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
        )
    )
    assert request.id == "r1"
    assert request.outputs is not None
    assert [(o.name, o.binary) for o in request.outputs] == [("a", True), ("b", False)]


def test_zero_size_binary_output_sends_no_buffer() -> None:
    empty = np.zeros((0, 2), np.float32)
    full = np.ones((1, 1), np.float32)
    encoded, head = encode_response(
        InferenceResponse("m", "1", (Tensor("e", "FP32", empty), Tensor("f", "FP32", full)), None, (True, True))
    )
    assert head is not None
    parsed = orjson.loads(encoded[:head])
    assert [o["parameters"]["binary_data_size"] for o in parsed["outputs"]] == [0, 4]
    assert len(encoded) == head + 4


def test_nan_in_json_output_becomes_null() -> None:
    encoded, _ = encode_response(InferenceResponse("m", "1", (Tensor("y", "FP32", np.array([np.nan], np.float32)),)))
    assert orjson.loads(encoded)["outputs"][0]["data"] == [None]


MALFORMED: list[tuple[bytes, int | None, str]] = [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "must be a JSON object"),
    (body([]), None, "'inputs' must be a non-empty list"),
    (body([{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]), None, "data has 3 elements"),
    (body([{"name": "x", "shape": [2], "datatype": "FP33", "data": [1, 2]}]), None, "datatype 'FP33' is not supported"),
    (body([{"name": "x", "shape": [2], "datatype": "INT32", "data": [1.5, 2]}]), None, "INT32 data must be integers"),
    (body([{"name": "x", "shape": [2], "datatype": "UINT8", "data": [1, 256]}]), None, "out of range for UINT8"),
    (body([{"name": "x", "shape": [2], "datatype": "BOOL", "data": [1, 0]}]), None, "BOOL data must be true/false"),
    (body([{"name": "x", "shape": [2], "datatype": "FP32", "data": ["a", "b"]}]), None, "FP32 data must be numbers"),
    (body([{"name": "x", "shape": [2], "datatype": "BYTES", "data": [1, 2]}]), None, "BYTES data must be strings"),
    (body([{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]), None, "integers from 0 to"),
    (body([{"name": "x", "shape": "2", "datatype": "FP32", "data": [1, 2]}]), None, "shape must be a list"),
    (body([{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}]), None, "equal-length rows"),
    (body([{"shape": [1], "datatype": "FP32", "data": [1]}]), None, r"inputs\[0\]\.name must be"),
    (body([{"name": "x", "shape": [1], "datatype": "FP32"}]), None, "neither 'data' nor"),
    (body([{"name": "x", "shape": [2**20, 2**20], "datatype": "FP32", "data": []}]), None, "over the limit"),
    (body([{"name": "x", "shape": [2**31, 2**31, 0], "datatype": "FP32", "data": []}]), None, "over the limit"),
    (body([{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], id=5), None, "'id' must be a string"),
    (
        body([{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]),
        None,
        "runs past the end of the body",
    ),
]


@pytest.mark.parametrize(("raw", "head", "message"), MALFORMED)
def test_malformed_requests_name_the_fault(raw: bytes, head: int | None, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_request(raw, head)


def test_binary_size_must_match_shape() -> None:
    head = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": 8}}]}
    )
    with pytest.raises(ProtocolError, match="FP32\\[3\\] needs 12"):
        decode_request(head + b"\0" * 8, len(head))


def test_trailing_binary_bytes_are_rejected() -> None:
    raw, head = binary_body({"x": ("FP32", np.ones(2, np.float32))})
    with pytest.raises(ProtocolError, match="4 bytes more"):
        decode_request(raw + b"\0\0\0\0", head)


@pytest.mark.parametrize(
    ("value", "message"), [("abc", "not an integer"), ("-1", "outside the body"), ("99", "outside")]
)
def test_bad_header_length(value: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_header_length(value, 10)


def test_truncated_bytes_element() -> None:
    head = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]}
    )
    with pytest.raises(ProtocolError, match="runs past the end"):
        decode_request(head + struct.pack("<I", 10) + b"ab", len(head))


def test_shared_memory_is_unsupported() -> None:
    raw = body(
        [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"shared_memory_region": "r"}, "data": [1]}]
    )
    with pytest.raises(UnsupportedError, match="shared-memory"):
        decode_request(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (body([{"name": "x", "shape": [0, 2**62, 2**62], "datatype": "FP32", "data": []}]), "integers from 0 to"),
        (body([{"name": "x", "shape": [1] * 70, "datatype": "FP32", "data": [1]}]), "70 dimensions"),
        (body([{"name": "x", "shape": [1], "datatype": "FP16", "data": [1e6]}]), "out of range for FP16"),
        (body([{"name": "x", "shape": [1], "datatype": "FP32", "data": [1e300]}]), "out of range for FP32"),
        (
            body(
                [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], outputs=[{"name": "y"}, {"name": "y"}]
            ),
            "requested more than once",
        ),
    ],
)
def test_absurd_values_are_protocol_errors(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_request(raw)


def test_binary_bool_must_be_zero_or_one() -> None:
    head = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "BOOL", "shape": [4], "parameters": {"binary_data_size": 4}}]}
    )
    with pytest.raises(ProtocolError, match="bytes 0 or 1"):
        decode_request(head + bytes([2, 0, 255, 1]), len(head))


def test_empty_outputs_list_means_all_outputs() -> None:
    raw = body([{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], outputs=[])
    assert decode_request(raw).outputs is None


def test_deeply_nested_data_is_a_clean_error() -> None:
    data: Any = [1.0]
    for _ in range(200):
        data = [data]
    with pytest.raises(ProtocolError):
        decode_request(body([{"name": "x", "shape": [2], "datatype": "FP32", "data": data}]))
