"""The server process's lifecycle: uvicorn's Server with a graceful drain, as Kubernetes' termination sequence wants.

On SIGTERM or SIGINT the gateway does not stop listening at once. It starts draining: readiness answers 503 (so the
load balancer takes it out of rotation), the listener keeps accepting for `drain_delay` seconds (endpoints take a
moment to notice), and every answer carries `Connection: close`, so keep-alive clients move to other replicas at
their next request. Then the listener closes, requests in flight (and batcher queues) finish, for up to
`drain_timeout` seconds, the lifespan shuts down (the prediction log is flushed, rollout state written) and the
process exits 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Generator
from types import FrameType

import uvicorn
from uvicorn.server import HANDLED_SIGNALS

from gateway.dataplane import DataPlane

logger = logging.getLogger(__name__)

UNREAD_GRACE = 0.5  # seconds a connection accepted just before the listener closed gets to deliver its request


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, dataplane: DataPlane, *, drain_delay: float) -> None:
        super().__init__(config)
        self._dataplane = dataplane
        self._drain_delay = drain_delay
        self._draining_since: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining_since is None and not self.should_exit:
            self._draining_since = time.monotonic()
            self._dataplane.draining = True
            logger.info(
                "%s: draining (readiness 503, answers close their connections); stopping in %g s",
                signal.Signals(sig).name, self._drain_delay,
            )  # fmt: skip
            if self._drain_delay <= 0:
                self.should_exit = True
            return
        logger.warning("%s again: exiting now", signal.Signals(sig).name)
        self.should_exit = True
        self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        since = self._draining_since
        if since is not None and time.monotonic() - since >= self._drain_delay:
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Stop accepting first, then give a connection accepted a moment ago the time to send its request before
        # uvicorn closes every idle connection: a request the gateway accepted must not be cut off unread.
        for server in self.servers:
            server.close()
        end = time.monotonic() + UNREAD_GRACE
        while (
            not self.force_exit
            and time.monotonic() < end
            and any(getattr(c, "cycle", None) is None for c in self.server_state.connections)
        ):
            await asyncio.sleep(0.01)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """As uvicorn's, but the signal is not raised again after a graceful shutdown: a drained gateway exits 0."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
