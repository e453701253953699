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
import sys
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.server import HANDLED_SIGNALS

from gateway.dataplane import DataPlane

logger = logging.getLogger(__name__)

STARTUP_FAILURE = 3  # uvicorn's exit status when it cannot start
UNREAD_GRACE = 0.5  # seconds a connection accepted just before the listener closed gets to deliver its request


@dataclass(frozen=True, slots=True)
class AdminListener:
    """A second listener for metrics and admin calls (`--admin-port`): on a port the network can keep from clients,
    e.g. scraped by Prometheus inside the cluster while only the main port is exposed."""

    host: str
    port: int
    app: Any  # an ASGI app: GatewayApp.operations
    protocol: type[asyncio.Protocol]  # transport.protocol_for(..., direct=False): the read limits, no direct path


class GatewayServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, dataplane: DataPlane, *, drain_delay: float, admin: AdminListener | None = None
    ) -> None:
        super().__init__(config)
        self._dataplane = dataplane
        self._drain_delay = drain_delay
        self._draining_since: float | None = None
        self._admin = admin

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        admin = self._admin
        if admin is None or self.should_exit:
            return
        # The same server state (connections, tasks): the drain and shutdown treat both listeners' connections alike.
        config = uvicorn.Config(
            admin.app, host=admin.host, port=admin.port, http=admin.protocol, interface="asgi3", lifespan="off",
            log_config=None, access_log=False, server_header=False, timeout_keep_alive=self.config.timeout_keep_alive,
        )  # fmt: skip
        config.load()

        def protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
            )

        try:
            server = await asyncio.get_running_loop().create_server(protocol, host=admin.host, port=admin.port)
        except OSError as exc:
            logger.error("cannot listen for admin calls on %s:%d: %s", admin.host, admin.port, exc)
            await self.lifespan.shutdown()
            sys.exit(STARTUP_FAILURE)
        self.servers.append(server)
        logger.info("metrics and admin calls on http://%s:%d (not on the main port)", admin.host, admin.port)

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
