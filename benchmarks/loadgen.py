"""HTTP load generator for any V2 (Open Inference Protocol) endpoint: closed loop or open loop, JSON and a table.

Closed loop: N keep-alive connections, each sends its next request the moment the previous response ends.
Open loop: requests are due at a fixed arrival rate whatever the server does; a due request takes an idle
connection or waits in a queue for one, and its latency runs from the time it was *due*, so the time it spent
waiting counts (no coordinated omission).

    python -m benchmarks.loadgen http://127.0.0.1:8000 --model tiny --batch 1 -c 32 -d 10
    python -m benchmarks.loadgen http://127.0.0.1:8000/v2/models/tiny/infer --body req.json --rate 2000 -c 64
    python -m benchmarks.loadgen http://127.0.0.1:8000 --model tiny --engine wrk --json out.json

The Python engine is raw asyncio protocols on uvloop (when installed) writing one pre-encoded request and framing
responses by Content-Length, about 3x the rate of the fastest Python server on one core; `--engine wrk` uses
Debian's `wrk` (closed loop only) where it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO, cast

from benchmarks.payload import fetch_body, infer_url
from benchmarks.wire import Endpoint, ResponseFramer, WireError, encode_request

_PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))
BIN_S = 0.25  # open loop: the timeline's resolution


class LoadError(Exception):
    """The run could not start or went wrong in a way that makes its numbers meaningless."""


@dataclass(frozen=True, slots=True)
class LoadSpec:
    url: str  # the full infer URL
    body: bytes
    connections: int = 32
    duration_s: float = 10.0
    warmup_s: float = 2.0
    rate: float | None = None  # requests/s for open loop; None = closed loop
    headers: tuple[tuple[str, str], ...] = ()
    progress_s: float = 0.0  # seconds between progress lines on stderr; 0 = none
    drain_s: float = 5.0  # open loop: how long to wait for outstanding requests after the last one is due

    @property
    def mode(self) -> str:
        return "closed" if self.rate is None else "open"


@dataclass(frozen=True, slots=True)
class LoadResult:
    engine: str
    mode: str
    url: str
    connections: int
    rate: float | None
    duration_s: float  # the measured window
    requests: int  # 2xx responses in the window
    errors: int  # non-2xx responses, broken connections and (open loop) requests that never completed
    rps: float  # 2xx responses per second over the window
    latency_ms: dict[str, float]  # p50, p90, p99, p999, max, mean over every response in the window
    loadgen_cpu: float  # CPU seconds of the load generator / window seconds (1.0 = one core saturated)
    statuses: dict[str, int] = field(default_factory=dict)  # non-2xx status -> count, plus "transport"/"incomplete"
    queued: int = 0  # open loop: due requests that found every connection busy
    max_send_lag_ms: float = 0.0  # open loop: worst (actual send - due time), queueing included
    latency_by_status_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # open loop: per HTTP status
    ok_per_bin: list[int] = field(default_factory=list)  # open loop: 2xx answers per BIN_S of the window, by due time

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> LoadResult:
        return cls(**data)  # type: ignore[arg-type]


def summarize_latencies(samples_s: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles (p50 ... p999), max and mean, in milliseconds; zeros when there are no samples."""
    if not samples_s:
        return {name: 0.0 for name, _ in _PERCENTILES} | {"max": 0.0, "mean": 0.0}
    ordered = sorted(samples_s)
    n = len(ordered)
    out = {name: ordered[max(0, math.ceil(q * n) - 1)] * 1e3 for name, q in _PERCENTILES}
    out["max"] = ordered[-1] * 1e3
    out["mean"] = sum(ordered) / n * 1e3
    return out


class _Run:
    """Counters and samples shared by every connection of one run; the clock is `time.perf_counter`."""

    def __init__(self, spec: LoadSpec, request: bytes) -> None:
        self.spec = spec
        self.request = request
        self.running = True  # connections keep sending while true
        self.recording = False  # closed loop: responses count while true
        self.samples: list[float] = []
        self.by_status: dict[int, list[float]] = {}  # open loop: latencies per status
        self.ok_dues: list[float] = []  # open loop: due times (from the window's start) of the 2xx answers
        self.ok = 0
        self.statuses: dict[str, int] = {}
        self.completed = 0  # every response, warm-up included (for progress lines)
        self.transports: list[asyncio.Transport] = []

    async def close_all(self) -> None:
        """Close every connection and let the loop finish the closes (uvloop hangs closing a loop with live ones)."""
        self.running = False
        for transport in self.transports:
            transport.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def count_error(self, kind: str) -> None:
        self.statuses[kind] = self.statuses.get(kind, 0) + 1


class _ClosedClient(asyncio.Protocol):
    """One keep-alive connection that sends its next request as soon as a response completes."""

    def __init__(self, run: _Run, reconnect: Callable[[], None]) -> None:
        self._run = run
        self._reconnect = reconnect
        self._framer = ResponseFramer()
        self._transport: asyncio.Transport | None = None
        self._sent_at = 0.0
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-typed ones.
        self._transport = cast(asyncio.Transport, transport)
        self._run.transports.append(self._transport)
        if self._run.running:
            self._send()

    def _send(self) -> None:
        assert self._transport is not None
        self._busy = True
        self._sent_at = time.perf_counter()
        self._transport.write(self._run.request)

    def data_received(self, data: bytes) -> None:
        try:
            statuses = self._framer.feed(data)
        except WireError as exc:
            self._run.count_error(f"protocol: {exc}")
            self._busy = False
            assert self._transport is not None
            self._transport.close()
            return
        if not statuses:
            return
        now = time.perf_counter()
        run = self._run
        run.completed += 1
        self._busy = False
        if run.recording:
            run.samples.append(now - self._sent_at)
            status = statuses[0]
            if 200 <= status < 300:
                run.ok += 1
            else:
                run.count_error(str(status))
        if self._framer.close_requested:
            # The server is closing this connection: finish it here; connection_lost opens a new one.
            assert self._transport is not None
            self._transport.close()
        elif run.running:
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._busy and self._run.recording:
            self._run.count_error("transport")
        if self._run.running:
            self._reconnect()


class _OpenClient(asyncio.Protocol):
    """One keep-alive connection of the open-loop pool; it takes due requests from the shared schedule."""

    def __init__(self, schedule: _Schedule) -> None:
        self._schedule = schedule
        self._framer = ResponseFramer()
        self._transport: asyncio.Transport | None = None
        self._due = 0.0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-typed ones.
        self._transport = cast(asyncio.Transport, transport)
        self._schedule.run.transports.append(self._transport)
        self._schedule.clients.append(self)
        self._schedule.release(self)

    def send(self, due: float) -> None:
        assert self._transport is not None
        self.busy = True
        self._due = due
        self._schedule.note_send(due, time.perf_counter())
        self._transport.write(self._schedule.run.request)

    def data_received(self, data: bytes) -> None:
        try:
            statuses = self._framer.feed(data)
        except WireError as exc:
            self._schedule.run.count_error(f"protocol: {exc}")
            assert self._transport is not None
            self._transport.close()
            return
        if statuses:
            self.busy = False
            self._schedule.complete(self._due, time.perf_counter(), statuses[0])
            if self._framer.close_requested:
                assert self._transport is not None
                self._transport.close()
            else:
                self._schedule.release(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._schedule.lost(self)


class _Schedule:
    """The open-loop arrival schedule: request i is due at start + i / rate, sent or queued when due."""

    def __init__(self, run: _Run, loop: asyncio.AbstractEventLoop) -> None:
        assert run.spec.rate is not None
        self.run = run
        self._loop = loop
        self._period = 1.0 / run.spec.rate
        self._start = self._next = self.window_start = self.window_end = math.inf
        self._index = 0
        self.pending: deque[float] = deque()
        self.idle: list[_OpenClient] = []
        self.clients: list[_OpenClient] = []
        self.queued = 0
        self.max_lag = 0.0
        self.last_completion = 0.0
        self.finished = asyncio.Event()  # the last request is due and has been sent or queued
        self.drained = asyncio.Event()  # ... and every connection is idle (or dead) again
        self.dead_connections = 0

    def begin(self, start: float) -> None:
        """Start the clock: request 0 is due at `start`, and the window opens after the warm-up."""
        spec = self.run.spec
        self._start = self._next = start
        self.window_start = self.last_completion = start + spec.warmup_s
        self.window_end = self.window_start + spec.duration_s
        self.pump()

    def pump(self) -> None:
        now = time.perf_counter()
        while self._next <= now and self._next < self.window_end:
            due = self._next
            self._index += 1
            self._next = self._start + self._index * self._period
            if self.idle:
                self.idle.pop().send(due)
            else:
                self.pending.append(due)
                if due >= self.window_start:
                    self.queued += 1
        if self._next >= self.window_end:
            self.finished.set()
            self._check_drained()
            return
        delay = self._next - time.perf_counter()
        # uvloop timers have millisecond resolution: sleep by timer while the next arrival is far, then spin.
        if delay > 0.002:
            self._loop.call_later(delay - 0.001, self.pump)
        else:
            self._loop.call_soon(self.pump)

    def note_send(self, due: float, now: float) -> None:
        if due >= self.window_start:
            self.max_lag = max(self.max_lag, now - due)

    def complete(self, due: float, now: float, status: int) -> None:
        run = self.run
        run.completed += 1
        if self.window_start <= due < self.window_end:
            run.samples.append(now - due)
            run.by_status.setdefault(status, []).append(now - due)
            self.last_completion = max(self.last_completion, now)
            if 200 <= status < 300:
                run.ok += 1
                run.ok_dues.append(due - self.window_start)
            else:
                run.count_error(str(status))

    def release(self, client: _OpenClient) -> None:
        if self.pending:
            client.send(self.pending.popleft())
        else:
            self.idle.append(client)
            self._check_drained()

    def lost(self, client: _OpenClient) -> None:
        """A closed connection leaves the pool for the rest of the run (the rate is kept by the others)."""
        if client in self.idle:
            self.idle.remove(client)
        if client.busy and self.run.running:
            self.run.count_error("transport")
        self.dead_connections += 1
        self._check_drained()

    def _check_drained(self) -> None:
        idle = len(self.idle) + self.dead_connections
        if self.finished.is_set() and not self.pending and idle >= self.run.spec.connections:
            self.drained.set()

    def incomplete(self) -> int:
        return sum(1 for due in self.pending if due >= self.window_start) + sum(1 for c in self.clients if c.busy)


def _progress(run: _Run, loop: asyncio.AbstractEventLoop, start: float, out: TextIO) -> Callable[[], None]:
    last = [start, 0]

    def tick() -> None:
        now = time.perf_counter()
        elapsed, done = now - start, run.completed
        rate = (done - last[1]) / max(now - last[0], 1e-9)
        phase = "warm-up" if elapsed < run.spec.warmup_s else "measure"
        errors = sum(run.statuses.values())
        print(f"[{elapsed:6.1f}s] {phase}: {done} responses, {rate:,.0f}/s, errors {errors}", file=out, flush=True)
        last[0], last[1] = now, done
        if run.running:
            loop.call_later(run.spec.progress_s, tick)

    return tick


async def _connect(
    loop: asyncio.AbstractEventLoop, endpoint: Endpoint, factory: Callable[[], asyncio.Protocol]
) -> None:
    try:
        await loop.create_connection(factory, endpoint.host, endpoint.port)
    except OSError as exc:
        raise LoadError(f"cannot connect to {endpoint.base_url}: {exc}") from exc


async def _run_closed(spec: LoadSpec, endpoint: Endpoint, request: bytes) -> LoadResult:
    loop = asyncio.get_running_loop()
    run = _Run(spec, request)
    reconnects: set[asyncio.Task[None]] = set()

    def factory() -> _ClosedClient:
        return _ClosedClient(run, reconnect)

    async def connect_again() -> None:
        try:
            await _connect(loop, endpoint, factory)
        except LoadError:
            run.count_error("connect")  # this connection is gone for the rest of the run

    def reconnect() -> None:
        task = loop.create_task(connect_again())
        reconnects.add(task)
        task.add_done_callback(reconnects.discard)

    start = time.perf_counter()
    if spec.progress_s > 0:
        loop.call_later(spec.progress_s, _progress(run, loop, start, sys.stderr))
    await asyncio.gather(*(_connect(loop, endpoint, factory) for _ in range(spec.connections)))
    await asyncio.sleep(max(0.0, start + spec.warmup_s - time.perf_counter()))
    cpu0, t0 = time.process_time(), time.perf_counter()
    run.recording = True
    await asyncio.sleep(spec.duration_s)
    run.recording = False
    cpu1, t1 = time.process_time(), time.perf_counter()
    for task in list(reconnects):
        task.cancel()
    await run.close_all()
    window = t1 - t0
    if run.ok == 0 and not run.samples:
        raise LoadError(f"no response completed in {window:.1f} s (errors: {run.statuses or 'none'})")
    return LoadResult(
        engine="python",
        mode="closed",
        url=spec.url,
        connections=spec.connections,
        rate=None,
        duration_s=window,
        requests=run.ok,
        errors=sum(run.statuses.values()),
        rps=run.ok / window,
        latency_ms=summarize_latencies(run.samples),
        loadgen_cpu=(cpu1 - cpu0) / window,
        statuses=dict(run.statuses),
    )


async def _run_open(spec: LoadSpec, endpoint: Endpoint, request: bytes) -> LoadResult:
    loop = asyncio.get_running_loop()
    run = _Run(spec, request)
    schedule = _Schedule(run, loop)
    # Connections are opened before the clock starts, so connect time is not charged to the first requests.
    await asyncio.gather(*(_connect(loop, endpoint, lambda: _OpenClient(schedule)) for _ in range(spec.connections)))
    start = time.perf_counter()
    if spec.progress_s > 0:
        loop.call_later(spec.progress_s, _progress(run, loop, start, sys.stderr))
    cpu0 = time.process_time()
    schedule.begin(start)
    await schedule.finished.wait()
    try:
        await asyncio.wait_for(schedule.drained.wait(), timeout=spec.drain_s)
    except TimeoutError:
        pass
    cpu1 = time.process_time()
    incomplete = schedule.incomplete()
    await run.close_all()
    if incomplete:
        run.statuses["incomplete"] = incomplete
    window = max(schedule.window_end, schedule.last_completion) - schedule.window_start
    return LoadResult(
        engine="python",
        mode="open",
        url=spec.url,
        connections=spec.connections,
        rate=spec.rate,
        duration_s=window,
        requests=run.ok,
        errors=sum(run.statuses.values()),
        rps=run.ok / window,
        latency_ms=summarize_latencies(run.samples),
        loadgen_cpu=(cpu1 - cpu0) / max(time.perf_counter() - start, 1e-9),
        statuses=dict(run.statuses),
        queued=schedule.queued,
        max_send_lag_ms=schedule.max_lag * 1e3,
        latency_by_status_ms={str(k): summarize_latencies(v) for k, v in sorted(run.by_status.items())},
        ok_per_bin=_bins(run.ok_dues, spec.duration_s),
    )


def _bins(offsets: list[float], duration: float) -> list[int]:
    counts = [0] * max(1, math.ceil(duration / BIN_S))
    for offset in offsets:
        counts[min(len(counts) - 1, int(offset / BIN_S))] += 1
    return counts


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a gateway dependency, but the tool should still run without
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_python(spec: LoadSpec) -> LoadResult:
    """Run one load test with the built-in engine (closed loop unless `spec.rate` is set)."""
    endpoint = Endpoint.parse(spec.url)
    request = encode_request(endpoint, spec.body, headers=dict(spec.headers))
    runner = _run_closed if spec.rate is None else _run_open
    # Responses allocate nothing that forms cycles; a collection pause mid-run would only add noise to the tail.
    gc.collect()
    gc.disable()
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as asyncio_runner:
            return asyncio_runner.run(runner(spec, endpoint, request))
    finally:
        gc.enable()


def run_load(spec: LoadSpec, engine: str = "python") -> LoadResult:
    """Run with `engine` "python", "wrk", or "auto" (wrk for closed loop where installed, else python)."""
    if engine == "auto":
        engine = "wrk" if spec.rate is None and shutil.which("wrk") else "python"
    if engine == "wrk":
        from benchmarks.wrk import run_wrk

        return run_wrk(spec)
    if engine != "python":
        raise ValueError(f"unknown engine {engine!r}")
    return run_python(spec)


def format_table(results: Sequence[LoadResult]) -> str:
    header = [
        "engine",
        "mode",
        "conns",
        "rate",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "lg cpu",
    ]
    rows = [header]
    for r in results:
        lat = r.latency_ms
        rows.append(
            [
                r.engine,
                r.mode,
                str(r.connections),
                "-" if r.rate is None else f"{r.rate:,.0f}",
                f"{r.rps:,.0f}",
                f"{lat['p50']:.3f}",
                f"{lat['p90']:.3f}",
                f"{lat['p99']:.3f}",
                f"{lat['p999']:.3f}",
                f"{lat['max']:.3f}",
                str(r.errors),
                f"{r.loadgen_cpu:.0%}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header must look like 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen",
        description="Load-test a V2 inference endpoint.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2] if __doc__ else None,
    )
    parser.add_argument("url", help="server base URL (with --model) or the full .../infer URL")
    parser.add_argument("--model", help="model name; builds /v2/models/MODEL[/versions/V]/infer from a base URL")
    parser.add_argument("--version", help="model version to pin")
    parser.add_argument("--body", type=Path, help="request body file (default: generated from the model metadata)")
    parser.add_argument("--batch", type=int, default=1, help="first dimension of generated inputs (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of generated input data")
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="measured seconds (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    parser.add_argument("--rate", type=float, help="open loop at this many requests/s (default: closed loop)")
    parser.add_argument("-H", "--header", action="append", type=_parse_header, default=[], help="extra header")
    parser.add_argument("--engine", choices=["python", "wrk", "auto"], default="python")
    parser.add_argument(
        "--progress",
        type=float,
        default=None,
        help="seconds between progress lines on stderr (default 1 for runs of 5 s or more; 0 = off)",
    )
    parser.add_argument("--drain", type=float, default=5.0, help="open loop: seconds to wait for stragglers")
    parser.add_argument("--json", dest="json_path", help="write the result as JSON to this file ('-' = stdout only)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.connections < 1:
        raise SystemExit("--connections must be at least 1")
    if args.rate is not None and args.rate <= 0:
        raise SystemExit("--rate must be positive")
    try:
        url = infer_url(args.url, args.model, args.version)
        body = args.body.read_bytes() if args.body else fetch_body(url, batch=args.batch, seed=args.seed)
        progress = args.progress if args.progress is not None else (1.0 if args.warmup + args.duration >= 5 else 0.0)
        spec = LoadSpec(
            url=url,
            body=body,
            connections=args.connections,
            duration_s=args.duration,
            warmup_s=args.warmup,
            rate=args.rate,
            headers=tuple(args.header),
            progress_s=progress,
            drain_s=args.drain,
        )
        result = run_load(spec, args.engine)
    except (LoadError, ValueError, OSError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 1
    if args.json_path == "-":
        print(json.dumps(result.to_json(), indent=2))
        return 0
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    print(format_table([result]))
    if result.errors:
        print(f"errors: {result.statuses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
