"""The common inference request and response, decoded and encoded for one model version with nothing in between.

Most traffic has one shape: a JSON body with an `inputs` list (and perhaps an `id`), each input exactly
`name`/`shape`/`datatype`/`data`, asking for every output as JSON. For that shape the general codec
(`protocol.decode_request`, `Signature.check`, `protocol.encode_response`) builds a request value, tensors, a
response value and dicts that the request never needs: about a third of a tiny model's time in the server. A lane is
made once per loaded version and goes straight from bytes to the arrays the model takes, and from the arrays it
gives to bytes. The other common shape, tritonclient's binary one (a JSON head, then the tensors' bytes, outputs
named with their binary flags), is decoded the same way by `decode_binary`, and its answer (the outputs it names,
each as JSON or as bytes after the head) written by `encode_selected`, byte for byte what the general encoder writes.

It accepts only what the general path would accept and produce the same answer for; anything else (an unknown key, a
parameter, a misfit, a value numpy refuses) makes a decode return None, and the caller takes the general path,
which either serves the request or names exactly what is wrong with it. A lane does not raise for a request it
does not take, so every error message still comes from one place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from gateway.protocol import DTYPES, MAX_ELEMENTS, MAX_RANK, float_array, little_endian_bytes
from gateway.signature import Signature

# Request keys the lane knows; `outputs`, `parameters` and anything else go the general way.
_HEAD_KEYS = frozenset({"inputs", "id"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "data"})
# Datatypes whose JSON data the general path reads with one `np.array(data, dtype)` call (see `protocol._from_json`),
# and whose outputs orjson writes natively; integers, BOOL and BYTES have extra checks or conversions there.
_FLOAT_TYPES = frozenset({"FP32", "FP64"})
_NATIVE_OUTPUTS = frozenset({"FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
                             "BOOL"})  # fmt: skip
# Binary requests: every numeric type reads straight from the body (BOOL and BYTES have checks of their own there).
_BINARY_TYPES = frozenset(_NATIVE_OUTPUTS - {"BOOL"} | {"FP16"})
# Binary outputs: every fixed-size type is its array's little-endian bytes (BYTES has length prefixes).
_BINARY_OUTPUTS = frozenset(_NATIVE_OUTPUTS | {"FP16"})
_BINARY_HEAD_KEYS = frozenset({"inputs", "id", "outputs", "parameters"})
_BINARY_INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters"})
_SIZE_KEYS = frozenset({"binary_data_size"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
_NUMPY = orjson.OPT_SERIALIZE_NUMPY

# A binary request as the lane reads it: input arrays, request id, the outputs asked for and their binary flags.
Binary = tuple[dict[str, npt.NDArray[Any]], str | None, tuple[str, ...], tuple[bool, ...]]


def _head(data: bytes | memoryview, keys: frozenset[str]) -> tuple[dict[str, Any], str | None] | None:
    """The request's JSON object, if it is one holding only `keys`, and its id (a string or absent); else None."""
    try:
        head = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if type(head) is not dict or not head.keys() <= keys:
        return None
    request_id = head.get("id")
    return (head, request_id) if request_id is None or type(request_id) is str else None


def _flag(parameters: object, key: str, default: bool) -> bool | None:
    """`parameters[key]` of a parameters object holding nothing else, `default` when absent; None otherwise."""
    if parameters is None:
        return default
    if type(parameters) is not dict or not parameters.keys() <= {key}:
        return None
    value = parameters.get(key, default)
    return value if type(value) is bool else None


_SKIP = (ValueError, TypeError, RuntimeWarning)  # numpy refusing data: the general path reports it


class _Input:
    __slots__ = ("datatype", "dtype", "shape", "wire")

    def __init__(self, datatype: str, shape: tuple[int, ...]) -> None:
        self.datatype = datatype
        self.dtype = DTYPES[datatype]
        self.wire = self.dtype.newbyteorder("<")  # binary data is little-endian on the wire
        self.shape = shape  # -1 where any size fits


def _fits(shape: object, expected: tuple[int, ...]) -> bool:
    """A request's shape the general path reads as valid and `Signature.check` as fitting `expected`."""
    if type(shape) is not list or len(shape) != len(expected):
        return False
    for size, want in zip(shape, expected):  # noqa: B905 - lengths are equal: checked above
        if type(size) is not int or size < 0 or size > MAX_ELEMENTS or (want != -1 and size != want):
            return False
    return True


class FastLane:
    """Decode and encode the common request shape for one version; see the module docstring for what it takes."""

    __slots__ = (
        "_all_outputs", "_binary_inputs", "_datatypes", "_encodable", "_inputs", "_output_set", "_outputs", "_version",
    )  # fmt: skip

    def __init__(self, signature: Signature, version: str) -> None:
        self._inputs: Mapping[str, _Input] = {
            s.name: _Input(s.datatype, s.shape) for s in signature.inputs if s.datatype in _FLOAT_TYPES
        }
        if len(self._inputs) != len(signature.inputs) or any(
            not s.name or len(s.shape) > MAX_RANK for s in signature.inputs
        ):
            # An input that is not a float tensor, or that no request may name or shape (see `protocol`): every
            # request of this version goes the general way, which checks and refuses such requests.
            self._inputs = {}
        checkable = all(s.name and len(s.shape) <= MAX_RANK for s in signature.inputs)
        self._binary_inputs: Mapping[str, _Input] = {
            s.name: _Input(s.datatype, s.shape) for s in signature.inputs if s.datatype in _BINARY_TYPES
        }
        if not checkable or len(self._binary_inputs) != len(signature.inputs):
            self._binary_inputs = {}
        self._outputs = tuple((s.name, s.datatype) for s in signature.outputs)
        self._all_outputs = tuple(s.name for s in signature.outputs)
        self._output_set = frozenset(self._all_outputs)
        self._encodable = all(s.datatype in _NATIVE_OUTPUTS for s in signature.outputs)
        self._datatypes = {s.name: s.datatype for s in signature.outputs}
        self._version = version

    def decode(self, body: bytes) -> tuple[dict[str, npt.NDArray[Any]], str | None] | None:
        """The model's input arrays and the request id, or None when the general path must take this request."""
        specs = self._inputs
        parsed = _head(body, _HEAD_KEYS) if specs else None
        if parsed is None:
            return None
        head, request_id = parsed
        items = head.get("inputs")
        if type(items) is not list or len(items) != len(specs):
            return None
        arrays: dict[str, npt.NDArray[Any]] = {}
        for item in items:
            if type(item) is not dict or item.keys() != _INPUT_KEYS:
                return None
            name = item["name"]
            spec = specs.get(name) if type(name) is str else None
            if spec is None or name in arrays or item["datatype"] != spec.datatype:
                return None
            shape = item["shape"]
            if not _fits(shape, spec.shape):
                return None
            data = item["data"]
            try:
                array = float_array(data if type(data) is list else [data], spec.dtype)
            except _SKIP:
                return None
            if array.size != math.prod(shape) or not array.size or array.size > MAX_ELEMENTS:
                return None  # a misfit, an empty tensor (whose shape the general path checks further), or too big
            arrays[name] = array.reshape(shape)
        return arrays, request_id

    def decode_binary(self, body: bytes, head_length: int) -> Binary | None:
        """For a body whose JSON head (`head_length` bytes, already checked against the body) is followed by binary
        tensors: the input arrays (views of the body), the request id and the outputs it asks for with their binary
        flags; or None when the general path must take it. Takes what tritonclient sends."""
        specs = self._binary_inputs
        view = memoryview(body)
        parsed = _head(view[:head_length], _BINARY_HEAD_KEYS) if specs else None
        if parsed is None:
            return None
        head, request_id = parsed
        default = _flag(head.get("parameters"), "binary_data_output", False)
        items = head.get("inputs")
        if default is None or type(items) is not list or len(items) != len(specs):
            return None
        raw = view[head_length:]
        offset = 0
        arrays: dict[str, npt.NDArray[Any]] = {}
        for item in items:
            if type(item) is not dict or item.keys() != _BINARY_INPUT_KEYS:
                return None
            name, parameters, shape = item["name"], item["parameters"], item["shape"]
            spec = specs.get(name) if type(name) is str else None
            if spec is None or name in arrays or item["datatype"] != spec.datatype or not _fits(shape, spec.shape):
                return None
            if type(parameters) is not dict or parameters.keys() != _SIZE_KEYS:
                return None
            size = parameters["binary_data_size"]
            count = math.prod(shape)
            if not 0 < count <= MAX_ELEMENTS or type(size) is not int or size != count * spec.dtype.itemsize:
                return None  # empty, too big, or a size that does not fit: the general path reads or reports it
            if offset + size > len(raw):
                return None
            arrays[name] = np.frombuffer(raw[offset : offset + size], dtype=spec.wire).reshape(shape)
            offset += size
        if offset != len(raw):
            return None
        requested = head.get("outputs")
        if requested is None or requested == []:  # every output, each as `binary_data_output` says
            return arrays, request_id, self._all_outputs, (default,) * len(self._all_outputs)
        if type(requested) is not list:
            return None
        names: list[str] = []
        flags: list[bool] = []
        for out in requested:
            if type(out) is not dict or not out.keys() <= _OUTPUT_KEYS:
                return None
            name = out.get("name")
            flag = _flag(out.get("parameters"), "binary_data", default)
            if type(name) is not str or name not in self._output_set or name in names or flag is None:
                return None
            names.append(name)
            flags.append(flag)
        return arrays, request_id, tuple(names), tuple(flags)

    def encode(self, outputs: Mapping[str, npt.NDArray[Any]], model_name: str, request_id: str | None) -> bytes | None:
        """The JSON response with every output, or None when an output needs the general encoder's conversions."""
        if not self._encodable:
            return None
        head: dict[str, Any] = {"model_name": model_name, "model_version": self._version}
        if request_id is not None:
            head["id"] = request_id
        # ravel() is C-contiguous (a copy only when the array is not), which is what orjson writes natively.
        head["outputs"] = [
            {"name": name, "datatype": datatype, "shape": outputs[name].shape, "data": outputs[name].ravel()}
            for name, datatype in self._outputs
        ]
        return orjson.dumps(head, option=_NUMPY)

    def encode_selected(
        self,
        outputs: Mapping[str, npt.NDArray[Any]],
        model_name: str,
        request_id: str | None,
        selection: tuple[tuple[str, ...], tuple[bool, ...]],
    ) -> tuple[bytes | None, int | None]:
        """The response with the outputs `selection` names, each as JSON or (flag set) as little-endian bytes after
        the JSON head, and the head's length when bytes follow; (None, None) when an output needs the general
        encoder (BYTES, or FP16 as JSON)."""
        datatypes = self._datatypes
        entries: list[dict[str, Any]] = []
        buffers: list[bytes] = []
        for name, binary in zip(*selection):  # noqa: B905 - one flag per name: built together by the decoder
            datatype = datatypes[name]
            array = outputs[name]
            if binary:
                if datatype not in _BINARY_OUTPUTS:
                    return None, None
                payload = little_endian_bytes(array)
                entries.append({"name": name, "datatype": datatype, "shape": array.shape,
                                "parameters": {"binary_data_size": len(payload)}})  # fmt: skip
                if payload:  # Triton sends no buffer at all for a zero-size tensor
                    buffers.append(payload)
            else:
                if datatype not in _NATIVE_OUTPUTS:
                    return None, None
                entries.append({"name": name, "datatype": datatype, "shape": array.shape, "data": array.ravel()})
        head: dict[str, Any] = {"model_name": model_name, "model_version": self._version}
        if request_id is not None:
            head["id"] = request_id
        head["outputs"] = entries
        encoded = orjson.dumps(head, option=_NUMPY)
        if not buffers:
            return encoded, None
        return b"".join((encoded, *buffers)), len(encoded)
