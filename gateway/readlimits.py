"""Read limits for the HTTP transport: how much a client may send, and how slowly, before the gateway stops
listening to it; and the one timer per server that enforces the time limits (the size limits are counted as the
transport parses, in transport.InferenceProtocol)."""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic
from typing import Any


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """How much a client may send, and how slowly, before the gateway stops listening to it (nginx's
    client_header_timeout, client_body_timeout and large_client_header_buffers, in our words)."""

    header_timeout: float = 10.0  # seconds from a connection's first byte (or a request's start) to its headers' end
    body_timeout: float = 30.0  # seconds from a request's start to its body's end
    max_header_bytes: int = 32 * 1024  # names and values of one request's headers, together
    max_headers: int = 100


class Sweeper:
    """One timer per server, not per request: it looks at every connection once every `period` seconds and answers
    408 (and closes) those that have been reading one request for too long.

    A request carries no timestamp (a store per request is paid by every request). The sweeper tells what a
    connection is doing from state the protocol keeps anyway (`_heading`, the direct path's target, uvicorn's cycle
    and keep-alive timer) and knows a request by its header list, which every request's start makes anew: it notes
    when it first saw that list. The request began after the sweep before, so a limit is enforced once the first
    sighting is older than the limit: never early, and at most two periods (a quarter of the limit) late."""

    def __init__(self, limits: ReadLimits) -> None:
        self.limits = limits
        self.period = max(0.02, min(limits.header_timeout, limits.body_timeout) / 8)
        self.armed = False
        self._seen: dict[Any, tuple[object, float]] = {}

    def arm(self, protocol: Any) -> None:
        if not self.armed:
            self.armed = True
            protocol.loop.call_later(self.period, self._sweep, protocol.loop, protocol.connections)

    def _sweep(self, loop: Any, connections: set[Any]) -> None:
        now = monotonic()
        seen, self._seen = self._seen, {}
        for connection in list(connections):
            limit = self._limit(connection)
            if limit is None or connection.transport.is_closing():
                continue
            marker = connection.headers
            first = seen.get(connection)
            since = first[1] if first is not None and first[0] is marker else now
            self._seen[connection] = (marker, since)
            if now - since > limit[0]:
                if limit[1] is None:  # sent nothing, or no request: a 408 now could cross a request on its way
                    connection.transport.close()
                else:
                    connection.refuse(408, limit[1])
        if connections:
            loop.call_later(self.period, self._sweep, loop, connections)
        else:
            self.armed = False
            self._seen = {}

    def _limit(self, connection: Any) -> tuple[float, str | None] | None:
        """The time `connection` may take over what it is sending and what to answer past it (None: close without
        an answer), or None when it is not sending a request."""
        limits = self.limits
        if connection._heading:
            return limits.header_timeout, "the request headers did not arrive in time"
        if connection._target is not None:  # the direct path, reading a body
            return limits.body_timeout, "the request body did not arrive in time"
        cycle = connection.cycle
        if cycle is not None and not cycle.response_complete:
            if getattr(cycle, "more_body", False):  # uvicorn's path, reading a body
                return limits.body_timeout, "the request body did not arrive in time"
            return None  # answering: the server's business
        if connection.timeout_keep_alive_task is None:  # sent bytes that began no request (blank lines)
            return limits.header_timeout, None
        return None
