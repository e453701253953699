"""The fast lane takes a request only when the general codec would take it and give the same arrays, and writes the
same bytes as the general encoder; everything else it leaves to the general path."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings, strategies as st

from gateway.errors import GatewayError
from gateway.fastlane import FastLane
from gateway.inference import InferenceResponse, Tensor
from gateway.protocol import DTYPES, decode_request, encode_response, strict_float_casts
from gateway.signature import Signature, TensorSpec

strict_float_casts()  # as the composition root does: a float the input type cannot hold is refused, not inf

SIGNATURE = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 3)), TensorSpec("y", "FP64", (2,))),
    outputs=(TensorSpec("p", "FP32", (-1, 2)), TensorSpec("label", "INT64", (-1,))),
)
LANE = FastLane(SIGNATURE, "7")


def general(body: bytes) -> tuple[dict[str, np.ndarray[Any, Any]], str | None]:
    request = decode_request(body)
    SIGNATURE.check(request)
    return request.input_map(), request.id


def valid(**head: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2.5, -3], [4, 5, 6e-3]]},
            {"name": "y", "shape": [2], "datatype": "FP64", "data": [0.1, None]},
        ],
        **head,
    }


def assert_same(fast: tuple[dict[str, Any], str | None], slow: tuple[dict[str, Any], str | None]) -> None:
    assert fast[1] == slow[1]
    assert fast[0].keys() == slow[0].keys()
    for name, array in slow[0].items():
        assert fast[0][name].dtype == array.dtype and fast[0][name].shape == array.shape
        np.testing.assert_array_equal(fast[0][name], array)


@pytest.mark.parametrize(
    "head",
    [valid(), valid(id="req-1"), {"inputs": list(reversed(valid()["inputs"]))}],
    ids=["plain", "with-id", "inputs-reordered"],
)
def test_takes_the_common_shape_with_the_general_result(head: dict[str, Any]) -> None:
    body = orjson.dumps(head)
    fast = LANE.decode(body)
    assert fast is not None
    assert_same(fast, general(body))


def test_flat_and_scalar_data_as_the_general_path_reads_them() -> None:
    head = valid()
    head["inputs"][0]["data"] = [1, 2, 3, 4, 5, 6]  # flat: allowed by the spec, reshaped
    body = orjson.dumps(head)
    fast = LANE.decode(body)
    assert fast is not None
    assert_same(fast, general(body))


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        ("head", "parameters", {}),
        ("head", "outputs", [{"name": "p"}]),
        ("head", "id", 5),
        ("input", "parameters", {"binary_data_size": 24}),
        ("input", "datatype", "FP64"),
        ("input", "shape", [3, 2]),
        ("input", "shape", [2, 3, 1]),
        ("input", "shape", [True, 3]),
        ("input", "name", "z"),
        ("input", "data", [[1, 2], [3, 4, 5]]),
        ("input", "data", [1, 2, 3]),
        ("input", "data", [1e40, 0, 0, 0, 0, 0]),
        ("input", "data", ["a", 0, 0, 0, 0, 0]),
        ("input", "shape", [0, 3]),  # empty: the general path checks its shape further
    ],
)
def test_leaves_anything_else_to_the_general_path(where: str, key: str, value: Any) -> None:
    head = valid()
    (head if where == "head" else head["inputs"][0])[key] = value
    body = orjson.dumps(head)
    assert LANE.decode(body) is None
    try:
        general(body)
    except GatewayError:
        pass  # refused: the general path names the fault
    # else: a shape the lane does not take (e.g. parameters) that the general path serves


def test_an_empty_tensor_is_left_to_the_general_path() -> None:
    head = valid()
    head["inputs"][0].update(shape=[0, 3], data=[])
    body = orjson.dumps(head)
    assert LANE.decode(body) is None
    arrays, _ = general(body)
    assert arrays["x"].shape == (0, 3)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b'{"inputs": []}', orjson.dumps({"inputs": valid()["inputs"][:1]}),
     orjson.dumps({"inputs": [valid()["inputs"][0]] * 2})],
    ids=["empty", "not-json", "not-object", "no-inputs", "missing-input", "duplicate-input"],
)  # fmt: skip
def test_refused_requests_are_left_to_the_general_path(body: bytes) -> None:
    assert LANE.decode(body) is None
    with pytest.raises(GatewayError):
        general(body)


@pytest.mark.parametrize(
    ("spec", "shape", "data"),
    [
        (TensorSpec("ids", "INT64", (-1,)), [2], [1, 2]),  # not a float tensor
        (TensorSpec("", "FP32", (-1,)), [2], [1, 2]),  # a name no request may send
        (TensorSpec("deep", "FP32", (-1,) * 33), [1] * 33, [1]),  # a rank no request may send
    ],
    ids=["integer", "unnamed", "rank-33"],
)
def test_a_version_whose_inputs_the_lane_cannot_check_takes_every_request_the_general_way(
    spec: TensorSpec, shape: list[int], data: list[float]
) -> None:
    lane = FastLane(Signature((spec,), (TensorSpec("p", "FP32", (-1,)),)), "1")
    body = orjson.dumps({"inputs": [{"name": spec.name, "shape": shape, "datatype": spec.datatype, "data": data}]})
    assert lane.decode(body) is None


numbers = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=3),
    st.sampled_from(["1.5", "nan", "-inf", "1e400"]),
)  # fmt: skip
data = st.recursive(numbers, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
inputs = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "y", "z", 1]),
        "shape": st.one_of(st.lists(st.integers(-1, 4), max_size=3), st.just([2, 3]), st.just([2]), numbers),
        "datatype": st.sampled_from(["FP32", "FP64", "INT64", "fp32", None]),
        "data": data,
    },
    optional={"parameters": st.just({})},
)
heads: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(inputs, max_size=3), numbers)},
    optional={"id": st.one_of(st.text(max_size=4), st.integers()), "outputs": st.just([])},
)


@settings(max_examples=600, deadline=None, derandomize=True)
@given(head=heads)
def test_never_takes_what_the_general_path_would_refuse_or_read_differently(head: dict[str, Any]) -> None:
    body = json.dumps(head).encode()  # json, not orjson: it writes NaN and Infinity, which orjson then refuses
    fast = LANE.decode(body)
    if fast is None:
        return  # the general path decides
    assert_same(fast, general(body))


@pytest.mark.parametrize("request_id", [None, "a-1", 'quote"d'])
@pytest.mark.parametrize("rows", [0, 1, 3])
def test_encodes_the_same_bytes_as_the_general_encoder(request_id: str | None, rows: int) -> None:
    rng = np.random.default_rng(rows)
    p = rng.normal(size=(rows, 2)).astype(np.float32)
    if rows:
        p[0, 0] = np.nan
    outputs: dict[str, np.ndarray[Any, Any]] = {"p": p, "label": np.arange(rows, dtype=np.int64)}
    fast = LANE.encode(outputs, "route", request_id)
    tensors = (Tensor("p", "FP32", outputs["p"]), Tensor("label", "INT64", outputs["label"]))
    slow, head_length = encode_response(InferenceResponse("route", "7", tensors, request_id, (False, False)))
    assert head_length is None
    assert fast == slow


def test_encodes_non_contiguous_outputs_as_their_values() -> None:
    p = np.arange(12, dtype=np.float32).reshape(2, 6)[:, ::3]  # a strided view, shape (2, 2)
    fast = LANE.encode({"p": p, "label": np.array([1, 2], dtype=np.int64)}, "m", None)
    assert fast is not None
    assert orjson.loads(fast)["outputs"][0]["data"] == [0.0, 3.0, 6.0, 9.0]


@pytest.mark.parametrize("datatype", ["FP16", "BYTES"])
def test_outputs_that_need_converting_go_to_the_general_encoder(datatype: str) -> None:
    lane = FastLane(Signature((TensorSpec("x", "FP32", (-1,)),), (TensorSpec("o", datatype, (-1,)),)), "1")
    assert lane.encode({"o": np.zeros(1, dtype=DTYPES[datatype])}, "m", None) is None


SELECTABLE = ("FP32", "FP64", "FP16", "INT8", "INT32", "INT64", "UINT8", "UINT64", "BOOL", "BYTES")


def _output(datatype: str, shape: tuple[int, ...], seed: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    if datatype == "BYTES":
        return np.array([f"v{i}".encode() for i in range(int(np.prod(shape)))], dtype=object).reshape(shape)
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    values = rng.normal(scale=50, size=shape)
    if datatype.startswith("FP") and values.size:
        values[(0,) * len(shape)] = np.nan  # JSON writes it as null, binary as its bytes: both must agree
    return values.astype(DTYPES[datatype])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    datatypes=st.lists(st.sampled_from(SELECTABLE), min_size=1, max_size=3),
    rows=st.integers(0, 3),
    picks=st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=1, max_size=3),
    request_id=st.one_of(st.none(), st.text(max_size=3)),
    strided=st.booleans(),
)
def test_selected_outputs_encode_to_the_general_encoders_bytes(
    datatypes: list[str], rows: int, picks: list[tuple[int, bool]], request_id: str | None, strided: bool
) -> None:
    # Whatever outputs and binary flags a request names: the lane writes the general encoder's bytes and head
    # length, or declines (BYTES anywhere, FP16 as JSON) and the general encoder writes them.
    names = [f"o{i}" for i in range(len(datatypes))]
    signature = Signature((TensorSpec("x", "FP32", (-1,)),), tuple(TensorSpec(n, d, (-1, 2)) for n, d in
                                                                   zip(names, datatypes, strict=True)))  # fmt: skip
    lane = FastLane(signature, "3")
    produced = {}
    for i, (name, datatype) in enumerate(zip(names, datatypes, strict=True)):
        array = _output(datatype, (rows, 4) if strided else (rows, 2), i)
        produced[name] = array[:, ::2] if strided else array  # a strided view: written as its values
    chosen = list(dict.fromkeys(names[i % len(names)] for i, _ in picks))
    flags = tuple(flag for _, flag in picks[: len(chosen)])
    selection = (tuple(chosen), flags)
    fast, fast_length = lane.encode_selected(produced, "m", request_id, selection)
    tensors = tuple(Tensor(n, datatypes[names.index(n)], produced[n]) for n in chosen)
    slow, slow_length = encode_response(InferenceResponse("m", "3", tensors, request_id, flags))
    declines = any(
        datatypes[names.index(n)] == "BYTES" or (datatypes[names.index(n)] == "FP16" and not f)
        for n, f in zip(chosen, flags, strict=True)
    )
    if declines:
        assert (fast, fast_length) == (None, None)
    else:
        assert (fast, fast_length) == (slow, slow_length)


def test_tritonclients_answer_takes_the_lane() -> None:
    # tritonclient asks for each output by name with binary_data true: bytes after the head, the head's length.
    outputs: dict[str, np.ndarray[Any, Any]] = {
        "p": np.array([[0.25, 0.75]], dtype=np.float32), "label": np.array([1], dtype=np.int64),
    }  # fmt: skip
    body, length = LANE.encode_selected(outputs, "m", None, (("p", "label"), (True, True)))
    assert body is not None and length is not None
    assert orjson.loads(body[:length])["outputs"][1] == {
        "name": "label", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8},
    }  # fmt: skip
    assert body[length:] == outputs["p"].tobytes() + outputs["label"].tobytes()


row = st.lists(numbers, min_size=3, max_size=3)
near_valid = st.fixed_dictionaries(
    {
        "inputs": st.tuples(
            st.fixed_dictionaries({
                "name": st.just("x"), "shape": st.just([2, 3]), "datatype": st.just("FP32"),
                "data": st.one_of(st.lists(row, min_size=2, max_size=2), st.lists(numbers, min_size=5, max_size=7)),
            }),
            st.fixed_dictionaries({
                "name": st.just("y"), "shape": st.just([2]), "datatype": st.just("FP64"),
                "data": st.lists(numbers, min_size=2, max_size=2),
            }),
        ).map(list)
    },
    optional={"id": st.text(max_size=4)},
)  # fmt: skip
TAKEN: list[bool] = []


@settings(max_examples=400, deadline=None, derandomize=True)
@given(head=near_valid)
def test_values_read_exactly_as_the_general_path_reads_them(head: dict[str, Any]) -> None:
    body = json.dumps(head).encode()
    fast = LANE.decode(body)
    TAKEN.append(fast is not None)
    if fast is not None:
        assert_same(fast, general(body))


def test_the_property_above_exercised_the_lane() -> None:
    if not TAKEN:  # run on its own: run the property first
        test_values_read_exactly_as_the_general_path_reads_them()
    assert sum(TAKEN) >= 40, f"only {sum(TAKEN)} of {len(TAKEN)} examples took the lane"


# --- binary requests (Triton's binary tensor extension, as tritonclient sends them) ---------------------------------


def binary_request(head: dict[str, Any], raw: bytes) -> tuple[bytes, int]:
    encoded = orjson.dumps(head)
    return encoded + raw, len(encoded)


def binary_valid(**extra: Any) -> tuple[dict[str, Any], bytes]:
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    y = np.array([0.5, -2.0], dtype=np.float64)
    head = {
        "inputs": [
            {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}},
            {"name": "y", "shape": [2], "datatype": "FP64", "parameters": {"binary_data_size": y.nbytes}},
        ],
        **extra,
    }
    return head, x.tobytes() + y.tobytes()


def general_binary(body: bytes, head_length: int) -> tuple[Any, ...]:
    from gateway.protocol import requested_outputs

    request = decode_request(body, head_length)
    SIGNATURE.check(request)
    return (request.input_map(), request.id, *requested_outputs(request, ("p", "label")))


def assert_same_binary(fast: tuple[Any, ...], slow: tuple[Any, ...]) -> None:
    assert_same((fast[0], fast[1]), (slow[0], slow[1]))
    assert fast[2:] == slow[2:]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"id": "r-9", "parameters": {"binary_data_output": True}},
        {"outputs": [{"name": "label", "parameters": {"binary_data": True}}, {"name": "p"}]},
        {"outputs": [{"name": "p", "parameters": {"binary_data": False}}], "parameters": {"binary_data_output": True}},
        {"outputs": []},
    ],
    ids=["plain", "id-all-binary", "tritonclient-outputs", "json-output", "empty-outputs"],
)
def test_takes_tritonclients_binary_requests_with_the_general_result(extra: dict[str, Any]) -> None:
    body, head_length = binary_request(*binary_valid(**extra))
    fast = LANE.decode_binary(body, head_length)
    assert fast is not None
    assert_same_binary(fast, general_binary(body, head_length))


@pytest.mark.parametrize(
    "change",
    [
        lambda h, r: (h["inputs"][0].update(data=[1]), r),
        lambda h, r: (h["inputs"][0]["parameters"].update(binary_data_size=20), r),
        lambda h, r: (h["inputs"][0]["parameters"].update(extra=1), r),
        lambda h, r: (None, r + b"\0"),
        lambda h, r: (None, r[:-1]),
        lambda h, r: (h.update(outputs=[{"name": "q"}]), r),
        lambda h, r: (h.update(outputs=[{"name": "p"}, {"name": "p"}]), r),
        lambda h, r: (h.update(outputs=[{"name": "p", "parameters": {"classification": 2}}]), r),
        lambda h, r: (h.update(outputs=[{"name": "p", "parameters": {"binary_data": 1}}]), r),
        lambda h, r: (h.update(parameters={"shared_memory_region": "r"}), r),
        lambda h, r: (h.update(parameters={"binary_data_output": "yes"}), r),
        lambda h, r: (h.update(id=3), r),
        lambda h, r: (h["inputs"][1].update(datatype="FP32"), r),
        lambda h, r: (h["inputs"][0].update(shape=[3, 2]), r),
    ],
    ids=[
        "data-and-size", "wrong-size", "other-parameter", "trailing-bytes", "short", "unknown-output",
        "duplicate-output", "classification", "flag-not-bool", "shared-memory", "default-not-bool", "id-not-str",
        "wrong-datatype", "misfit-shape",
    ],
)  # fmt: skip
def test_leaves_other_binary_requests_to_the_general_path(change: Any) -> None:
    head, raw = binary_valid()
    _, raw = change(head, raw)
    body, head_length = binary_request(head, raw)
    assert LANE.decode_binary(body, head_length) is None


def test_binary_inputs_are_views_of_the_body() -> None:
    body, head_length = binary_request(*binary_valid())
    fast = LANE.decode_binary(body, head_length)
    assert fast is not None
    assert not fast[0]["x"].flags.owndata and not fast[0]["x"].flags.writeable  # no copy of the request's bytes


def test_a_version_with_a_bool_input_takes_binary_requests_the_general_way() -> None:
    lane = FastLane(Signature((TensorSpec("b", "BOOL", (-1,)),), (TensorSpec("p", "FP32", (-1,)),)), "1")
    head = {"inputs": [{"name": "b", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}]}
    body, head_length = binary_request(head, b"\x01\x00")
    assert lane.decode_binary(body, head_length) is None


binary_flags = st.one_of(st.booleans(), st.none(), st.integers(0, 1), st.just("true"))
binary_outputs: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.just([]),
    st.lists(
        st.fixed_dictionaries(
            {"name": st.sampled_from(["p", "label", "q"])},
            optional={"parameters": st.one_of(st.just({}), st.fixed_dictionaries({"binary_data": binary_flags}))},
        ),
        max_size=3,
    ),
)
binary_heads = st.fixed_dictionaries(
    {
        "x_size": st.sampled_from([24] * 4 + [20, 28]),  # mostly right, so that the lane is exercised
        "y_size": st.sampled_from([16] * 4 + [8]),
        "tail": st.sampled_from([b""] * 4 + [b"\0"]),
        "outputs": binary_outputs,
        "default": st.one_of(st.none(), st.fixed_dictionaries({"binary_data_output": binary_flags})),
        "id": st.one_of(st.none(), st.text(max_size=3), st.integers(-5, 5)),
    }
)
BINARY_TAKEN: list[bool] = []


@settings(max_examples=500, deadline=None, derandomize=True)
@given(case=binary_heads)
def test_binary_lane_never_takes_what_the_general_path_would_refuse_or_read_differently(case: dict[str, Any]) -> None:
    head, raw = binary_valid()
    head["inputs"][0]["parameters"]["binary_data_size"] = case["x_size"]
    head["inputs"][1]["parameters"]["binary_data_size"] = case["y_size"]
    for key, value in (("outputs", case["outputs"]), ("parameters", case["default"]), ("id", case["id"])):
        if value is not None:
            head[key] = value
    body, head_length = binary_request(head, raw + case["tail"])
    fast = LANE.decode_binary(body, head_length)
    BINARY_TAKEN.append(fast is not None)
    if fast is not None:
        assert_same_binary(fast, general_binary(body, head_length))


def test_the_binary_property_above_exercised_the_lane() -> None:
    if not BINARY_TAKEN:
        test_binary_lane_never_takes_what_the_general_path_would_refuse_or_read_differently()
    assert sum(BINARY_TAKEN) >= 20, f"only {sum(BINARY_TAKEN)} of {len(BINARY_TAKEN)} examples took the lane"
