from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from prometheus_client import CollectorRegistry

from gateway.batching import (
    BatchingConfig,
    BatchingMetrics,
    DynamicBatcher,
    Offload,
    executor_offload,
)
from gateway.errors import BackendError, DeadlineExceededError, NotReadyError, OverloadedError, ProtocolError

T = TypeVar("T")
Arrays = Mapping[str, npt.NDArray[Any]]
MODEL, VERSION = "m", "1"


def arun(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until `predicate` holds; fail after `timeout` seconds (a deadline, not a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.001)


class FakeModel:
    """x*2 per input, recording the rows of every call; can block calls on a gate to let a queue build up."""

    def __init__(self, *, gated: bool = False) -> None:
        self.calls: list[dict[str, tuple[int, ...]]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.error: Exception | None = None
        self._lock = threading.Lock()
        self.running = 0
        self.max_running = 0

    def __call__(self, inputs: Arrays) -> dict[str, npt.NDArray[Any]]:
        with self._lock:
            self.calls.append({k: v.shape for k, v in inputs.items()})
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.entered.set()
        try:
            assert self.gate.wait(10), "gate never opened"
            if self.error is not None:
                raise self.error
            return {f"{k}_out": v * 2 for k, v in inputs.items()}
        finally:
            with self._lock:
                self.running -= 1

    def rows(self) -> list[int]:
        return [next(iter(c.values()))[0] for c in self.calls]


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def make(
    model: FakeModel | Callable[[Arrays], Mapping[str, npt.NDArray[Any]]],
    registry: CollectorRegistry,
    pool: ThreadPoolExecutor,
    *,
    max_batch_size: int = 8,
    delay_us: int = 0,
    max_queue_size: int = 0,
    max_in_flight: int = 1,
    clock: Callable[[], float] | None = None,
) -> DynamicBatcher:
    metrics = BatchingMetrics(registry, max_rows=64).bind(MODEL, VERSION)
    config = BatchingConfig(max_batch_size=max_batch_size, max_queue_delay_us=delay_us, max_queue_size=max_queue_size)
    if clock is None:
        return DynamicBatcher(
            model, config, metrics=metrics, offload=executor_offload(pool), max_in_flight=max_in_flight
        )
    return DynamicBatcher(
        model, config, metrics=metrics, offload=executor_offload(pool), max_in_flight=max_in_flight, clock=clock
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, {"model": MODEL, "version": VERSION, **labels})
    return 0.0 if value is None else value


def rows_of(n: int, offset: float, width: int = 3) -> npt.NDArray[np.float32]:
    return (np.arange(n * width, dtype=np.float32).reshape(n, width) + offset).astype(np.float32)


def test_outputs_are_split_back_by_rows_for_mixed_row_counts(
    registry: CollectorRegistry, pool: ThreadPoolExecutor
) -> None:
    model = FakeModel(gated=True)
    batcher = make(model, registry, pool, max_batch_size=16)

    async def scenario() -> None:
        first = asyncio.ensure_future(batcher.submit({"x": rows_of(1, 0)}))
        await eventually(model.entered.is_set)  # the first batch is running, the rest must queue behind it
        sizes = [1, 3, 2, 5]
        inputs = [rows_of(n, 100 * i) for i, n in enumerate(sizes)]
        tasks = [asyncio.ensure_future(batcher.submit({"x": x})) for x in inputs]
        await eventually(lambda: batcher.queued == len(sizes))
        model.gate.set()
        results = await asyncio.gather(first, *tasks)
        for x, out in zip(inputs, results[1:], strict=True):
            np.testing.assert_array_equal(out["x_out"], x * 2)
        np.testing.assert_array_equal(results[0]["x_out"], rows_of(1, 0) * 2)
        await batcher.aclose()

    arun(scenario())
    assert model.rows() == [1, 11]
    assert sample(registry, "gateway_batch_executions_total") == 2
    assert sample(registry, "gateway_batch_requests_total") == 5
    assert sample(registry, "gateway_batch_inferences_total") == 12
    assert sample(registry, "gateway_batch_size_rows_count") == 2
    assert sample(registry, "gateway_batch_size_rows_sum") == 12
    assert sample(registry, "gateway_batch_size_rows_bucket", le="1.0") == 1
    assert sample(registry, "gateway_batch_size_rows_bucket", le="16.0") == 2
    assert sample(registry, "gateway_batch_queue_duration_seconds_count") == 5
    assert sample(registry, "gateway_batch_queue_requests") == 0


def test_batches_never_exceed_max_rows_and_an_oversized_request_runs_alone(
    registry: CollectorRegistry, pool: ThreadPoolExecutor
) -> None:
    model = FakeModel()
    batcher = make(model, registry, pool, max_batch_size=4, delay_us=20_000)
    sizes = [1, 1, 3, 6, 2, 2, 1, 4, 1, 1, 1]

    async def scenario() -> list[dict[str, npt.NDArray[Any]]]:
        # All submits enqueue before the batching loop first runs, so the loop sees the whole queue.
        results = await asyncio.gather(*(batcher.submit({"x": rows_of(n, 10 * i)}) for i, n in enumerate(sizes)))
        await batcher.aclose()
        return results

    results = arun(scenario())
    for i, (n, out) in enumerate(zip(sizes, results, strict=True)):
        np.testing.assert_array_equal(out["x_out"], rows_of(n, 10 * i) * 2)
    rows = model.rows()
    assert sum(rows) == sum(sizes)
    assert 6 in rows
    assert all(r <= 4 for r in rows if r != 6)
    # FIFO: [1,1] (3 does not fit) [3] [6] [2,2] [1] (4 does not fit) [4] [1,1,1]
    assert rows == [2, 3, 6, 4, 1, 4, 3]


def test_a_lone_request_runs_after_the_queue_delay(registry: CollectorRegistry, pool: ThreadPoolExecutor) -> None:
    model = FakeModel()
    batcher = make(model, registry, pool, max_batch_size=8, delay_us=20_000)

    async def scenario() -> dict[str, npt.NDArray[Any]]:
        out = await asyncio.wait_for(batcher.submit({"x": rows_of(2, 0)}), timeout=10)
        await batcher.aclose()
        return out

    out = arun(scenario())
    np.testing.assert_array_equal(out["x_out"], rows_of(2, 0) * 2)
    assert model.rows() == [2]


def test_a_full_batch_runs_without_waiting_for_the_delay(registry: CollectorRegistry, pool: ThreadPoolExecutor) -> None:
    model = FakeModel()
    batcher = make(model, registry, pool, max_batch_size=4, delay_us=60_000_000)  # one minute: never reached

    async def scenario() -> None:
        first = asyncio.ensure_future(batcher.submit({"x": rows_of(1, 0)}))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not first.done() and model.calls == []  # waiting for company
        second = await asyncio.wait_for(batcher.submit({"x": rows_of(3, 1)}), timeout=10)
        np.testing.assert_array_equal(second["x_out"], rows_of(3, 1) * 2)
        np.testing.assert_array_equal((await first)["x_out"], rows_of(1, 0) * 2)
        await batcher.aclose()

    arun(scenario())
    assert model.rows() == [4]


def test_injected_clock_decides_the_deadline_and_stamps_queue_time(
    registry: CollectorRegistry, pool: ThreadPoolExecutor
) -> None:
    now = [0.0]
    model = FakeModel()
    batcher = make(model, registry, pool, max_batch_size=8, delay_us=30_000_000, clock=lambda: now[0])

    async def scenario() -> None:
        a = asyncio.ensure_future(batcher.submit({"x": rows_of(1, 0)}))
        await asyncio.sleep(0)
        now[0] = 31.0  # past a's deadline; the next arrival wakes the loop, which dispatches a
        # Incompatible trailing shape: a separate batch, so it cannot join a's.
        b = asyncio.ensure_future(batcher.submit({"x": rows_of(1, 0, width=5)}))
        await asyncio.wait_for(a, timeout=10)
        assert not b.done()
        now[0] = 100.0
        await batcher.aclose()  # drains b without waiting for its deadline
        assert b.done()
        np.testing.assert_array_equal(b.result()["x_out"], rows_of(1, 0, width=5) * 2)

    arun(scenario())
    assert [c["x"] for c in model.calls] == [(1, 3), (1, 5)]
    assert sample(registry, "gateway_batch_queue_duration_seconds_sum") == pytest.approx(31.0 + 69.0)
    assert sample(registry, "gateway_batch_queue_duration_seconds_bucket", le="2.5") == 0


def test_incompatible_shapes_and_dtypes_form_separate_batches(
    registry: CollectorRegistry, pool: ThreadPoolExecutor
) -> None:
    model = FakeModel()
    batcher = make(model, registry, pool, max_batch_size=64, delay_us=50_000)
    requests: list[dict[str, npt.NDArray[Any]]] = [
        {"x": rows_of(2, 0)},
        {"x": rows_of(1, 1, width=4)},
        {"x": rows_of(3, 2)},
        {"x": rows_of(1, 3).astype(np.float64)},
        {"x": rows_of(2, 4, width=4)},
        {"x": rows_of(1, 5), "y": rows_of(1, 6)},
    ]

    async def scenario() -> list[dict[str, npt.NDArray[Any]]]:
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.aclose()
        return results

    results = arun(scenario())
    for request, out in zip(requests, results, strict=True):
        assert set(out) == {f"{k}_out" for k in request}
        for name, x in request.items():
            np.testing.assert_array_equal(out[f"{name}_out"], x * 2)
            assert out[f"{name}_out"].dtype == x.dtype
    assert sorted(model.calls, key=str) == sorted(
        [{"x": (5, 3)}, {"x": (3, 4)}, {"x": (1, 3)}, {"x": (1, 3), "y": (1, 3)}], key=str
    )


def test_randomised_requests_get_exactly_their_rows_back(registry: CollectorRegistry, pool: ThreadPoolExecutor) -> None:
    rng = np.random.default_rng(7)
    model = FakeModel()
    batcher = make(model, registry, pool, max_batch_size=16, delay_us=200, max_in_flight=2)
    requests = [
        {"x": rng.normal(size=(int(rng.integers(0, 9)), int(rng.choice([2, 3])))).astype(np.float32)}
        for _ in range(200)
    ]

    async def scenario() -> list[dict[str, npt.NDArray[Any]]]:
        tasks = []
        for request in requests:
            tasks.append(asyncio.ensure_future(batcher.submit(request)))
            if rng.random() < 0.3:
                await asyncio.sleep(0)
        results = await asyncio.gather(*tasks)
        await batcher.aclose()
        return results

    results = arun(scenario())
    for request, out in zip(requests, results, strict=True):
        np.testing.assert_array_equal(out["x_out"], request["x"] * 2)
    assert all(r <= 16 for r in model.rows())
    assert sample(registry, "gateway_batch_requests_total") == 200
    assert sample(registry, "gateway_batch_inferences_total") == sum(r["x"].shape[0] for r in requests)


def test_a_full_queue_rejects_immediately_and_counts_it(registry: CollectorRegistry, pool: ThreadPoolExecutor) -> None:
    model = FakeModel(gated=True)
    batcher = make(model, registry, pool, max_batch_size=4, max_queue_size=2)

    async def scenario() -> None:
        running = asyncio.ensure_future(batcher.submit({"x": rows_of(1, 0)}))
        await eventually(model.entered.is_set)
        queued = [asyncio.ensure_future(batcher.submit({"x": rows_of(1, i)})) for i in (1, 2)]
        await eventually(lambda: batcher.queued == 2)
        assert sample(registry, "gateway_batch_queue_requests") == 2
        with pytest.raises(OverloadedError) as info:
            await batcher.submit({"x": rows_of(1, 3)})
        assert 0 < info.value.retry_after <= 60
        model.gate.set()
        await asyncio.gather(running, *queued)
        await batcher.aclose()

    arun(scenario())
    assert sample(registry, "gateway_batch_rejected_total") == 1
    assert sample(registry, "gateway_batch_requests_total") == 3


def test_run_errors_reach_every_request_of_the_batch(registry: CollectorRegistry, pool: ThreadPoolExecutor) -> None:
    model = FakeModel()
    model.error = ValueError("model exploded")
    batcher = make(model, registry, pool, max_batch_size=8, delay_us=50_000)

    async def scenario() -> list[BaseException | dict[str, npt.NDArray[Any]]]:
        results = await asyncio.gather(
            *(batcher.submit({"x": rows_of(1, i)}) for i in range(3)), return_exceptions=True
        )
        model.error = None
        after = await batcher.submit({"x": rows_of(1, 9)})  # the batcher survives a failed batch
        np.testing.assert_array_equal(after["x_out"], rows_of(1, 9) * 2)
        await batcher.aclose()
        return results

    results = arun(scenario())
    assert all(isinstance(r, ValueError) and str(r) == "model exploded" for r in results)
    assert model.rows() == [3, 1]


def test_outputs_without_the_batch_dimension_fail_with_backend_error(
    registry: CollectorRegistry, pool: ThreadPoolExecutor
) -> None:
    def summary(inputs: Arrays) -> dict[str, npt.NDArray[Any]]:
        return {"total": np.asarray(inputs["x"].sum()), "y": inputs["x"]}

    batcher = make(summary, registry, pool)

    async def scenario() -> None:
        with pytest.raises(BackendError, match="'total'.*cannot be batched"):
            await batcher.submit({"x": rows_of(2, 0)})
        await batcher.aclose()

    arun(scenario())


def test_requests_without_a_common_batch_dimension_are_protocol_errors(
    registry: CollectorRegistry, pool: ThreadPoolExecutor
) -> None:
    batcher = make(FakeModel(), registry, pool)

    async def scenario() -> None:
        with pytest.raises(ProtocolError, match="scalar"):
            await batcher.submit({"x": np.float32(1.0) * np.ones((), np.float32)})
        with pytest.raises(ProtocolError, match="'y' has 3 rows"):
            await batcher.submit({"x": rows_of(2, 0), "y": rows_of(3, 0)})
        with pytest.raises(ProtocolError):
            await batcher.submit({})
        await batcher.aclose()

    arun(scenario())
    assert sample(registry, "gateway_batch_queue_requests") == 0


def test_a_cancelled_waiting_request_leaves_the_queue(registry: CollectorRegistry, pool: ThreadPoolExecutor) -> None:
    model = FakeModel()
    batcher = make(model, registry, pool, max_batch_size=4, delay_us=60_000_000)

    async def scenario() -> None:
        gone = asyncio.ensure_future(batcher.submit({"x": rows_of(3, 0)}))
        await eventually(lambda: batcher.queued == 1)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert batcher.queued == 0
        assert sample(registry, "gateway_batch_queue_requests") == 0
        # 3 + 4 rows would not fit; alone, the 4-row request is a full batch and runs at once.
        out = await asyncio.wait_for(batcher.submit({"x": rows_of(4, 1)}), timeout=10)
        np.testing.assert_array_equal(out["x_out"], rows_of(4, 1) * 2)
        await batcher.aclose()

    arun(scenario())
    assert model.rows() == [4]


def test_a_request_cancelled_while_its_batch_runs_does_not_disturb_the_others(
    registry: CollectorRegistry, pool: ThreadPoolExecutor
) -> None:
    model = FakeModel(gated=True)
    batcher = make(model, registry, pool, max_batch_size=4, delay_us=60_000_000)

    async def scenario() -> None:
        gone = asyncio.ensure_future(batcher.submit({"x": rows_of(2, 0)}))
        stays = asyncio.ensure_future(batcher.submit({"x": rows_of(2, 1)}))
        await eventually(model.entered.is_set)
        gone.cancel()
        model.gate.set()
        np.testing.assert_array_equal((await stays)["x_out"], rows_of(2, 1) * 2)
        assert gone.cancelled()
        await batcher.aclose()

    arun(scenario())
    assert model.rows() == [4]


def test_max_in_flight_lets_batches_overlap(registry: CollectorRegistry, pool: ThreadPoolExecutor) -> None:
    model = FakeModel(gated=True)
    batcher = make(model, registry, pool, max_batch_size=1, max_in_flight=2)

    async def scenario() -> None:
        tasks = [asyncio.ensure_future(batcher.submit({"x": rows_of(1, i)})) for i in range(3)]
        await eventually(lambda: model.running == 2)
        assert batcher.queued == 1  # the third waits for a free slot
        model.gate.set()
        await asyncio.gather(*tasks)
        await batcher.aclose()

    arun(scenario())
    assert model.max_running == 2


def test_aclose_without_drain_fails_waiting_requests(registry: CollectorRegistry, pool: ThreadPoolExecutor) -> None:
    model = FakeModel()
    batcher = make(model, registry, pool, max_batch_size=8, delay_us=60_000_000)

    async def scenario() -> None:
        waiting = asyncio.ensure_future(batcher.submit({"x": rows_of(1, 0)}))
        await eventually(lambda: batcher.queued == 1)
        await batcher.aclose(drain=False)
        with pytest.raises(NotReadyError):
            await waiting
        with pytest.raises(NotReadyError):
            await batcher.submit({"x": rows_of(1, 0)})

    arun(scenario())
    assert model.calls == []
    assert sample(registry, "gateway_batch_queue_requests") == 0


def test_default_offload_and_asyncio_to_thread_work(registry: CollectorRegistry) -> None:
    offload: Offload = asyncio.to_thread
    metrics = BatchingMetrics(registry).bind(MODEL, VERSION)
    for batcher in (
        DynamicBatcher(FakeModel(), BatchingConfig(4), metrics=metrics),
        DynamicBatcher(FakeModel(), BatchingConfig(4), metrics=metrics, offload=offload),
    ):

        async def scenario(b: DynamicBatcher = batcher) -> None:
            out = await b.submit({"x": rows_of(2, 0)})
            np.testing.assert_array_equal(out["x_out"], rows_of(2, 0) * 2)
            await b.aclose()

        arun(scenario())


def _affine_model() -> bytes:
    """Y = X * 2 + 1 on float32 [batch, 4] with a symbolic batch dimension."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 4])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["X", "two"], ["T"]), helper.make_node("Add", ["T", "one"], ["Y"])],
        "affine",
        [x],
        [y],
        initializer=[two, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def test_onnxruntime_batched_outputs_equal_unbatched_ones(
    registry: CollectorRegistry, pool: ThreadPoolExecutor
) -> None:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(_affine_model(), sess_options=so, providers=["CPUExecutionProvider"])

    def run(inputs: Arrays) -> dict[str, npt.NDArray[Any]]:
        (y,) = session.run(["Y"], dict(inputs))
        return {"Y": y}

    rng = np.random.default_rng(3)
    requests = [rng.normal(size=(int(rng.integers(1, 6)), 4)).astype(np.float32) for _ in range(40)]
    expected = [run({"X": x})["Y"] for x in requests]
    batcher = make(run, registry, pool, max_batch_size=16, delay_us=2_000)

    async def scenario() -> list[dict[str, npt.NDArray[Any]]]:
        results = await asyncio.gather(*(batcher.submit({"X": x}) for x in requests))
        await batcher.aclose()
        return results

    results = arun(scenario())
    for want, got in zip(expected, results, strict=True):
        np.testing.assert_array_equal(got["Y"], want)
    executions = sample(registry, "gateway_batch_executions_total")
    assert executions < len(requests)  # it really batched
    assert sample(registry, "gateway_batch_inferences_total") == sum(x.shape[0] for x in requests)


def test_a_request_whose_deadline_passed_in_the_queue_is_dropped_unrun(
    registry: CollectorRegistry, pool: ThreadPoolExecutor
) -> None:
    now = [0.0]
    model = FakeModel()
    batcher = make(model, registry, pool, max_batch_size=8, delay_us=30_000_000, clock=lambda: now[0])

    async def scenario() -> None:
        late = asyncio.ensure_future(batcher.submit({"x": rows_of(1, 0)}, timeout=5.0))
        patient = asyncio.ensure_future(batcher.submit({"x": rows_of(1, 10)}, timeout=60.0))
        await asyncio.sleep(0)
        now[0] = 31.0  # past the queue delay (the batch forms) and past the first one's 5 s
        other = asyncio.ensure_future(batcher.submit({"x": rows_of(1, 0, width=5)}))  # wakes the loop
        with pytest.raises(DeadlineExceededError, match="deadline passed after 31.000 s queued"):
            await asyncio.wait_for(late, timeout=10)
        np.testing.assert_array_equal((await asyncio.wait_for(patient, 10))["x_out"], rows_of(1, 10) * 2)
        await batcher.aclose()
        assert other.done()

    arun(scenario())
    assert [c["x"] for c in model.calls] == [(1, 3), (1, 5)]  # the late request never reached the model
    assert sample(registry, "gateway_batch_requests_total") == 2
