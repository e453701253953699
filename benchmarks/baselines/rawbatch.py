"""The least a batching HTTP server in Python can do: raw uvloop protocols, no framework, the gateway's fast lane.

Each complete request is decoded by the gateway's fast lane (as `benchmarks.ceiling` does) and queued; once the loop
has handled every read that was ready, the queue runs as one batch (at most `--max-batch` rows) on the model's
session, inline, and each answer is encoded by the fast lane and written. So a request costs what the in-process
ceiling's row costs, plus reading and parsing its HTTP and writing its answer on a real socket, and nothing else:
no routing, metrics, admission, side channels, timeouts or thread hop. It is what batched serving over HTTP reaches
on this machine with this load generator, beside the ceiling (which has no sockets) and the batched gateway.

It answers only the benchmark's request (POST, a JSON body with Content-Length, keep-alive) and the readiness
check; anything else gets 400.

    python -m benchmarks.baselines.rawbatch --model-repository DIR --host 127.0.0.1 --port 8004
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from gateway.backends.onnx import OnnxBackend, OnnxOptions
from gateway.fastlane import FastLane

_HEAD_END = b"\r\n\r\n"
_LENGTH = b"\r\ncontent-length:"
_OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
_READY = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
_BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class Model:
    """One version's session and fast lane, and the requests decoded since the last batch ran."""

    def __init__(self, name: str, path: Path, max_batch: int) -> None:
        # The session runs on the loop (`run` is synchronous); the executor only satisfies the constructor.
        self.backend = OnnxBackend(path, OnnxOptions(), ThreadPoolExecutor(max_workers=1))
        self.backend.warm()
        self.lane = FastLane(self.backend.signature, "1")
        self.name = name
        self.names = [s.name for s in self.backend.signature.inputs]
        self.max_batch = max_batch
        self.queued: list[tuple[asyncio.Transport, dict[str, Any]]] = []

    def run(self) -> None:
        """Everything queued, in batches of at most max_batch rows: one run each, then every answer written."""
        queued, self.queued = self.queued, []
        for start in range(0, len(queued), self.max_batch):
            batch = queued[start : start + self.max_batch]
            inputs = {n: np.concatenate([arrays[n] for _, arrays in batch]) for n in self.names}
            outputs = self.backend.run(inputs).outputs
            row = 0
            for transport, arrays in batch:
                rows = len(arrays[self.names[0]])
                part = {k: v[row : row + rows] for k, v in outputs.items()}
                row += rows
                body = self.lane.encode(part, self.name, None) or b"{}"
                transport.write(b"".join((_OK, str(len(body)).encode(), _HEAD_END, body)))


class _Connection(asyncio.Protocol):
    def __init__(self, models: dict[bytes, Model]) -> None:
        self._models = models
        self._buf = bytearray()
        self._transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while True:
            end = buf.find(_HEAD_END)
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            if head.startswith(b"get /v2/health/ready "):  # readiness: the models loaded before the port opened
                del buf[: end + 4]
                self._transport.write(_READY)
                continue
            start = head.find(_LENGTH)
            if start < 0:
                self._refuse()
                return
            start += len(_LENGTH)
            stop = head.find(b"\r\n", start)
            length = int(head[start:] if stop < 0 else head[start:stop])
            if len(buf) < end + 4 + length:
                return
            body = bytes(buf[end + 4 : end + 4 + length])
            del buf[: end + 4 + length]
            target = head.split(b" ", 2)[1] if head.startswith(b"post ") else b""
            model = self._models.get(target)
            decoded = model.lane.decode(body) if model is not None else None
            if model is None or decoded is None:
                self._refuse()
                return
            if not model.queued:  # the first since the last batch: run once this round of reads is handled
                asyncio.get_running_loop().call_soon(model.run)
            model.queued.append((self._transport, decoded[0]))

    def _refuse(self) -> None:
        self._transport.write(_BAD)
        self._transport.close()


async def _serve(repository: Path, host: str, port: int, max_batch: int) -> None:
    models = {
        f"/v2/models/{folder.name}/infer".encode(): Model(folder.name, folder / "1" / "model.onnx", max_batch)
        for folder in sorted(repository.iterdir())
        if (folder / "1" / "model.onnx").is_file()
    }
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(models), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8004)
    parser.add_argument("--max-batch", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        uvloop.run(_serve(args.model_repository, args.host, args.port, args.max_batch))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
