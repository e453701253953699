"""A remote answer as the client gets it: passed back as bytes, with only what names the model fixed; and a remote
error status as the gateway error it means, naming the endpoint.

The route's client asked for the route's model name, so `model_name` and `model_version` are rewritten to the
route and the version's name. A JSON answer keeps every other byte: the leading fields are spliced, which Triton,
MLServer, KServe and the gateway all write first (anything else is parsed and written again, a slower path that
gives the same answer). A binary answer's JSON head is rewritten and `Inference-Header-Content-Length` follows it.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson

from gateway.errors import (
    GatewayError,
    PayloadTooLargeError,
    ProtocolError,
    RemoteError,
    RemoteTimeoutError,
    RemoteUnavailableError,
)

HEADER_LENGTH = "inference-header-content-length"
# The leading fields: model_name, then model_version if the server sends it (a string, or null as KServe writes
# it when it has none; JSON escapes allowed).
_LEADING = re.compile(
    rb'\s*\{\s*"model_name"\s*:\s*"(?:[^"\\]|\\.)*"\s*,(?:\s*"model_version"\s*:\s*(?:"(?:[^"\\]|\\.)*"|null)\s*,)?'
)


class MalformedAnswerError(RemoteError):
    """A 2xx answer that is not a V2 inference response."""


def leading(route: str, version: str) -> bytes:
    """The leading fields of an answer to the route's client, built once per version and route."""
    return b'{"model_name":' + orjson.dumps(route) + b',"model_version":' + orjson.dumps(version) + b","


def fix(response: httpx.Response, lead: bytes, route: str, version: str, where: str) -> tuple[bytes, int | None]:
    """The answer's bytes for the client and its JSON head's length when binary tensors follow (else None)."""
    body = response.content
    header = response.headers.get(HEADER_LENGTH)
    if header is None:
        match = _LEADING.match(body)
        if match is not None:
            return lead + body[match.end() :], None
        head = _head(body, where)
        head["model_name"], head["model_version"] = route, version
        return orjson.dumps(head), None
    try:
        length = int(header)
    except ValueError:
        raise MalformedAnswerError(f"{where}: Inference-Header-Content-Length {header!r} is not a number") from None
    if not 0 < length <= len(body):
        raise MalformedAnswerError(f"{where}: Inference-Header-Content-Length {length} is outside the answer")
    head = _head(memoryview(body)[:length], where)
    head["model_name"], head["model_version"] = route, version
    encoded = orjson.dumps(head)
    return encoded + body[length:], len(encoded)


def _head(data: bytes | memoryview, where: str) -> dict[str, Any]:
    try:
        head = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedAnswerError(f"{where}: the answer is not JSON: {exc}") from None
    if not isinstance(head, dict) or not isinstance(head.get("outputs"), list):
        raise MalformedAnswerError(f"{where}: the answer is not a V2 inference response (no 'outputs' list)")
    return head


def message(response: httpx.Response) -> str:
    """The remote's own words: its V2 `{"error": ...}`, else the start of its body, else its status."""
    text = ""
    try:
        data = orjson.loads(response.content)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            text = data["error"]
    except orjson.JSONDecodeError:
        text = response.content[:200].decode("utf-8", "replace").strip()
    return text or response.reason_phrase or "no message"


def error_of(response: httpx.Response, where: str) -> GatewayError:
    """The gateway error a remote error status means. The request's faults keep their status (400, 413); the
    endpoint's are 502, or 503 and 504 when it says it is unavailable or timed out; a 404 is the config's fault (the
    endpoint has no such model): 502."""
    status = response.status_code
    said = f"{where} answered {status}: {message(response)}"
    if status in (400, 422):
        return ProtocolError(said)
    if status == 413:
        return PayloadTooLargeError(said)
    if status in (429, 503):
        return RemoteUnavailableError(said)
    if status == 504:
        return RemoteTimeoutError(said)
    return RemoteError(said)
