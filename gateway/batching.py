"""Dynamic batching per model version with Triton's semantics: batch size counts rows, not requests.

Requests queue in FIFO order. One task per version forms a batch from the oldest request and the queued requests
that can be concatenated with it (same input names, dtypes and trailing dimensions), up to `max_batch_size` rows, and
runs it when the batch is full or the oldest request has waited `max_queue_delay_us`. While `max_in_flight` batches
are executing, new requests accumulate, so a busy version batches harder without any delay configured.

Outputs are split back by rows. A model whose outputs lack the batch dimension (first dimension != total rows)
cannot be batched: every request of such a batch fails with a `BackendError` saying so. The check also applies to a
batch of one request, so a misconfigured model fails on its first request rather than only under load.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Gauge

from gateway.errors import BackendError, DeadlineExceededError, NotReadyError, OverloadedError, ProtocolError
from gateway.tally import Count, CounterFamily, HistogramFamily, Spread, Tally

logger = logging.getLogger(__name__)

Arrays = Mapping[str, npt.NDArray[Any]]
Outputs = dict[str, npt.NDArray[Any]]
Run = Callable[[Arrays], Mapping[str, npt.NDArray[Any]]]

_A = TypeVar("_A")
_R = TypeVar("_R")

# Seconds spent queued; sub-millisecond buckets because typical delays are 100 µs to a few ms.
_QUEUE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class BatchingSettings(Protocol):
    """Anything shaped like `BatchingConfig` (e.g. the dataclass `gateway.config` parses from YAML)."""

    @property
    def max_batch_size(self) -> int: ...

    @property
    def max_queue_delay_us(self) -> int: ...

    @property
    def max_queue_size(self) -> int: ...


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """`max_batch_size` in rows; `max_queue_size` in waiting requests, 0 = unbounded (Triton's default)."""

    max_batch_size: int
    max_queue_delay_us: int = 0
    max_queue_size: int = 0


class Offload(Protocol):
    """Runs `fn(arg)` off the event loop, e.g. in a thread pool sized for the model."""

    def __call__(self, fn: Callable[[_A], _R], arg: _A, /) -> Awaitable[_R]: ...


def executor_offload(executor: Executor | None) -> Offload:
    """An `Offload` onto `executor` (None: the loop's default executor)."""

    def offload(fn: Callable[[_A], _R], arg: _A, /) -> Awaitable[_R]:
        return asyncio.get_running_loop().run_in_executor(executor, fn, arg)

    return offload


def _row_buckets(max_rows: int) -> tuple[float, ...]:
    top = 1 << max(0, math.ceil(math.log2(max(1, max_rows))))
    return tuple(float(1 << i) for i in range(top.bit_length()))


class BatchingMetrics:
    """The batching metric families, labelled by model and version. Create once per registry, bind per version.

    `gateway_batch_inferences_total` counts rows like Triton's `nv_inference_count`, so inferences / executions is
    the average batch size as in Triton; `gateway_batch_requests_total` counts requests. Every one but the queue
    depth is written on the event loop only (a batch is formed and counted there), so they are the request path's
    lock-free kind (gateway/tally.py), not prometheus_client's, which takes a lock per observation (36 a batch of 32).
    """

    def __init__(self, registry: CollectorRegistry, *, max_rows: int = 1024) -> None:
        labels = ("model", "version")
        self.batch_rows = HistogramFamily(
            "gateway_batch_size_rows", "Rows per executed batch.", labels, _row_buckets(max_rows)
        )
        self.queue_seconds = HistogramFamily(
            "gateway_batch_queue_duration_seconds",
            "Time a request waited in the batch queue before its batch started.",
            labels,
            _QUEUE_BUCKETS,
        )
        self.executions = CounterFamily("gateway_batch_executions", "Batches executed (Triton exec_count).", labels)
        self.inferences = CounterFamily(
            "gateway_batch_inferences", "Rows executed in batches (Triton inference_count).", labels
        )
        self.requests = CounterFamily("gateway_batch_requests", "Requests executed in batches.", labels)
        self.rejected = CounterFamily(
            "gateway_batch_rejected", "Requests refused because the batch queue was full.", labels
        )
        Tally(registry, self.batch_rows, self.queue_seconds, self.executions, self.inferences, self.requests,
              self.rejected)  # fmt: skip
        self.queue_depth = Gauge(
            "gateway_batch_queue_requests", "Requests waiting in the batch queue.", labels, registry=registry
        )

    def forget(self, model: str, version: str) -> None:
        """Drop a retired version's series (and the queue-depth callback that holds its batcher)."""
        for family in (self.batch_rows, self.queue_seconds, self.executions, self.inferences, self.requests,
                       self.rejected):  # fmt: skip
            family.remove(model, version)
        try:
            self.queue_depth.remove(model, version)
        except KeyError:
            pass

    def bind(self, model: str, version: str) -> BoundBatchingMetrics:
        return BoundBatchingMetrics(
            batch_rows=self.batch_rows.labels(model, version),
            queue_seconds=self.queue_seconds.labels(model, version),
            executions=self.executions.labels(model, version),
            inferences=self.inferences.labels(model, version),
            requests=self.requests.labels(model, version),
            queue_depth=self.queue_depth.labels(model, version),
            rejected=self.rejected.labels(model, version),
        )


@dataclass(frozen=True, slots=True)
class BoundBatchingMetrics:
    """Children of one version, bound once so the request path does no label lookups."""

    batch_rows: Spread
    queue_seconds: Spread
    executions: Count
    inferences: Count
    requests: Count
    queue_depth: Gauge
    rejected: Count


# Per input, sorted by name: (name, dtype, trailing dims). Requests batch together only under an equal key.
_Key = tuple[tuple[str, str, tuple[int, ...]], ...]


@dataclass(eq=False, slots=True)
class _Pending:
    inputs: Arrays
    rows: int
    key: _Key
    enqueued: float
    future: asyncio.Future[Outputs] = field(repr=False)
    deadline: float = math.inf  # on the batcher's clock: past it when its batch forms, the request is dropped unrun


class DynamicBatcher:
    """Batches `submit` calls of one model version into calls of `run`, executed through `offload`."""

    def __init__(
        self,
        run: Run,
        config: BatchingSettings,
        *,
        metrics: BoundBatchingMetrics,
        offload: Offload | None = None,
        max_in_flight: int = 1,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
    ) -> None:
        if config.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {config.max_batch_size}")
        if config.max_queue_delay_us < 0 or config.max_queue_size < 0:
            raise ValueError("max_queue_delay_us and max_queue_size must be >= 0")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._run = run
        self._max_rows = config.max_batch_size
        self._delay = config.max_queue_delay_us / 1e6
        self._max_queue = config.max_queue_size
        self._metrics = metrics
        self._offload: Offload = offload if offload is not None else executor_offload(None)
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._name = name or "model"
        self._queue: deque[_Pending] = deque()
        # Rows and requests queued per key: O(1) "is the oldest's batch full?" checks.
        self._queued_rows: dict[_Key, int] = {}
        self._queued_count: dict[_Key, int] = {}
        self._in_flight = 0
        self._executions: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[bool] | None = None
        self._awaiting_slot = False  # the loop sleeps until a batch finishes; arrivals need not wake it
        self._closing = False
        # Read at scrape time: no gauge update (and its lock) per request.
        metrics.queue_depth.set_function(lambda: len(self._queue))
        # Smoothed seconds per batch, for the Retry-After hint when the queue is full.
        self._batch_seconds = 0.0

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, inputs: Arrays, timeout: float | None = None) -> Outputs:
        """Queue one request (all inputs share a first, batch dimension) and return its slice of the outputs. With
        `timeout` (seconds it may still wait), a request whose time is up when its batch forms is dropped, never
        run, with DeadlineExceededError."""
        if self._closing:
            raise NotReadyError(f"{self._name}: the batcher is shutting down")
        if self._max_queue and len(self._queue) >= self._max_queue:
            self._metrics.rejected.inc()
            raise OverloadedError(
                f"{self._name}: {len(self._queue)} requests are already waiting for a batch",
                retry_after=self._retry_after(),
            )
        rows, key = _shape_of(inputs)
        loop = asyncio.get_running_loop()
        enqueued = self._clock()
        deadline = math.inf if timeout is None else enqueued + timeout
        item = _Pending(inputs, rows, key, enqueued, loop.create_future(), deadline)
        self._queue.append(item)
        self._queued_rows[key] = self._queued_rows.get(key, 0) + rows
        self._queued_count[key] = self._queued_count.get(key, 0) + 1
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = loop.create_task(self._batch_loop(), name=f"batcher:{self._name}")
        elif self._wakeup is not None and not self._awaiting_slot:
            # Wake the loop only when this arrival can change its decision, not once per request.
            oldest = self._queue[0]
            if (
                oldest is item
                or self._queued_rows[oldest.key] >= self._max_rows
                or self._clock() >= oldest.enqueued + self._delay
            ):
                self._notify()
        try:
            return await item.future
        except asyncio.CancelledError:
            self._forget(item)
            raise

    async def aclose(self, *, drain: bool = True) -> None:
        """Stop accepting requests. Drain: run what is queued without delay; else fail it with NotReadyError."""
        self._closing = True
        if not drain:
            error = NotReadyError(f"{self._name}: the batcher was closed")
            pending, self._queue = self._queue, deque()
            self._queued_rows.clear()
            self._queued_count.clear()
            for item in pending:
                if not item.future.done():
                    item.future.set_exception(error)
        self._notify()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._executions:
            await asyncio.gather(*self._executions, return_exceptions=True)

    # -- the batching loop -------------------------------------------------------------------------------------------

    async def _batch_loop(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    await self._sleep(None)
                    continue
                if self._in_flight >= self._max_in_flight:
                    self._awaiting_slot = True
                    try:
                        await self._sleep(None)
                    finally:
                        self._awaiting_slot = False
                    continue
                oldest = self._queue[0]
                if not self._closing and self._queued_rows[oldest.key] < self._max_rows:
                    remaining = oldest.enqueued + self._delay - self._clock()
                    # A fired timer dispatches even if the injected clock says otherwise: the loop's timer is the
                    # authority on waiting, the clock only stamps requests (so a frozen test clock cannot hang us).
                    if remaining > 0 and not await self._sleep(remaining):
                        continue
                    if not self._queue or self._queue[0] is not oldest:
                        continue  # the request we waited for went away (cancelled); recompute for the new oldest
                self._dispatch(self._take(self._queue[0].key))
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else NotReadyError(f"{self._name}: the batcher stopped")
            if isinstance(exc, Exception):
                logger.exception("batching loop of %s failed", self._name)
            for item in self._queue:
                if not item.future.done():
                    item.future.set_exception(error)
            self._queue.clear()
            self._queued_rows.clear()
            self._queued_count.clear()
            raise

    async def _sleep(self, timeout: float | None) -> bool:
        """Wait for a notification or `timeout` seconds; True when the timer fired."""
        loop = asyncio.get_running_loop()
        wakeup: asyncio.Future[bool] = loop.create_future()
        self._wakeup = wakeup
        timer = loop.call_later(timeout, _resolve, wakeup, True) if timeout is not None else None
        try:
            return await wakeup
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    def _notify(self) -> None:
        if self._wakeup is not None:
            _resolve(self._wakeup, False)

    def _take(self, key: _Key) -> list[_Pending]:
        """Remove and return the FIFO batch for `key`: up to max rows, stopping at the first request that won't fit.

        A request larger than max_batch_size runs alone. Requests of other keys keep their places.
        """
        taken: list[_Pending] = []
        rows = 0
        queue = self._queue
        if len(self._queued_rows) == 1:
            # Common case, one shape in the queue: pop from the front, no rebuild.
            while queue and (not taken or rows + queue[0].rows <= self._max_rows):
                item = queue.popleft()
                taken.append(item)
                rows += item.rows
        else:
            rest: deque[_Pending] = deque()
            full = False
            for item in queue:
                if not full and item.key == key:
                    if not taken or rows + item.rows <= self._max_rows:
                        taken.append(item)
                        rows += item.rows
                        continue
                    full = True
                rest.append(item)
            self._queue = rest
        self._unqueue(key, len(taken), rows)
        return taken

    def _unqueue(self, key: _Key, count: int, rows: int) -> None:
        left = self._queued_count[key] - count
        if left:
            self._queued_count[key] = left
            self._queued_rows[key] -= rows
        else:
            del self._queued_count[key]
            del self._queued_rows[key]

    def _forget(self, item: _Pending) -> None:
        """Remove a request that is still queued (its caller went away)."""
        try:
            self._queue.remove(item)
        except ValueError:
            return  # already taken into a batch; its result will be discarded
        self._unqueue(item.key, 1, item.rows)
        self._notify()

    def _dispatch(self, batch: list[_Pending]) -> None:
        now = self._clock()
        if any(item.deadline < now for item in batch):
            for item in batch:
                if item.deadline < now and not item.future.done():
                    waited = now - item.enqueued
                    item.future.set_exception(
                        DeadlineExceededError(
                            f"{self._name}: the request's deadline passed after {waited:.3f} s queued"
                        )
                    )
            batch = [item for item in batch if item.deadline >= now]
            if not batch:
                return
        rows = 0
        m = self._metrics
        observe = m.queue_seconds.observe
        for item in batch:
            waited = now - item.enqueued
            observe(waited if waited > 0.0 else 0.0)
            rows += item.rows
        m.batch_rows.observe(rows)
        m.executions.inc()
        m.inferences.inc(rows)
        m.requests.inc(len(batch))
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._execute(batch, now))
        self._executions.add(task)
        task.add_done_callback(self._executions.discard)

    async def _execute(self, batch: list[_Pending], started: float) -> None:
        try:
            results = await self._offload(self._compute, batch)
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        except BaseException:
            for item in batch:
                item.future.cancel()
            raise
        else:
            for item, outputs in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(outputs)
        finally:
            self._in_flight -= 1
            seconds = max(0.0, self._clock() - started)
            self._batch_seconds = seconds if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * seconds
            self._notify()

    def _compute(self, batch: list[_Pending]) -> list[Outputs]:
        """Concatenate, run, split. Runs off the loop, so the copies don't block it."""
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {name: np.concatenate([item.inputs[name] for item in batch], axis=0) for name in batch[0].inputs}
        total = sum(item.rows for item in batch)
        outputs = self._run(inputs)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise BackendError(
                    f"{self._name}: output '{name}' has shape {list(array.shape)}, but a batch of {total} rows needs "
                    f"{total} as its first dimension; this model cannot be batched, disable dynamic batching for it"
                )
        if len(batch) == 1:
            return [dict(outputs)]
        results: list[Outputs] = []
        start = 0
        for item in batch:
            stop = start + item.rows
            results.append({name: array[start:stop] for name, array in outputs.items()})
            start = stop
        return results

    def _retry_after(self) -> float:
        """Seconds until the queue has likely drained: batches ahead times the smoothed batch time."""
        rows = sum(self._queued_rows.values())
        batches = math.ceil(rows / self._max_rows) / self._max_in_flight
        estimate = max(self._delay, batches * self._batch_seconds)
        return min(60.0, max(0.001, estimate))


def _resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _shape_of(inputs: Arrays) -> tuple[int, _Key]:
    """Rows and batching key of one request; ProtocolError when its inputs have no common batch dimension."""
    if len(inputs) == 1:  # the common case, without the sort and the checks between inputs
        for name, array in inputs.items():
            shape = array.shape  # a tuple of ints: its tail is the key's as it is
            if not shape:
                break  # a scalar: reported below
            return shape[0], ((name, array.dtype.str, shape[1:]),)
    if not inputs:
        raise ProtocolError("a batched model needs at least one input")
    rows = -1
    key = []
    for name in sorted(inputs):
        array = inputs[name]
        if array.ndim == 0:
            raise ProtocolError(f"input '{name}' is a scalar, but this model batches along the first dimension")
        if rows < 0:
            rows = int(array.shape[0])
        elif array.shape[0] != rows:
            raise ProtocolError(
                f"input '{name}' has {array.shape[0]} rows in its first (batch) dimension, other inputs have {rows}"
            )
        key.append((name, array.dtype.str, tuple(int(d) for d in array.shape[1:])))
    return rows, tuple(key)
