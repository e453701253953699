"""The lean keep-alive transport under the remote endpoints' httpx client, against real sockets on loopback: reuse,
the pool's bound, framing (Content-Length and chunked), and faults with the meaning the retry rule relies on."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import httpx
import pytest

from gateway.remote.connections import LeanTransport


class Server:
    """A loopback HTTP/1.1 server whose every answer is what `answer` writes; counts connections and requests."""

    def __init__(self, answer: Callable[[int, bytes], bytes | None]) -> None:
        self.answer = answer
        self.connections = 0
        self.requests = 0
        self.concurrent = 0
        self.most_concurrent = 0
        self.release = asyncio.Event()
        self.release.set()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in self.writers), return_exceptions=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
                body = await reader.readexactly(length)
                self.requests += 1
                self.concurrent += 1
                self.most_concurrent = max(self.most_concurrent, self.concurrent)
                await self.release.wait()
                self.concurrent -= 1
                reply = self.answer(self.requests, body)
                if reply is None:  # drop the connection mid-exchange
                    writer.close()
                    return
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


_running: list[Server] = []


async def serving(answer: Callable[[int, bytes], bytes | None]) -> Server:
    made = Server(answer)
    made.server = await asyncio.start_server(made.handle, "127.0.0.1", 0)
    _running.append(made)
    return made


def run(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """An async test run on its own loop (the suite has no async plugin)."""

    async def body() -> None:
        try:
            await asyncio.wait_for(test(), timeout=30)
        finally:
            while _running:
                await _running.pop().stop()

    @functools.wraps(test)
    def wrapper() -> None:
        asyncio.run(body())

    return wrapper


def client(url: str, **limits: float | int | None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, transport=LeanTransport(httpx.Limits(**limits)))  # type: ignore[arg-type]


@run
async def test_connections_are_kept_alive_and_reused() -> None:
    server = await serving(lambda n, body: ok(b'{"n": %d, "echo": "%s"}' % (n, body)))
    async with client(server.url, max_connections=4) as http:
        for i in range(20):
            response = await http.post("/v2/models/m/infer", content=b"x%d" % i)
            assert response.status_code == 200 and response.json() == {"n": i + 1, "echo": f"x{i}"}
            assert response.headers["content-type"] == "application/json"
    assert server.connections == 1


@run
async def test_no_more_connections_than_the_limit_and_waiters_are_served() -> None:
    server = await serving(lambda n, body: ok(body))
    server.release.clear()
    async with client(server.url, max_connections=3) as http:
        sent = [asyncio.create_task(http.post("/", content=b"%d" % i)) for i in range(10)]
        deadline = asyncio.get_running_loop().time() + 10
        while server.concurrent < 3:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        server.release.set()
        answers = await asyncio.gather(*sent)
    assert sorted(int(a.content) for a in answers) == list(range(10))
    assert server.connections == 3 and server.most_concurrent == 3


@run
async def test_chunked_answers_are_read_whole() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    server = await serving(lambda n, body: chunked)
    async with client(server.url) as http:
        assert (await http.post("/", content=b"")).content == b"hello world"
        assert (await http.post("/", content=b"")).content == b"hello world"
    assert server.connections == 1


@run
async def test_a_refused_connection_is_a_connect_error() -> None:
    """The retry rule sends again only on ConnectError: the request surely never left."""
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with client(f"http://127.0.0.1:{port}") as http:
        with pytest.raises(httpx.ConnectError):
            await http.post("/", content=b"x")


@run
async def test_a_connection_dropped_mid_exchange_is_not_a_connect_error() -> None:
    """The request reached the server (it may have run): a protocol error, which the endpoint never retries."""
    server = await serving(lambda n, body: None if n == 2 else ok(b"fine"))
    async with client(server.url) as http:
        assert (await http.post("/", content=b"1")).content == b"fine"
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post("/", content=b"2")
        assert (await http.post("/", content=b"3")).content == b"fine"  # a new connection
    assert server.connections == 2


@run
async def test_an_idle_connection_the_server_closed_is_replaced_not_failed() -> None:
    close = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye"
    server = await serving(lambda n, body: close if n == 1 else ok(b"again"))
    async with client(server.url) as http:
        assert (await http.post("/", content=b"")).content == b"bye"
        assert (await http.post("/", content=b"")).content == b"again"
    assert server.connections == 2


@run
async def test_a_cancelled_exchange_closes_its_connection() -> None:
    """A timeout leaves the connection's state unknown (an answer may still come): it is never reused."""
    server = await serving(lambda n, body: ok(b"late" if n == 1 else b"fresh"))
    server.release.clear()
    async with client(server.url) as http:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await http.post("/", content=b"")
        server.release.set()
        assert (await http.post("/", content=b"")).content == b"fresh"
    assert server.connections == 2


@run
async def test_expired_idle_connections_are_not_reused() -> None:
    server = await serving(lambda n, body: ok(b"%d" % n))
    async with client(server.url, keepalive_expiry=0.0) as http:
        await http.post("/", content=b"")
        await http.post("/", content=b"")
    assert server.connections == 2
