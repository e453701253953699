"""Admission control: the global in-flight bound over real HTTP on both transports (503, Retry-After, counted, the
connection still usable), and a version's queue on a real onnxruntime session: a request that cannot start in time
is refused at once (503), one whose deadline passed while it waited is dropped unrun (504), a bad timeout header is
named (400). Runs are held by an executor the test controls, so nothing here depends on how fast the machine is."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import models
import numpy as np
import orjson
import pytest
from server import Server, gateway

from gateway.admission import TIMEOUT_HEADER, request_timeout
from gateway.backends.onnx import OnnxBackend, OnnxOptions
from gateway.errors import DeadlineExceededError, OverloadedError, ProtocolError

ROWS = [[1.0, 2.0, 3.0, 4.0]]


# ---- a version's queue, on a real session -----------------------------------------------------------------------


class HeldExecutor(ThreadPoolExecutor):
    """Runs each submitted call once `release` is set (a fresh Event per call, in submission order)."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.gates: list[threading.Event] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        gate = threading.Event()
        self.gates.append(gate)

        def held() -> Any:
            gate.wait(30)
            return fn(*args, **kwargs)

        return super().submit(held)


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[OnnxBackend, HeldExecutor]]:
    executor = HeldExecutor()
    options = OnnxOptions(max_concurrency=1, inline_below_us=0.0, max_queue_wait=1.0, request_timeout=30.0)
    backend = OnnxBackend(models.affine(tmp_path / "model.onnx"), options, executor)
    yield backend, executor
    for gate in executor.gates:
        gate.set()
    executor.shutdown(wait=True)


def inputs() -> dict[str, np.ndarray[Any, Any]]:
    return {"X": np.array(ROWS, dtype=np.float32)}


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def test_a_request_whose_deadline_passes_while_it_waits_is_dropped_unrun(
    held: tuple[OnnxBackend, HeldExecutor],
) -> None:
    backend, executor = held

    async def scenario() -> None:
        first = asyncio.create_task(backend.infer(inputs()))
        await until(lambda: len(executor.gates) == 1)  # the only slot is taken and its run held
        began = time.perf_counter()
        second = asyncio.create_task(backend.infer(inputs(), {TIMEOUT_HEADER: "5"}, began))
        await until(lambda: time.perf_counter() > began + 0.005)  # its 5 ms pass while it waits for the slot
        executor.gates[0].set()
        assert (await first).outputs["Y"].shape == (1, 4)
        with pytest.raises(DeadlineExceededError, match="deadline passed while it waited"):
            await second
        assert len(executor.gates) == 1  # the expired request never reached the executor

    asyncio.run(scenario())


def test_a_request_that_cannot_start_in_time_is_refused_at_once(held: tuple[OnnxBackend, HeldExecutor]) -> None:
    backend, executor = held

    async def scenario() -> None:
        warm = asyncio.create_task(backend.infer(inputs()))
        await until(lambda: len(executor.gates) == 1)
        executor.gates[0].set()
        await warm  # one thread execution measured: the version now knows what a run costs (a hop at least)
        first = asyncio.create_task(backend.infer(inputs()))
        await until(lambda: len(executor.gates) == 2)
        # One execution is ahead of it and it may wait a microsecond: it is told at once, before it queues.
        with pytest.raises(OverloadedError, match="already waiting for this model version") as refused:
            await backend.infer(inputs(), {TIMEOUT_HEADER: "0.001"}, time.perf_counter())
        assert refused.value.retry_after >= 1.0
        # A request with the default timeout still queues behind it and is served.
        second = asyncio.create_task(backend.infer(inputs()))
        await asyncio.sleep(0)
        executor.gates[1].set()
        await first
        await until(lambda: len(executor.gates) == 3)
        executor.gates[2].set()
        assert (await second).outputs["Y"].shape == (1, 4)

    asyncio.run(scenario())


def test_a_version_with_requests_waiting_at_its_bound_sheds_before_decoding(tmp_path: Path) -> None:
    """`shedding` is what the data plane reads before it decodes a body: true only while requests wait and a
    newcomer would be refused anyway (here: max_waiting reached), false again once the queue empties."""
    executor = HeldExecutor()
    options = OnnxOptions(max_concurrency=1, inline_below_us=0.0, max_waiting=1)
    backend = OnnxBackend(models.affine(tmp_path / "model.onnx"), options, executor)

    async def scenario() -> None:
        first = asyncio.create_task(backend.infer(inputs()))
        await until(lambda: len(executor.gates) == 1)
        assert not backend.shedding  # the slot is busy but nobody waits: a newcomer would only queue
        second = asyncio.create_task(backend.infer(inputs()))
        await until(lambda: backend.shedding)
        assert "1 requests are already waiting" in str(backend.overloaded())
        executor.gates[0].set()
        await first
        await until(lambda: len(executor.gates) == 2)
        assert not backend.shedding
        executor.gates[1].set()
        await second

    try:
        asyncio.run(scenario())
    finally:
        for gate in executor.gates:
            gate.set()
        executor.shutdown(wait=True)


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan", ""])
def test_a_timeout_header_that_is_not_a_positive_number_of_milliseconds_is_named(value: str) -> None:
    with pytest.raises(ProtocolError, match=f"header {TIMEOUT_HEADER} must be a positive number of milliseconds"):
        request_timeout({TIMEOUT_HEADER: value}, 30.0)
    assert request_timeout({TIMEOUT_HEADER: "250"}, 30.0) == pytest.approx(0.25)
    assert request_timeout({}, 30.0) == 30.0


# ---- the global bound, over HTTP --------------------------------------------------------------------------------


def infer_body(rows: int) -> bytes:
    data = [1.0] * (rows * 4)
    return orjson.dumps({"inputs": [{"name": "X", "shape": [rows, 4], "datatype": "FP32", "data": data}]})


def inflight(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    match = re.search(r"^gateway_inflight_requests (\S+)$", text, re.MULTILINE)
    assert match is not None
    return float(match.group(1))


def rejected(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    pattern = r'^gateway_requests_total\{model="_unknown",outcome="rejected",version="_unknown"\} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return 0.0 if match is None else float(match.group(1))


@pytest.fixture(scope="module", params=["direct", "plain"])
def bounded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp(f"bounded-{request.param}")
    models.slow(root / "repo" / "slow" / "1" / "model.onnx")
    args = [
        "--model-repository", str(root / "repo"), "--max-inflight", "1", "--inline-below-us", "0",
        "--transport", request.param,
    ]  # fmt: skip
    with gateway(args, root / "log") as server:
        yield server


def test_over_the_in_flight_bound_a_request_gets_503_and_the_connection_stays_usable(bounded: Server) -> None:
    url = f"{bounded.url}/v2/models/slow/infer"
    before = rejected(bounded)
    with httpx.Client(timeout=60) as busy, httpx.Client(timeout=10) as other:
        # 2,000 rows of a model that takes about a millisecond a row: long enough to be seen in flight. On a loaded
        # machine it can still end before the second request is read; then the second is served, and the pair is
        # tried again (it cannot be refused with nothing in flight).
        for _ in range(5):
            done: list[httpx.Response] = []
            worker = threading.Thread(target=lambda out=done: out.append(busy.post(url, content=infer_body(2000))))
            worker.start()
            deadline = time.monotonic() + 30
            while inflight(bounded) < 1:
                assert time.monotonic() < deadline and worker.is_alive(), "the long request was never seen in flight"
            refused = other.post(url, content=infer_body(1))
            worker.join(60)
            assert done and done[0].status_code == 200
            if refused.status_code != 200:
                break
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert refused.json() == {"error": "the gateway is serving its limit of 1 requests at once"}
        assert other.post(url, content=infer_body(1)).status_code == 200  # the same connection, once there is room
    assert rejected(bounded) == before + 1
