"""The batched request path's own cost, with no network, no kernel and no load generator, beside the in-process
batch ceiling (`benchmarks.ceiling`'s work) measured the same way:

    python -m benchmarks.bench_batched_path               # microseconds per request and per ceiling row, best of 7
    python -m benchmarks.bench_batched_path --callgrind   # instructions per request and per row: the same every run

Thirty-two connections (the gateway's own protocol objects, as uvicorn makes them, on stand-in transports) each
send one single-row request of the medium model (256 -> 1024 -> 1024 -> 10) to a route with the comparison's
dynamic batching (32 rows, 500 us); the event loop runs until all 32 are answered, and again. Everything the server
does for a batched request is in the figure: the HTTP parser, the direct path, the data plane, the fast lane's
decode and encode, the batcher, the hop to the model thread and back, the batch-32 run. The ceiling decodes 32
bodies, runs one batch of 32 and encodes 32 answers, in one thread with nothing between.

What this leaves out is what `benchmarks.compare` adds: the sockets. Its ratio for the batched medium model (req/s
over the ceiling's rows/s) is this ratio less what the kernel charges per request on the machine at hand, which
grows with the server's time per request (the load generator sleeps between answers and each one wakes it), and
less the smaller batches a closed loop forms. So this is the ratio the gateway's code allows, and the figure to
compare two versions of the batched path by.

Under callgrind, every thread's instructions in the measured rounds count, and nothing before them (`_instructions`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

from benchmarks.compare import gateway_config
from benchmarks.models import MEDIUM, write_repository
from benchmarks.payload import build_body

CONNECTIONS = 32


def body() -> bytes:
    """The comparison's single-row medium body (same seed)."""
    return build_body([{"name": "input", "datatype": "FP32", "shape": [-1, MEDIUM.n_inputs]}])


def _request(payload: bytes) -> bytes:
    head = b"POST /v2/models/medium/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload


def gateway_rounds(config: Path, rounds: int, repeats: int, *, traced: bool = False) -> float:
    """Best microseconds per request over `repeats` runs of `rounds` rounds of CONNECTIONS requests; `traced`: each
    run inside sys.call_tracing, for callgrind (see `_instructions`)."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from gateway.app import Settings, create_app
    from gateway.transport import StandInTransport, protocol_for

    raw = _request(body())
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    class Counting(StandInTransport):
        """Keeps the answer and resolves the round's future when the last of its CONNECTIONS answers is written."""

        def write(self, data: bytes) -> None:
            self.last = data
            state[1] -= 1
            if state[1] == 0:
                state[0].set_result(None)

    state: list[Any] = [None, 0]

    async def build() -> list[tuple[Any, Counting]]:
        app = create_app(Settings(config_path=config, watch=False), seed=0)
        settings = Config(app, http=protocol_for(app.state.dataplane), lifespan="off", access_log=False)
        settings.load()
        server = ServerState()
        made = []
        for _ in range(CONNECTIONS):
            protocol: Any = settings.http_protocol_class(config=settings, server_state=server, app_state={})  # type: ignore[call-arg]
            transport = Counting()
            protocol.connection_made(transport)
            made.append((protocol, transport))
        return made

    async def run(connections: list[tuple[Any, Counting]], count: int) -> None:
        for _ in range(count):
            state[0], state[1] = loop.create_future(), CONNECTIONS
            for protocol, _transport in connections:
                protocol.data_received(raw)
            await state[0]

    try:
        connections = loop.run_until_complete(build())
        loop.run_until_complete(run(connections, 30))  # warm: sessions, arenas, the batcher's task
        _check(connections)
        gc.collect()
        gc.freeze()  # the start-up heap is not the requests' cost (see bench_path)
        best = float("inf")
        if traced:
            _trace_work_items()
        for _ in range(repeats):
            start = time.perf_counter()
            if traced:
                sys.call_tracing(loop.run_until_complete, (run(connections, rounds),))
            else:
                loop.run_until_complete(run(connections, rounds))
            best = min(best, (time.perf_counter() - start) / (rounds * CONNECTIONS) * 1e6)
            _check(connections)
        return best
    finally:
        loop.close()


def _check(connections: Sequence[tuple[Any, Any]]) -> None:
    """Every connection's last answer was a 200."""
    for _protocol, transport in connections:
        if not transport.last.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"unexpected answer: {transport.last[:300]!r}")


def ceiling_rounds(model: Path, batches: int, repeats: int, *, traced: bool = False) -> float:
    """Best microseconds per row of the in-process ceiling over `repeats` runs of `batches` batches of 32."""
    from benchmarks.ceiling import batch_runner

    one_batch = batch_runner(model, body(), CONNECTIONS)
    for _ in range(20):
        one_batch()
    gc.collect()
    gc.freeze()
    best = float("inf")

    def many() -> None:
        for _ in range(batches):
            one_batch()

    for _ in range(repeats):
        start = time.perf_counter()
        if traced:
            sys.call_tracing(many, ())
        else:
            many()
        best = min(best, (time.perf_counter() - start) / (batches * CONNECTIONS) * 1e6)
    return best


def _instructions(work: Path, which: str, count: int) -> int:
    """Instructions per request (gateway) or per row (ceiling), every thread, measured rounds only: callgrind counts a
    thread from its entry into `sys.call_tracing` (a C function nothing on the path calls) to its exit, so the
    measured rounds run inside it, and in the gateway's case so does each work item of its model threads
    (`_trace_work_items`). Start-up is never counted: onnxruntime's session set-up alone varies by ~200M
    instructions from one run to the next."""
    out = work / f"callgrind.{which}"
    command = [
        "valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=sys_call_tracing",
        f"--callgrind-out-file={out}", sys.executable, "-m", "benchmarks.bench_batched_path", "--inner", which,
        "--count", str(count), "--work", str(work),
    ]  # fmt: skip
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    subprocess.run(command, check=True, capture_output=True, env=env)
    match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit("callgrind wrote no totals")
    return int(match.group(1)) // (count * CONNECTIONS)


def _trace_work_items() -> None:
    """From now on, run every thread pool work item inside sys.call_tracing, so that callgrind counts the model
    threads' share of the measured rounds (the batch runs there) and nothing of theirs before."""
    from concurrent.futures import thread

    run = thread._WorkItem.run  # a private name: this is a benchmark's probe, not the gateway's code

    def traced(item: Any) -> None:
        sys.call_tracing(run, (item,))

    thread._WorkItem.run = traced  # type: ignore[method-assign,assignment]


def _prepare(work: Path) -> tuple[Path, Path]:
    repository = work / "models"
    if not (repository / MEDIUM.name).is_dir():
        write_repository(repository, [MEDIUM])
    return gateway_config(work / "gateway.yaml", repository), repository / MEDIUM.name / "1" / "model.onnx"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_batched_path", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--callgrind", action="store_true", help="instructions per request, under valgrind")
    parser.add_argument("--count", type=int, help="rounds of 32 per run (default 100; callgrind 20)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--inner", choices=("gateway", "ceiling"), help=argparse.SUPPRESS)  # run under callgrind
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        config, model = _prepare(args.work)
        if args.inner == "gateway":
            gateway_rounds(config, args.count, 1, traced=True)
        else:
            ceiling_rounds(model, args.count, 1, traced=True)
        return 0
    if args.callgrind and shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config, model = _prepare(work)
        gateway: float
        ceiling: float
        if args.callgrind:
            count = args.count or 20
            gateway = _instructions(work, "gateway", count)
            ceiling = _instructions(work, "ceiling", count)
            unit = "instructions"
            print(f"{'gateway, batched (per request)':40s} {gateway:>11,} {unit}")
            print(f"{'in-process ceiling (per row)':40s} {ceiling:>11,} {unit}")
        else:
            count = args.count or 100
            gateway = gateway_rounds(config, count, args.repeats)
            ceiling = ceiling_rounds(model, count, args.repeats)
            print(f"{'gateway, batched (per request)':40s} {gateway:9.1f} us")
            print(f"{'in-process ceiling (per row)':40s} {ceiling:9.1f} us")
        print(f"{'ceiling / gateway':40s} {ceiling / gateway:11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
