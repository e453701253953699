"""One remote V2 server: a pooled keep-alive client, the retry rule, faults as gateway errors, ejection and health.

The retry rule: a request is sent again only when its connection could not be made (`ConnectError`,
`ConnectTimeout`), since then its bytes surely never reached the server; and only once, within the same timeout.
Anything that fails after the connection was made (a timeout, a dropped connection, a 5xx) may have run on the
server, and an inference POST is not known to be idempotent: it is answered, not repeated. httpx's own pool checks
a kept-alive connection before reusing it, so a server that closed an idle connection costs a new connect, not a
failed request.

The whole exchange, connect to the last byte, is bounded by one timeout (`asyncio.timeout`, since httpx's are per
phase and a slow trickle would pass each of them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import TypeVar

import httpx

from gateway.errors import GatewayError, RemoteError, RemoteTimeoutError, RemoteUnavailableError
from gateway.remote.answer import MalformedAnswerError, error_of
from gateway.remote.connections import LeanTransport
from gateway.remote.ejection import Ejection
from gateway.remote.metrics import EndpointMetrics, RemoteMetrics
from gateway.remote.settings import EndpointSettings

logger = logging.getLogger(__name__)
# httpx logs every request at INFO: at thousands a second that is the log. Faults are counted and said here instead.
logging.getLogger("httpx").setLevel(logging.WARNING)

T = TypeVar("T")
# Ask for answers as they are: compressing them would cost both servers more than loopback or a LAN saves.
_HEADERS = {"accept-encoding": "identity"}


class Endpoint:
    def __init__(
        self,
        url: str,
        settings: EndpointSettings,
        metrics: RemoteMetrics,
        *,
        clock: Callable[[], float],
        transport: httpx.AsyncBaseTransport | None = None,
        sync_transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url
        self.settings = settings
        pool = settings.pool
        limits = httpx.Limits(
            max_connections=pool.max_connections,
            max_keepalive_connections=pool.max_keepalive,
            keepalive_expiry=pool.keepalive_expiry,
        )
        # trust_env off: a proxy from the environment must not come between the gateway and its model servers.
        self._transport = transport if transport is not None else _transport(url, limits)
        self._client = httpx.AsyncClient(base_url=url, headers=_HEADERS, transport=self._transport, trust_env=False)
        self._base = url.rstrip("/")
        self._sync_transport = sync_transport
        self._sync: httpx.Client | None = None  # made on first use: metadata at load, validation runs
        self.ejection = Ejection(settings.ejection, clock)
        self.ready: bool | None = None  # the last health check's verdict; None before the first
        self.recoveries = 0  # times the health check saw it become ready (a failed load retries on a change)
        self.metrics: EndpointMetrics = metrics.bind(url, self._ejected_value, self._ready_value)

    def refusing(self) -> bool:
        return self.ejection.refusing()

    def available(self) -> bool:
        return self.ready is not False and not self.ejection.refusing()

    def refusal(self) -> RemoteUnavailableError:
        """The error a request gets while the endpoint is ejected (counted as never sent)."""
        self.metrics.outcomes["ejected"].value += 1
        ejection = self.ejection
        return RemoteUnavailableError(
            f"remote endpoint {self.url} is ejected after failing; the next try is in at most {ejection.period:g}s"
        )

    async def send(
        self,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
        connect_timeout: float,
        read: Callable[[httpx.Response], T],
    ) -> T:
        """POST `body` to `path`; `read` turns a 2xx answer into the result (raising MalformedAnswerError for one
        that is not V2). Any other status, and every transport fault, raises the gateway error it means. Counted,
        and fed to the endpoint's ejection."""
        probe = self.ejection.admit()
        if probe is None:
            raise self.refusal()
        metrics = self.metrics
        start = perf_counter()
        kind: str | None = None  # set when the endpoint failed: counted, and its ejection told
        try:
            response = await self._exchange(path, body, headers, timeout, connect_timeout)
            status = response.status_code
            if 200 <= status < 300:
                try:
                    result = read(response)
                except MalformedAnswerError:
                    kind = "malformed"
                    raise
            elif 400 <= status < 500:  # it answered: the request's fault, not the endpoint's
                metrics.outcomes["refused"].value += 1
                self.ejection.succeeded(probe)
                raise error_of(response, f"remote endpoint {self.url}")
            else:
                kind = "status"
                raise error_of(response, f"remote endpoint {self.url}")
        except _ExchangeError as fault:
            kind = fault.kind
            raise fault.error from fault.__cause__
        finally:
            metrics.latency.observe(perf_counter() - start)
            if kind is not None:
                metrics.outcomes["failed"].value += 1
                metrics.errors[kind].value += 1
                if self.ejection.failed(probe):
                    self._ejected(kind)
            elif probe and self.ejection.state == "half_open":
                self.ejection.released(probe)  # cancelled: no verdict, the next request probes
        metrics.outcomes["success"].value += 1
        self.ejection.succeeded(probe)
        return result

    async def _exchange(
        self, path: str, body: bytes, headers: Mapping[str, str], timeout: float, connect_timeout: float
    ) -> httpx.Response:
        phases = {"connect": connect_timeout, "read": timeout, "write": timeout, "pool": timeout}
        try:
            async with asyncio.timeout(timeout):
                try:
                    return await self._post(path, body, headers, phases)
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    # No connection was made: the request never reached the server, so one more try is safe.
                    self.metrics.retries.value += 1
                    return await self._post(path, body, headers, phases)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            refused = RemoteUnavailableError(f"remote endpoint {self.url}: cannot connect: {exc!r}")
            raise _ExchangeError("connect", refused) from exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            late = RemoteTimeoutError(f"remote endpoint {self.url}: no answer within {timeout:g}s")
            raise _ExchangeError("timeout", late) from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            dropped = RemoteError(f"remote endpoint {self.url}: the connection dropped: {exc!r}")
            raise _ExchangeError("disconnect", dropped) from exc
        except httpx.HTTPError as exc:
            raise _ExchangeError("malformed", RemoteError(f"remote endpoint {self.url}: {exc!r}")) from exc

    async def _post(
        self, path: str, body: bytes, headers: Mapping[str, str], phases: dict[str, float]
    ) -> httpx.Response:
        """One POST straight to the transport: the client layer (auth, redirects, cookies, hooks, URL merging) is
        half of a forwarded request's CPU when the transport is lean, and a forward needs none of it."""
        request = httpx.Request(
            "POST", self._base + path, content=body, headers={**_HEADERS, **headers}, extensions={"timeout": phases}
        )
        response = await self._transport.handle_async_request(request)
        await response.aread()
        return response

    def get(self, path: str, timeout: float) -> httpx.Response:
        """A blocking GET (metadata when a version loads, in the loader's thread); transport faults as errors."""
        try:
            return self._sync_client().get(path, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise RemoteTimeoutError(f"remote endpoint {self.url}: no answer within {timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise RemoteUnavailableError(f"remote endpoint {self.url}: {exc!r}") from exc

    def post_blocking(self, path: str, body: bytes, timeout: float) -> httpx.Response:
        """A blocking POST for offline work (a rollout's validation runs, in a worker thread); no retry, no
        ejection: it is not live traffic."""
        try:
            return self._sync_client().post(path, content=body, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise RemoteTimeoutError(f"remote endpoint {self.url}: no answer within {timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise RemoteError(f"remote endpoint {self.url}: {exc!r}") from exc

    async def check_health(self, timeout: float) -> bool:
        """GET /v2/health/ready once; the verdict is kept in `ready` (and its changes logged)."""
        try:
            response = await self._client.get("/v2/health/ready", timeout=timeout)
            ready = response.status_code == 200
            why = f"answered {response.status_code}"
        except httpx.HTTPError as exc:
            ready, why = False, f"unreachable: {exc!r}"
        if ready and self.ready is not True:
            self.recoveries += 1
            if self.ready is False:
                logger.info("remote endpoint %s is ready again", self.url)
        elif not ready and self.ready is not False:
            logger.warning("remote endpoint %s is not ready: /v2/health/ready %s", self.url, why)
        self.ready = ready
        return ready

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._sync is not None:
            self._sync.close()

    def _sync_client(self) -> httpx.Client:
        if self._sync is None:
            self._sync = httpx.Client(
                base_url=self.url, headers=_HEADERS, transport=self._sync_transport, trust_env=False
            )
        return self._sync

    def _ejected(self, kind: str) -> None:
        self.metrics.ejections.value += 1
        ejection = self.ejection
        logger.warning(
            "remote endpoint %s ejected for %gs (last failure: %s); its requests are refused or diverted until a probe"
            " succeeds", self.url, ejection.period, kind,
        )  # fmt: skip

    def _ejected_value(self) -> float:
        return 1.0 if self.ejection.state != "closed" else 0.0

    def _ready_value(self) -> float:
        return 0.0 if self.ready is False else 1.0


def _transport(url: str, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """The lean keep-alive transport for plain http (5x less CPU a request than httpx's own, see connections.py);
    httpx's for https."""
    if httpx.URL(url).scheme == "http":
        return LeanTransport(limits)
    return httpx.AsyncHTTPTransport(limits=limits, retries=0)


class _ExchangeError(Exception):
    """A transport fault, classified: its kind for the metrics and the gateway error it becomes."""

    def __init__(self, kind: str, error: GatewayError) -> None:
        super().__init__(kind)
        self.kind = kind
        self.error = error
