"""Whatever arrives, the decoder and the endpoint answer with a clean 4xx, never a 500, and keep serving."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.testclient import TestClient

from gateway.errors import ProtocolError, UnsupportedError
from gateway.protocol import DTYPES, decode_request

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False),
    st.text(max_size=5),
)  # fmt: skip
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip
shapes = st.one_of(st.lists(st.integers(min_value=-2, max_value=2**40), max_size=4), json_values)
inputs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["X", "in_FP32", "Z", ""]), json_values),
        "shape": shapes,
        "datatype": st.one_of(st.sampled_from([*DTYPES, "BF16", "fp32"]), json_values),
        "data": json_values,
        "parameters": st.one_of(
            st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-5, 64), json_values)}), json_values
        ),
    },
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "inputs": st.one_of(st.lists(inputs, max_size=3), json_values),
        "outputs": st.one_of(st.lists(st.fixed_dictionaries({"name": json_values}), max_size=2), json_values),
        "parameters": json_values,
    },
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(request=requests, tail=st.binary(max_size=64), head=st.one_of(st.none(), st.integers(0, 200)))
def test_decoder_raises_only_protocol_errors(request: dict[str, Any], tail: bytes, head: int | None) -> None:
    body = json.dumps(request).encode()
    raw = body + tail
    head_length = None if head is None else min(head, len(raw))
    try:
        decode_request(raw, head_length)
    except (ProtocolError, UnsupportedError):
        pass


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=requests, path=st.sampled_from(["affine", "all_types", "affine/versions/1", "affine/versions/x"]))
def test_endpoint_never_answers_500(repo_client: TestClient, request: dict[str, Any], path: str) -> None:
    response = repo_client.post(f"/v2/models/{path}/infer", content=json.dumps(request).encode())
    assert response.status_code < 500, response.text
    assert "error" in response.json() or response.status_code == 200


def test_raw_garbage_bodies(repo_client: TestClient) -> None:
    for body in (b"", b"\x00\xff", b"[" * 5000, b'{"inputs": ' + b"[" * 2000 + b"]" * 2000 + b"}", b"null", b"1e999"):
        assert repo_client.post("/v2/models/affine/infer", content=body).status_code == 400
    ok = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert repo_client.post("/v2/models/affine/infer", content=orjson.dumps(ok)).status_code == 200
