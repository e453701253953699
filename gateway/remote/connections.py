"""A lean HTTP/1.1 keep-alive transport for httpx: the remote versions' hot path.

httpx's default transport (httpcore over anyio) costs about 3 ms of CPU a request on our development machine: each
request walks the whole pool (is_idle on every connection, a readability syscall per idle one), enters several
anyio cancel scopes, and without sniffio fails an import that scans sys.path. The gateway forwards one small POST
at a time per connection to one origin, so this transport does just that: a pool of asyncio protocol connections to
the endpoint's origin, the request written in one `write`, the answer parsed by httptools (the C parser uvicorn
already uses), framed by Content-Length or chunked encoding. httpx.AsyncClient stays the interface (timeouts,
headers, the retry rule's exception types).

Faults keep httpx's meaning, which the retry rule relies on: a connection that cannot be made raises
`httpx.ConnectError` (the request surely never left); one lost after the request was written raises
`httpx.RemoteProtocolError` (it may have run). A kept-alive connection the server closed while idle is noticed
before reuse (its protocol saw the EOF) and replaced, never written to. A request cancelled mid-exchange (the
endpoint's timeout) closes its connection, whose state is then unknown.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import cast

import httptools
import httpx

# status, headers, body, whether the connection may be kept
_Answer = tuple[int, list[tuple[bytes, bytes]], bytes, bool]


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser  # one per exchange, made when it starts
        self._answer: asyncio.Future[_Answer] | None = None
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    # -- asyncio.Protocol ------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport's kind

    def data_received(self, data: bytes) -> None:
        answer = self._answer
        if answer is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed answer: {exc}"))

    def eof_received(self) -> bool | None:
        self._lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    # -- httptools callbacks ---------------------------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._status = self._parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer = self._answer
        if answer is None or answer.done():
            return
        keep = self._parser.should_keep_alive()
        answer.set_result((self._status, self._headers, b"".join(self._body), keep))

    # -- the exchange ----------------------------------------------------------------------------------------------

    async def exchange(self, head: bytes, body: bytes) -> _Answer:
        assert self.transport is not None
        answer: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._answer = answer
        self._status, self._headers, self._body = 0, [], []
        self._parser = httptools.HttpResponseParser(self)
        if len(body) < 65536:
            self.transport.write(head + body)
        else:  # a large body is not copied into the head
            self.transport.write(head)
            self.transport.write(body)
        try:
            return await answer
        finally:
            self._answer = None

    def _lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is not None and not self._answer.done():
            # Also an answer framed by the connection's end (no length, not chunked), which no V2 server sends.
            self._fail(httpx.RemoteProtocolError(f"the server closed the connection mid-answer ({exc!r})"))

    def _fail(self, error: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class LeanTransport(httpx.AsyncBaseTransport):
    """Keep-alive connections to one origin (the endpoint's), at most `max_connections` at once; requests beyond
    wait for one in arrival order. Plain http only: an https endpoint uses httpx's own transport."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._max = limits.max_connections or 100
        self._keep = limits.max_keepalive_connections if limits.max_keepalive_connections is not None else self._max
        self._expiry = limits.keepalive_expiry
        self._idle: deque[_Connection] = deque()
        self._open = 0  # connections made or being made, idle or busy
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"the lean transport speaks plain http, not {url.scheme}")
        body = request.content
        connect = request.extensions.get("timeout", {}).get("connect")
        connection = await self._acquire(url.host, url.port or 80, connect)
        try:
            status, headers, content, keep = await connection.exchange(_head(request, len(body)), body)
        except BaseException:  # cancelled (a timeout) or lost: its state is unknown, never reused
            connection.close()
            self._release(connection, keep=False)
            raise
        self._release(connection, keep=keep)
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def _acquire(self, host: str, port: int, connect_timeout: float | None) -> _Connection:
        while True:
            now = time.monotonic()
            while self._idle:
                connection = self._idle.pop()  # the most recently used: warm, least likely closed by the server
                if not connection.closed and (self._expiry is None or now - connection.idle_since < self._expiry):
                    return connection
                connection.close()
                self._open -= 1
            if self._open < self._max:
                self._open += 1
                try:
                    async with asyncio.timeout(connect_timeout):
                        _, made = await asyncio.get_running_loop().create_connection(_Connection, host, port)
                except BaseException as exc:
                    self._open -= 1
                    self._wake()
                    if isinstance(exc, TimeoutError):
                        raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {connect_timeout}s") from exc
                    if isinstance(exc, OSError):
                        raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
                    raise
                return made
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake()  # woken and cancelled at once: pass the turn on
                raise

    def _release(self, connection: _Connection, *, keep: bool) -> None:
        if keep and not connection.closed and not self._closed and len(self._idle) < self._keep:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
            self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
            self._open -= 1


def _head(request: httpx.Request, length: int) -> bytes:
    """The request line and headers; httpx has set Host and the client's headers, this sets the length."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower in (b"content-length", b"transfer-encoding", b"connection"):
            continue
        lines.append(name + b": " + value)
    lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"
