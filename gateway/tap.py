"""The request-path side of a rollout's live gates: a sample of one version's served requests (latency and outputs).

`offer` runs inline after a request is answered, so it never awaits, never raises and takes no lock; a request that
is not sampled costs one decrement (a geometric skip counter, as the drift sampler has). The controller drains the
buffer at each evaluation, off the request path. A full buffer drops the sample and counts it.

A rollout taps its candidate at rate 1 and its baseline at the candidate's share over the baseline's, so both arms
bring about the same number of samples to a comparison whatever the split.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy.typing as npt

Outputs = Mapping[str, npt.NDArray[Any]]
Sample = tuple[float, Outputs]  # (seconds from body received to response encoded, the version's outputs)


class Tap:
    __slots__ = ("_buffer", "_capacity", "_log_keep", "_random", "_skip", "dropped", "rate", "taken")

    def __init__(self, rate: float, *, random: Callable[[], float], capacity: int = 20_000) -> None:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {rate}")
        self.rate = rate
        self._random = random
        self._capacity = capacity
        self._log_keep = math.log1p(-rate) if rate < 1.0 else 0.0
        self._buffer: deque[Sample] = deque()
        self._skip = self._gap()
        self.taken = 0  # samples the draw selected (kept + dropped)
        self.dropped = 0  # selected but lost to a full buffer

    def offer(self, seconds: float, outputs: Outputs) -> None:
        """Maybe keep one served request. Never raises, never blocks; one decrement when it is not sampled."""
        skip = self._skip
        if skip > 0:
            self._skip = skip - 1
            return
        self._skip = self._gap()
        self.taken += 1
        if len(self._buffer) >= self._capacity:
            self.dropped += 1
            return
        self._buffer.append((seconds, outputs))

    def due(self) -> bool:
        """`offer`'s draw alone, for a caller that has the outputs only once it knows (a remote version decodes its
        answer only when sampled); `keep` then takes them. `offer` is the two inline, for the local request path."""
        skip = self._skip
        if skip > 0:
            self._skip = skip - 1
            return False
        self._skip = self._gap()
        return True

    def keep(self, seconds: float, outputs: Outputs) -> None:
        """Take one request `due` chose. Never raises, never blocks."""
        self.taken += 1
        if len(self._buffer) >= self._capacity:
            self.dropped += 1
            return
        self._buffer.append((seconds, outputs))

    def drain(self) -> list[Sample]:
        """Take every kept sample (oldest first). Safe from another thread: deque pops are atomic."""
        out: list[Sample] = []
        popleft = self._buffer.popleft
        try:
            while True:
                out.append(popleft())
        except IndexError:
            return out

    def _gap(self) -> int:
        """Requests to skip before the next sampled one: Geometric(rate) failures, by inversion."""
        if self._log_keep == 0.0:
            return 0
        return int(math.log(1.0 - self._random()) / self._log_keep)
