"""HTTP edge: V2 REST routes and admin routes; gateway errors become statuses here and nowhere else."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from gateway import __version__
from gateway.admin import Refusal
from gateway.dataplane import DataPlane, Reply
from gateway.errors import (
    BackendError,
    ConflictError,
    DeadlineExceededError,
    GatewayError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    ProtocolError,
    RemoteError,
    RemoteTimeoutError,
    UnknownModelError,
    UnsupportedError,
)
from gateway.experiment.hub import OUTCOMES, Judged
from gateway.protocol import encode_error

logger = logging.getLogger(__name__)

SERVER_NAME = "gateway"
EXTENSIONS = ["binary_tensor_data"]

STATUS: Mapping[type[GatewayError], int] = {
    ProtocolError: 400,
    UnknownModelError: 404,
    PayloadTooLargeError: 413,
    ConflictError: 409,
    NotReadyError: 503,
    OverloadedError: 503,
    DeadlineExceededError: 504,
    UnsupportedError: 501,
    BackendError: 500,
    RemoteError: 502,
    RemoteTimeoutError: 504,
}


def status_for(exc: GatewayError) -> int:
    return next((STATUS[c] for c in type(exc).__mro__ if c in STATUS), 500)


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(encode_error(message), status_code=status, headers=headers, media_type="application/json")


async def gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    status, headers, body = refusal(exc, f"{request.method} {request.url.path}")
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in the V2 error shape, so every client sees {"error": ...}."""
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    logger.exception("%s %s: unexpected error", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}")


def _dataplane(request: Request) -> DataPlane:
    dataplane: DataPlane = request.app.state.dataplane
    return dataplane


class RawHeaders(Mapping[str, str]):
    """The ASGI header list read in place: routing looks up one or two names, so no dict is built per request."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def get(self, key: str, default: Any = None) -> Any:
        name = key.encode("latin-1")
        for k, v in self._raw:
            if k == name:
                return v.decode("latin-1")
        return default

    def __getitem__(self, key: str) -> str:
        value: str | None = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return (k.decode("latin-1") for k, _ in self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, pinned version) when `path` is `/v2/models/{m}[/versions/{v}]/infer`, else None."""
    if not path.startswith("/v2/models/") or not path.endswith("/infer"):
        return None
    parts = path[11:-6].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    return None


DECISION_HEADER = b"x-gateway-route"  # which version served and why: "route/name;version=N;reason=sticky"
_JSON_TYPE = (b"content-type", b"application/json")
_BINARY_TYPE = (b"content-type", b"application/octet-stream")


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers (content-length excluded), body


async def answer(dataplane: DataPlane, model: str, pin: str | None, headers: Mapping[str, str], body: bytes) -> Answer:
    """An inference request's whole answer; every failure becomes its status and `{"error": ...}` body here."""
    try:
        reply = await dataplane.infer(model, pin, headers, body)
    except Exception as exc:
        return failure(exc, model)
    return success(reply)


def success(reply: Reply) -> Answer:
    if reply.header_length is None:
        return 200, [(DECISION_HEADER, reply.decision), _JSON_TYPE], reply.body
    length = (b"inference-header-content-length", str(reply.header_length).encode())
    return 200, [(DECISION_HEADER, reply.decision), _BINARY_TYPE, length], reply.body


def failure(exc: Exception, model: str) -> Answer:
    """The answer to an inference request that raised `exc`: a refusal, or a logged 500 for anything unexpected."""
    if isinstance(exc, GatewayError):
        return refusal(exc, f"POST /v2/models/{model}/infer")
    logger.exception("POST /v2/models/%s/infer: unexpected error", model, exc_info=exc)
    return 500, [_JSON_TYPE], encode_error(f"internal error: {type(exc).__name__}")


def refusal(exc: GatewayError, what: str) -> Answer:
    """The answer to a request refused with `exc`; `what` names the request in the log when it is a server fault."""
    status = status_for(exc)
    if status >= 500 and not exc.routine:
        logger.error("%s failed: %s", what, exc, exc_info=exc)
    headers = [_JSON_TYPE]
    if isinstance(exc, OverloadedError):
        headers.append((b"retry-after", str(max(1, round(exc.retry_after))).encode()))
    return status, headers, encode_error(str(exc))


async def infer(dataplane: DataPlane, scope: Scope, receive: Receive, send: Send, model: str, pin: str | None) -> None:
    """POST .../infer as a bare ASGI handler (the transport's direct path is faster still; see `transport`)."""
    try:
        body = await _read_body(scope, receive, dataplane.snapshot.max_body_bytes)
    except GatewayError as exc:
        dataplane.count_refused(exc)
        status, headers, payload = refusal(exc, f"POST /v2/models/{model}/infer")
    else:
        status, headers, payload = await answer(dataplane, model, pin, RawHeaders(scope["headers"]), body)
    headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def refuse(send: Send, refusal: Refusal) -> None:
    """An admin call the guard refused, in the V2 error shape (and a Bearer challenge on a 401)."""
    body = encode_error(refusal.message)
    headers = [_JSON_TYPE, (b"content-length", str(len(body)).encode())]
    if refusal.challenge:
        headers.append((b"www-authenticate", b'Bearer realm="gateway admin"'))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def method_not_allowed(send: Send, allow: str) -> None:
    body = encode_error("Method Not Allowed")
    headers = [_JSON_TYPE, (b"allow", allow.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 405, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body_within(request: Request, limit: int) -> bytes:
    """A Starlette request's body, refused (413) past `limit` bytes before more than that is read."""
    return await _read_body(request.scope, request.receive, limit)


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLargeError(f"request body of {int(value)} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProtocolError("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def server_metadata(request: Request) -> Response:
    return JSON({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})


async def live(request: Request) -> Response:
    return JSON({"live": True})


async def ready(request: Request) -> Response:
    ok = _dataplane(request).ready()
    return JSON({"ready": ok}, status_code=200 if ok else 503)


async def model_metadata(request: Request) -> Response:
    params = request.path_params
    return JSON(_dataplane(request).model_metadata(params["model"], params.get("version")))


async def model_ready(request: Request) -> Response:
    params = request.path_params
    name = params["model"]
    ok = _dataplane(request).model_ready(name, params.get("version"))
    return JSON({"name": name, "ready": ok}, status_code=200 if ok else 503)


def v2_routes() -> list[BaseRoute]:
    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{model}", model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready, methods=["GET"]),
    ]


_FEEDBACK_STATUS = {"accepted": 200, "duplicate": 409, "unknown": 404, "expired": 404, "rejected": 400}


def feedback_reply(judged: Sequence[Judged], batch: bool) -> JSON:
    """One feedback: its own status (200, 409 duplicate, 404 unknown or expired, 400 when it cannot be scored) and
    error. A list: 200 with the count per outcome and, for each item not accepted, its index, id and why."""
    if not batch:
        item = judged[0]
        status = _FEEDBACK_STATUS[item.outcome]
        if status == 200:
            return JSON({"id": item.id, "version": item.version, "outcome": item.outcome})
        return JSON({"error": item.error, "id": item.id, "outcome": item.outcome}, status_code=status)
    counts = {outcome: 0 for outcome in OUTCOMES}
    problems = []
    for index, item in enumerate(judged):
        counts[item.outcome] += 1
        if item.outcome != "accepted":
            problems.append({"index": index, "id": item.id, "outcome": item.outcome, "error": item.error})
    return JSON({"outcomes": counts, "problems": problems})
