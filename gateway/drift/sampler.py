"""The request-path side of drift: Bernoulli sampling of served rows into one bounded buffer.

`offer` runs inline in the request handler, so it never awaits, never raises, takes no lock and, for a request none
of whose rows is sampled, costs a dict lookup and a subtraction: each (model, version) keeps a geometric skip
counter (the number of rows until its next sampled row), which is a Bernoulli(rate) draw per row without drawing a
random number per row. A full buffer drops the sampled rows and counts them; nothing is evicted silently.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from gateway.inference import views_body

Arrays = dict[str, npt.NDArray[Any]]


class DriftKey(NamedTuple):
    """One monitored model version. A tuple, so the request path's dict lookup hashes it in C, without a call."""

    model: str
    version: str


# (key, input rows, output rows, number of rows): a plain tuple, the cheapest thing to build on the request path.
Sample = tuple[DriftKey, Arrays, Arrays, int]


class _KeyState:
    __slots__ = ("dropped", "log_keep", "rate", "skip", "taken")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.log_keep = math.log1p(-rate) if rate < 1.0 else 0.0
        self.skip = 0
        self.taken = 0  # rows the draw selected (enqueued + dropped)
        self.dropped = 0  # selected rows lost to a full buffer (or to a malformed request)


@dataclass(frozen=True, slots=True)
class SamplerCounts:
    taken: int
    dropped: int


class DriftSampler:
    """Samples rows of served requests into a bounded FIFO that `DriftMonitor` drains off the request path.

    `configure`/`remove` and `offer` run on the event loop; `drain` may run in a worker thread (deque append and
    popleft are atomic, and the capacity check may at worst let the buffer overshoot by the rows of one request).
    """

    def __init__(self, capacity: int = 10_000, *, rng: random.Random) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._rng = rng
        self._buffer: deque[Sample] = deque()
        self._states: dict[DriftKey, _KeyState] = {}
        self.failures = 0  # offers that hit an unexpected error (counted, never raised)

    def configure(self, key: DriftKey, rate: float) -> None:
        """Start (or re-rate) sampling `key`'s rows with probability `rate` each; counters survive a re-rate."""
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"sample rate must be in (0, 1], got {rate}")
        old = self._states.get(key)
        state = _KeyState(rate)
        if old is not None:
            state.taken, state.dropped = old.taken, old.dropped
        state.skip = self._gap(state)
        self._states[key] = state

    def remove(self, key: DriftKey) -> None:
        """Stop sampling `key`; rows of it still in the buffer are discarded by the monitor."""
        self._states.pop(key, None)

    def offer(
        self, key: DriftKey, inputs: Mapping[str, npt.NDArray[Any]], outputs: Mapping[str, npt.NDArray[Any]]
    ) -> None:
        """Maybe sample some rows of one served request. Never raises, never blocks; O(1) when no row is sampled."""
        try:
            state = self._states.get(key)
            if state is None:
                return
            for first in inputs.values():  # noqa: B007 - the cheapest way to the first value
                break
            else:
                return
            rows = first.shape[0] if first.ndim else 1
            left = state.skip - rows
            if left >= 0:
                state.skip = left
                return
            self._take(state, key, inputs, outputs, rows)
        except Exception:  # a side channel must never fail the request
            self.failures += 1

    def _take(
        self,
        state: _KeyState,
        key: DriftKey,
        inputs: Mapping[str, npt.NDArray[Any]],
        outputs: Mapping[str, npt.NDArray[Any]],
        rows: int,
    ) -> None:
        if rows == 1:
            self._take_one(state, key, inputs, outputs)
            return
        if state.rate >= 1.0:
            picked = None  # every row
            count = rows
        else:
            position = state.skip
            picked = [position]
            while True:
                position += 1 + self._gap(state)
                if position >= rows:
                    break
                picked.append(position)
            state.skip = position - rows
            count = len(picked)
        if not self._room(state, count):
            return
        if picked is None:
            select: slice | npt.NDArray[np.intp] = slice(None)
        elif count == 1:
            select = slice(picked[0], picked[0] + 1)  # a slice copy is ~4x cheaper than fancy indexing
        else:
            select = np.asarray(picked, dtype=np.intp)
        try:
            sample_in = {name: _rows(a, select, rows) for name, a in inputs.items()}
            sample_out = {name: _rows(a, select, rows) for name, a in outputs.items() if _has_rows(a, rows)}
        except Exception:  # e.g. an input whose first dimension is not the batch
            state.dropped += count
            raise
        self._buffer.append((key, sample_in, sample_out, count))

    def _take_one(
        self,
        state: _KeyState,
        key: DriftKey,
        inputs: Mapping[str, npt.NDArray[Any]],
        outputs: Mapping[str, npt.NDArray[Any]],
    ) -> None:
        """`_take` for a one-row request (the common case), whose one row is the sample: no positions to pick or
        rows to select, and a copy only of what views the request body (the sample is drained within the drift
        worker's interval, and the gateway never mutates a tensor once answered)."""
        state.skip = self._gap(state)  # the row at the skip counter's 0 is this one; the next is a gap away
        if not self._room(state, 1):
            return
        sample_in = {}
        for name, a in inputs.items():
            if a.ndim == 0:
                sample_in[name] = a.reshape(1)
            elif a.shape[0] == 1:
                sample_in[name] = a.copy() if views_body(a) else a
            else:  # an input whose first dimension is not the batch
                state.dropped += 1
                raise ValueError("tensor without the batch dimension")
        sample_out = {name: a for name, a in outputs.items() if a.ndim >= 1 and a.shape[0] == 1}  # the model's own
        self._buffer.append((key, sample_in, sample_out, 1))

    def due(self, key: DriftKey) -> bool:
        """One Bernoulli(rate) draw for a whole request of `key`, before anything of it is decoded: a caller that
        decodes only what is sampled (a remote version's forwarded request) asks this, then hands the rows to
        `take`. Each row is still sampled at the key's rate; a request's rows are taken together. Never raises."""
        state = self._states.get(key)
        if state is None:
            return False
        if state.skip > 0:
            state.skip -= 1
            return False
        try:
            state.skip = self._gap(state)
        except Exception:
            self.failures += 1
            return False
        return True

    def take(
        self, key: DriftKey, inputs: Mapping[str, npt.NDArray[Any]], outputs: Mapping[str, npt.NDArray[Any]]
    ) -> None:
        """Every row of a request `due` chose: bounded and counted as `offer`'s. Never raises, never blocks."""
        try:
            state = self._states.get(key)
            if state is None:
                return
            first = next(iter(inputs.values()))
            rows = first.shape[0] if first.ndim else 1
            if not self._room(state, rows):
                return
            sample_in = {
                name: a.reshape(1) if a.ndim == 0 else a.copy() if views_body(a) else a for name, a in inputs.items()
            }
            sample_out = {name: a for name, a in outputs.items() if _has_rows(a, rows)}
            self._buffer.append((key, sample_in, sample_out, rows))
        except Exception:  # a side channel must never fail its caller
            self.failures += 1

    def _room(self, state: _KeyState, count: int) -> bool:
        """Count `count` selected rows as taken; False (and counted as dropped) when the buffer is full."""
        state.taken += count
        if len(self._buffer) >= self._capacity:
            state.dropped += count
            return False
        return True

    def _gap(self, state: _KeyState) -> int:
        """Unsampled rows before the next sampled one: Geometric(rate) failures, by inversion."""
        if state.rate >= 1.0:
            return 0
        return int(math.log(1.0 - self._rng.random()) / state.log_keep)

    def drain(self, limit: int) -> list[Sample]:
        """Pop up to `limit` samples (oldest first)."""
        out: list[Sample] = []
        popleft = self._buffer.popleft
        try:
            for _ in range(limit):
                out.append(popleft())
        except IndexError:
            pass
        return out

    @property
    def depth(self) -> int:
        return len(self._buffer)

    @property
    def capacity(self) -> int:
        return self._capacity

    def counts(self, key: DriftKey) -> SamplerCounts | None:
        state = self._states.get(key)
        return None if state is None else SamplerCounts(state.taken, state.dropped)

    def rate(self, key: DriftKey) -> float | None:
        state = self._states.get(key)
        return None if state is None else state.rate


def _has_rows(array: npt.NDArray[Any], rows: int) -> bool:
    return array.ndim >= 1 and array.shape[0] == rows


def _rows(array: npt.NDArray[Any], select: slice | npt.NDArray[np.intp], rows: int) -> npt.NDArray[Any]:
    if array.ndim == 0:
        return array.reshape(1)
    if array.shape[0] != rows:
        raise ValueError("tensor without the batch dimension")
    return array[select].copy()  # a copy: the sample must not keep the request's buffers alive or see them change
