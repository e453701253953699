"""HTTP edge: V2 REST routes and admin routes; gateway errors become statuses here and nowhere else."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import __version__
from gateway.dataplane import DataPlane
from gateway.errors import (
    BackendError,
    GatewayError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    ProtocolError,
    UnknownModelError,
    UnsupportedError,
)
from gateway.protocol import encode_error, parse_header_length

logger = logging.getLogger(__name__)

SERVER_NAME = "gateway"
EXTENSIONS = ["binary_tensor_data"]

STATUS: Mapping[type[GatewayError], int] = {
    ProtocolError: 400,
    UnknownModelError: 404,
    PayloadTooLargeError: 413,
    NotReadyError: 503,
    OverloadedError: 503,
    UnsupportedError: 501,
    BackendError: 500,
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
    status = status_for(exc)
    if status >= 500 and not isinstance(exc, NotReadyError | OverloadedError):
        logger.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
    headers = {"retry-after": f"{max(1, round(exc.retry_after))}"} if isinstance(exc, OverloadedError) else None
    return error_response(status, str(exc), headers)


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


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def infer(request: Request) -> Response:
    dataplane = _dataplane(request)
    body = await read_body(request, request.app.state.max_body_bytes)
    header_length = parse_header_length(request.headers.get("inference-header-content-length"), len(body))
    params = request.path_params
    reply = await dataplane.infer(params["model"], params.get("version"), request.headers, body, header_length)
    headers = {dataplane.snapshot.decision_header: reply.decision}
    if reply.header_length is None:
        return Response(reply.body, headers=headers, media_type="application/json")
    headers["inference-header-content-length"] = str(reply.header_length)
    return Response(reply.body, headers=headers, media_type="application/octet-stream")


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
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
    ]
