"""The floor: a bare Starlette app on uvicorn that answers every infer request with a fixed V2 reply.

No decoding, no model, by default not even reading the body (uvicorn's parser still receives and drops it): any
Python ASGI server in front of a model costs at least this much, so its req/s is the ceiling the gateway is measured
against. `--read-body` adds `await request.body()`, which on this machine costs about a quarter of the floor's req/s.

    python -m benchmarks.baselines.floor --host 127.0.0.1 --port 8001 [--read-body]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_REPLY = b'{"model_name":"m","outputs":[{"name":"output","shape":[1,2],"datatype":"FP32","data":[0.25,0.75]}]}'
_EMPTY = b""


async def _infer(request: Request) -> Response:
    return Response(_REPLY, media_type="application/json")


async def _infer_reading_body(request: Request) -> Response:
    await request.body()
    return Response(_REPLY, media_type="application/json")


async def _ok(request: Request) -> Response:
    return Response(_EMPTY)


def create_app(*, read_body: bool = False) -> Starlette:
    infer = _infer_reading_body if read_body else _infer
    return Starlette(
        routes=[
            Route("/v2/models/{model}/infer", infer, methods=["POST"]),
            Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
            Route("/v2/health/ready", _ok),
            Route("/v2/health/live", _ok),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bare Starlette floor server (fixed reply).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--read-body", action="store_true", help="await the request body before replying")
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(read_body=args.read_body),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
