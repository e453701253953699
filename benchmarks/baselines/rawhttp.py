"""A fixed-reply HTTP/1.1 server on raw asyncio protocols (uvloop): the fastest server Python can be.

It exists to measure the load generator's own ceiling: against it, the load generator's core saturates before the
server's does, so the req/s it reaches is what the load generator can drive at most.

    python -m benchmarks.baselines.rawhttp --host 127.0.0.1 --port 8002
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import cast

import uvloop

_BODY = b'{"model_name":"m","outputs":[{"name":"output","shape":[1,2],"datatype":"FP32","data":[0.25,0.75]}]}'
_REPLY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_BODY)).encode()
    + b"\r\n\r\n"
    + _BODY
)
_HEAD_END = b"\r\n\r\n"
_LENGTH = b"\r\ncontent-length:"


class _FixedReply(asyncio.Protocol):
    def __init__(self) -> None:
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-typed ones.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        replies = 0
        while True:
            end = buf.find(_HEAD_END)
            if end < 0:
                break
            head = bytes(buf[:end]).lower()
            start = head.find(_LENGTH)
            length = 0
            if start >= 0:
                start += len(_LENGTH)
                stop = head.find(b"\r\n", start)
                length = int(head[start:] if stop < 0 else head[start:stop])
            if len(buf) < end + 4 + length:
                break
            del buf[: end + 4 + length]
            replies += 1
        if replies:
            assert self._transport is not None
            self._transport.write(_REPLY * replies)


async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_FixedReply, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Raw asyncio fixed-reply HTTP server (load generator ceiling).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args(argv)
    try:
        uvloop.run(_serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
