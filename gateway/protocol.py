"""Open Inference Protocol (V2) REST bytes <-> inference values, with Triton's binary tensor data extension.

Decoding trusts nothing: every fault becomes a ProtocolError (400) whose message names the field at fault.
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from gateway.errors import ProtocolError, UnsupportedError
from gateway.inference import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

# V2 datatype -> numpy dtype. BYTES is an object array of str (what onnxruntime takes for tensor(string)).
DTYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DATATYPE_OF: Mapping[np.dtype[Any], str] = {v: k for k, v in DTYPES.items()}

# Request parameters of Triton extensions we do not implement; silently ignoring them would return wrong data.
_UNSUPPORTED_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
MAX_ELEMENTS = 1 << 31  # a shape asking for more is absurd for a JSON/HTTP request; refuse before allocating
MAX_RANK = 32  # numpy stops at 64 dimensions; no served model comes near either
_LENGTH = struct.Struct("<I")
_EMPTY = memoryview(b"")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """Validate `Inference-Header-Content-Length` against the body; None when the header is absent."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise ProtocolError(f"Unable to parse Inference-Header-Content-Length: {value!r} is not an integer") from None
    if length < 0 or length > body_length:
        raise ProtocolError(f"Inference-Header-Content-Length {length} is outside the body (0 to {body_length} bytes)")
    return length


def decode_request(body: bytes, header_length: int | None = None) -> InferenceRequest:
    """Decode a V2 inference request; with `header_length`, the JSON is the head and binary tensors follow."""
    if header_length is None:
        head, raw = _loads(body), _EMPTY
    else:
        view = memoryview(body)
        head, raw = _loads(view[:header_length]), view[header_length:]
    if not isinstance(head, dict):
        raise ProtocolError("request body must be a JSON object")
    request_id = head.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    parameters = _parameters(head.get("parameters"), "parameters")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError("parameters.binary_data_output must be a boolean")

    raw_inputs = head.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list")
    offset = 0
    inputs: list[Tensor] = []
    for i, item in enumerate(raw_inputs):
        tensor, offset = _decode_input(item, i, raw, offset)
        inputs.append(tensor)
    if offset != len(raw):
        raise ProtocolError(
            f"binary data has {len(raw) - offset} bytes more than the inputs' binary_data_size add up to"
        )

    outputs = _decode_outputs(head.get("outputs"), binary_output)
    return InferenceRequest(
        inputs=tuple(inputs), id=request_id, outputs=outputs, binary_output=binary_output, parameters=parameters
    )


def encode_response(response: InferenceResponse) -> tuple[bytes, int | None]:
    """Encode a response; returns the body and the JSON head's length when binary tensors follow it (else None)."""
    outputs: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    binary = response.binary or (False,) * len(response.outputs)
    for tensor, as_binary in zip(response.outputs, binary, strict=True):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.array.shape}
        if as_binary:
            payload = _to_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(payload)}
            if payload:  # Triton sends no buffer at all for a zero-size tensor
                buffers.append(payload)
        else:
            entry["data"] = _to_json_data(tensor)
        outputs.append(entry)
    head: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        head["id"] = response.id
    if response.parameters:
        head["parameters"] = response.parameters
    head["outputs"] = outputs
    encoded = orjson.dumps(head, option=_JSON_OPTIONS)
    if not buffers:
        return encoded, None
    return b"".join((encoded, *buffers)), len(encoded)


def decode_response(body: bytes, header_length: int | None = None) -> InferenceResponse:
    """Decode a V2 inference response (another server's answer), as strictly as a request; ProtocolError names the
    output at fault."""
    if header_length is None:
        head, raw = _loads(body), _EMPTY
    else:
        view = memoryview(body)
        head, raw = _loads(view[:header_length]), view[header_length:]
    if not isinstance(head, dict) or not isinstance(head.get("outputs"), list):
        raise ProtocolError("a response must be a JSON object with an 'outputs' list")
    offset = 0
    outputs: list[Tensor] = []
    for i, item in enumerate(head["outputs"]):
        tensor, offset = _decode_input(item, i, raw, offset, "output")
        outputs.append(tensor)
    response_id = head.get("id")
    return InferenceResponse(
        model_name=str(head.get("model_name", "")),
        model_version=str(head.get("model_version", "")),
        outputs=tuple(outputs),
        id=response_id if isinstance(response_id, str) else None,
    )


def encode_request(inputs: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """A V2 JSON inference request for named arrays, asking for every output as JSON (what the gateway sends a
    remote version for a shadow copy or a validation run)."""
    tensors = []
    for name, array in inputs.items():
        tensor = Tensor(name, DATATYPE_OF[array.dtype], array)
        tensors.append({"name": name, "datatype": tensor.datatype, "shape": array.shape, "data": _to_json_data(tensor)})
    return orjson.dumps({"inputs": tensors}, option=_JSON_OPTIONS)


def encode_error(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _loads(data: bytes | memoryview) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None


def _parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    for key in _UNSUPPORTED_PARAMETERS:
        if key in value:
            raise UnsupportedError(f"{where}.{key}: the shared-memory extension is not supported by this server")
    return value


def _decode_input(item: object, index: int, raw: memoryview, offset: int, kind: str = "input") -> tuple[Tensor, int]:
    where = f"{kind}s[{index}]"
    if not isinstance(item, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where}.name must be a non-empty string")
    where = f"{kind} '{name}'"
    datatype = item.get("datatype")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        supported = ", ".join(DTYPES)
        raise ProtocolError(f"{where}: datatype {datatype!r} is not supported; use one of {supported}")
    dtype = DTYPES[datatype]
    shape = _shape(item.get("shape"), where)
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise ProtocolError(f"{where}: shape {list(shape)} has {count} elements, over the limit of {MAX_ELEMENTS}")
    if count == 0 and math.prod(d for d in shape if d) > MAX_ELEMENTS:  # numpy refuses such a shape even empty
        raise ProtocolError(f"{where}: shape {list(shape)} is over the limit of {MAX_ELEMENTS} elements")
    parameters = _parameters(item.get("parameters"), f"{where}.parameters")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in item:
            raise ProtocolError(f"{where} has both 'data' and parameters.binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer")
        if offset + size > len(raw):
            raise ProtocolError(
                f"{where}: binary_data_size {size} runs past the end of the body"
                f" ({len(raw) - offset} bytes of binary data left); is Inference-Header-Content-Length set?"
            )
        array = _from_binary(raw[offset : offset + size], datatype, dtype, shape, count, where)
        return Tensor(name, datatype, array), offset + size
    if "data" not in item:
        raise ProtocolError(f"{where} has neither 'data' nor parameters.binary_data_size")
    return Tensor(name, datatype, _from_json(item["data"], datatype, dtype, shape, count, where)), offset


def _shape(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ProtocolError(f"{where}: shape must be a list of non-negative integers")
    if len(value) > MAX_RANK:
        raise ProtocolError(f"{where}: shape has {len(value)} dimensions, over the limit of {MAX_RANK}")
    for d in value:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0 or d > MAX_ELEMENTS:
            raise ProtocolError(f"{where}: shape {value} must be a list of integers from 0 to {MAX_ELEMENTS}")
    return tuple(value)


def _from_binary(
    buf: memoryview, datatype: str, dtype: np.dtype[Any], shape: tuple[int, ...], count: int, where: str
) -> npt.NDArray[Any]:
    if datatype == "BYTES":
        items = _split_length_prefixed(buf, where)
        if len(items) != count:
            raise ProtocolError(
                f"{where}: binary data holds {len(items)} BYTES elements; shape {list(shape)} needs {count}"
            )
        return np.array(items, dtype=object).reshape(shape)
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise ProtocolError(f"{where}: binary_data_size is {len(buf)} bytes; {datatype}{list(shape)} needs {expected}")
    # frombuffer is a zero-copy view of the request body; little-endian is the wire order (as is the host's here).
    array = np.frombuffer(buf, dtype=dtype.newbyteorder("<")).reshape(shape)
    if datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise ProtocolError(f"{where}: binary BOOL data must be bytes 0 or 1")
    return array


def _split_length_prefixed(buf: memoryview, where: str) -> list[str]:
    items: list[str] = []
    pos, end = 0, len(buf)
    while pos < end:
        if pos + 4 > end:
            raise ProtocolError(f"{where}: truncated BYTES element length at byte {pos}")
        (n,) = _LENGTH.unpack_from(buf, pos)
        pos += 4
        if pos + n > end:
            raise ProtocolError(f"{where}: BYTES element of {n} bytes runs past the end of its binary data")
        items.append(_utf8(bytes(buf[pos : pos + n]), where))
        pos += n
    return items


def _utf8(value: bytes, where: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{where}: BYTES elements must be UTF-8 text for ONNX string tensors") from None


_KIND_OK: Mapping[str, str] = {"b": "b", "i": "iu", "u": "iu", "f": "fiu"}


def _from_json(
    data: object, datatype: str, dtype: np.dtype[Any], shape: tuple[int, ...], count: int, where: str
) -> npt.NDArray[Any]:
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten_strings(data, where)
        if len(flat) != count:
            raise ProtocolError(f"{where}: data has {len(flat)} elements; shape {list(shape)} needs {count}")
        return np.array(flat, dtype=object).reshape(shape)
    if dtype.kind == "f":
        # Numbers straight to the float type: JSON numbers, and what the spec lets a server coerce (true/false,
        # numeric strings, null as NaN, the mirror of NaN going out as null). A finite number the type cannot hold
        # makes numpy warn "overflow encountered in cast"; the gateway turns that warning into an error (see
        # `strict_float_casts`), so it arrives here as RuntimeWarning and costs nothing when it does not happen.
        try:
            array = float_array(data, dtype)
        except RuntimeWarning:
            raise ProtocolError(f"{where}: a value is out of range for {datatype}") from None
        except (ValueError, TypeError):
            raise ProtocolError(
                f"{where}: {datatype} data must be numbers, in a (possibly nested) list with equal-length rows"
            ) from None
        if array.size != count:
            raise ProtocolError(f"{where}: data has {array.size} elements; shape {list(shape)} needs {count}")
        return array.reshape(shape)
    try:
        parsed = np.asarray(data)
    except (ValueError, TypeError):
        raise ProtocolError(
            f"{where}: data must be a (possibly nested) list of numbers with equal-length rows"
        ) from None
    if parsed.size != count:
        raise ProtocolError(f"{where}: data has {parsed.size} elements; shape {list(shape)} needs {count}")
    if count == 0:
        return np.empty(shape, dtype=dtype)
    if dtype.kind in "iu" and parsed.dtype.kind in "fO":
        # Integers past int64 (UINT64's top half) make numpy fall back to float or object: recheck them exactly.
        parsed = _exact_integers(data, dtype, where)
    if parsed.dtype.kind not in _KIND_OK[dtype.kind]:
        expected = {"b": "true/false", "i": "integers", "u": "integers"}[dtype.kind]
        raise ProtocolError(f"{where}: {datatype} data must be {expected}, got {_kind_name(parsed.dtype)}")
    if dtype.kind in "iu" and not _fits(parsed, dtype):
        raise ProtocolError(f"{where}: a value is out of range for {datatype}")
    return parsed.astype(dtype, copy=False).reshape(shape)


def float_array(data: list[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """JSON numbers (and what the spec lets a server coerce) read into a float array: the one place that does it, for
    the general decoder and the fast lane alike. Raises ValueError or TypeError for data numpy cannot read, and
    RuntimeWarning for a value the type cannot hold (see `strict_float_casts`)."""
    return np.array(data, dtype=dtype)


def strict_float_casts() -> None:
    """Make numpy's float-overflow warning an error in this module, whose `float_array` reads every JSON float, so
    a value the input's float type cannot hold is refused without checking every array on the hot path. Called by
    the composition root."""
    warnings.filterwarnings("error", message="overflow encountered in cast", category=RuntimeWarning, module=__name__)


def _exact_integers(data: list[Any], dtype: np.dtype[Any], where: str) -> npt.NDArray[Any]:
    flat = np.array(data, dtype=object).ravel()
    if not all(type(v) is int for v in flat):
        return np.asarray(data)  # not all integers: the caller reports the kind it finds
    try:
        return np.array(flat.tolist(), dtype=dtype)
    except OverflowError:
        raise ProtocolError(f"{where}: a value is out of range for {DATATYPE_OF[dtype]}") from None


def _kind_name(dtype: np.dtype[Any]) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers", "U": "strings"}.get(
        dtype.kind, "mixed values"
    )


def _fits(values: npt.NDArray[Any], dtype: np.dtype[Any]) -> bool:
    info = np.iinfo(dtype)
    return bool(values.min() >= info.min and values.max() <= info.max)


def _flatten_strings(data: Sequence[object], where: str) -> list[str]:
    out: list[str] = []
    # Depth-first, in row-major order; an explicit stack so a deeply nested body cannot exhaust the C stack.
    iters = [iter(data)]
    while iters:
        try:
            item = next(iters[-1])
        except StopIteration:
            iters.pop()
            continue
        if isinstance(item, list):
            iters.append(iter(item))
        elif isinstance(item, str):
            out.append(item)
        else:
            raise ProtocolError(f"{where}: BYTES data must be strings, got {type(item).__name__}")
    return out


def _to_bytes(tensor: Tensor) -> bytes:
    array = tensor.array
    if tensor.datatype == "BYTES":
        parts: list[bytes] = []
        for item in array.ravel():
            value = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(_LENGTH.pack(len(value)))
            parts.append(value)
        return b"".join(parts)
    return little_endian_bytes(array)


def little_endian_bytes(array: npt.NDArray[Any]) -> bytes:
    """A fixed-size tensor's binary data as the wire carries it: C order, little-endian."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _to_json_data(tensor: Tensor) -> Any:
    array = tensor.array
    if tensor.datatype == "BYTES":
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in array.ravel()]
    if array.dtype == np.float16:  # orjson has no float16; float32 holds every float16 exactly
        array = array.astype(np.float32)
    # orjson writes numpy arrays natively (no .tolist()), but only C-contiguous ones; NaN and Inf become null.
    return np.ascontiguousarray(array).ravel()


def requested_outputs(request: InferenceRequest, names: Sequence[str]) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """The outputs to return, in order, with their binary flags; all of the model's when the request names none."""
    if request.outputs is None:
        return tuple(names), (request.binary_output,) * len(names)
    return tuple(o.name for o in request.outputs), tuple(o.binary for o in request.outputs)


def _decode_outputs(value: object, default_binary: bool) -> tuple[RequestedOutput, ...] | None:
    if value is None or value == []:  # Triton: no requested outputs means all of them
        return None
    if not isinstance(value, list):
        raise ProtocolError("'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f"outputs[{i}] must be an object with a string 'name'")
        name: str = item["name"]
        parameters = _parameters(item.get("parameters"), f"outputs[{i}].parameters")
        if parameters.get("classification"):
            raise UnsupportedError(f"output '{name}': the classification extension is not supported")
        binary = parameters.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise ProtocolError(f"output '{name}': parameters.binary_data must be a boolean")
        if any(o.name == name for o in outputs):
            raise ProtocolError(f"output '{name}' is requested more than once")
        outputs.append(RequestedOutput(name, binary))
    return tuple(outputs)
