"""Admission control: how much work the gateway takes on, and how long a request may wait for its model.

Four rules, each refusing as early and as cheaply as it can (Triton's queue policy and Envoy's overload manager,
in our words):

- **In flight, globally.** At most `max_inflight` requests in the data plane at once (decoding, waiting for a
  model, running). Checked first thing in `DataPlane.infer`, before anything is decoded: over the bound, 503 with
  Retry-After (the body was read, so the connection stays usable).
- **Event-loop lag, globally.** Requests the loop has not read yet wait in socket buffers, where no bound sees
  them; `LagMonitor` measures how late a timer fires, and while that lag is over `max_loop_lag` every new request
  is refused the same way, until the loop has caught up.
- **Expected wait, per version.** A request that finds every execution slot of its version busy is refused at once
  with 503 when the work already waiting ahead of it (by the version's smoothed execution time) would take longer
  than `max_queue_wait` or than what is left of its deadline: work that cannot start in time is never queued.
- **Deadline.** A request may wait for its model until `start + timeout`, the timeout taken from the
  `x-request-timeout-ms` header or else the server's `request_timeout`; one whose deadline passed while it waited
  is dropped, never run, and answered 504.

The per-version rules run only on the slow path (a request that has to wait), so the common request pays for none
of them; the two global ones are one comparison in the data plane (`DataPlane._capacity`: the bound, or 0 while
the loop lags).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final, Protocol

from gateway.errors import ProtocolError

TIMEOUT_HEADER: Final = "x-request-timeout-ms"
NO_HEADERS: Mapping[str, str] = {}


def request_timeout(headers: Mapping[str, str], default: float) -> float:
    """The request's own timeout in seconds (its header), else `default`; a header that is not a positive number of
    milliseconds is the client's mistake (400), named."""
    value = headers.get(TIMEOUT_HEADER)
    if value is None:
        return default
    try:
        millis = float(value)
    except ValueError:
        millis = float("nan")
    if not millis > 0 or millis == float("inf"):
        raise ProtocolError(f"header {TIMEOUT_HEADER} must be a positive number of milliseconds, got {value!r}")
    return millis / 1e3


class Shedder(Protocol):
    """What the lag monitor steers: the data plane's refusal switch and the lag it quotes."""

    refusing: bool
    loop_lag: float


class LagMonitor:
    """How far behind the event loop runs, sampled every `period`: a timer that fires late by `lag` means every
    request read now waited about that long in a socket buffer, unseen by any queue bound. While the smoothed lag is
    over `max_lag`, the data plane refuses new requests (503, before decoding) so the loop catches up; it admits
    again once the lag is under half of it (hysteresis, so it does not flap at the threshold)."""

    def __init__(self, target: Shedder, max_lag: float, period: float = 0.01) -> None:
        self._target = target
        self._max_lag = max_lag
        self._period = period
        self.lag = 0.0

    def observe(self, lag: float) -> None:
        self.lag += 0.3 * (max(lag, 0.0) - self.lag)
        target = self._target
        target.loop_lag = self.lag
        if target.refusing:
            target.refusing = self.lag > self._max_lag / 2
        else:
            target.refusing = self.lag > self._max_lag

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self._period
            await asyncio.sleep(self._period)
            self.observe(loop.time() - due)
