"""uvicorn's httptools protocol with a direct path for inference requests.

For `POST /v2/models/{m}[/versions/{v}]/infer` on an idle connection, the body is collected as httptools parses it
and the answer written with one `transport.write`, with no ASGI scope, cycle, event, receive/send messages or
per-header checks; uvicorn's ASGI path costs about a third of a tiny model's request. Everything else (other routes,
upgrades, a request pipelined behind another) goes through uvicorn and the ASGI app unchanged, and uvicorn still
owns the connection: keep-alive timers, flow control, graceful shutdown, the tasks it waits for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Generator, Sequence
from typing import Any

import httptools
from uvicorn import __version__ as uvicorn_version
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.dataplane import DataPlane
from gateway.endpoints import DECISION_HEADER, RawHeaders, failure, infer_target, refusal, success
from gateway.errors import PayloadTooLargeError
from gateway.protocol import encode_error
from gateway.readlimits import ReadLimits, Sweeper

logger = logging.getLogger(__name__)

_JSON_LENGTH = b"\r\ncontent-type: application/json\r\ncontent-length: "


class _NoWaiter:
    """uvicorn sets its cycle's message event when the connection is lost; nothing waits on a direct request's."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_WAITER = _NoWaiter()


class _Busy:
    """Stands in for uvicorn's request cycle while a direct request is answered, so that uvicorn queues a request
    pipelined behind it (and a shutdown or a lost connection is noted) exactly as it would for its own cycle."""

    __slots__ = ("disconnected", "keep_alive", "response_complete")
    message_event = _NO_WAITER

    def __init__(self, keep_alive: bool) -> None:
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive


class _Head:
    """The status line and uvicorn's default headers (date, server) of a 200 answer, as bytes: rebuilt only when
    uvicorn replaces its header list (once a second, for the date), not for every answer."""

    __slots__ = ("_bytes", "_source")

    def __init__(self) -> None:
        self._source: object = None
        self._bytes = b""

    def of(self, default_headers: list[tuple[bytes, bytes]]) -> bytes:
        if default_headers is not self._source:
            lines = [STATUS_LINE[200]]
            for name, value in default_headers:
                lines += [name, b": ", value, b"\r\n"]
            self._bytes, self._source = b"".join(lines), default_headers
        return self._bytes


class _Targets:
    """Request path -> (model, pinned version) for the direct path, or None; clients send the same few inference
    paths over and over, so each is parsed once. Only short inference paths are kept, at most LIMIT of them (emptied
    when full): a client sending odd or huge targets cannot make it hold much."""

    __slots__ = ("_known",)
    LIMIT = 1024
    LONGEST = 256  # bytes of a path worth keeping

    def __init__(self) -> None:
        self._known: dict[bytes, tuple[str, str | None]] = {}

    def of(self, url: bytes) -> tuple[str, str | None] | None:
        path = url.partition(b"?")[0]
        target = self._known.get(path)
        if target is not None:
            return target
        # Percent-encoded names go uvicorn's way, which decodes them.
        target = None if b"%" in path else infer_target(path.decode("latin-1"))
        if target is not None and len(path) <= self.LONGEST:
            if len(self._known) >= self.LIMIT:
                self._known.clear()
            self._known[path] = target
        return target


class _NoTargets(_Targets):
    """For a listener with no direct path (the admin listener): every request goes uvicorn's way."""

    __slots__ = ()

    def of(self, url: bytes) -> None:
        return None


class _LimitError(Exception):
    """Raised from a parser callback to stop parsing a request over a limit; `send_400_response` then answers."""


class InferenceProtocol(HttpToolsProtocol):
    dataplane: DataPlane  # set on the subclass that `protocol_for` makes
    head: _Head  # shared by the connections of one server, as uvicorn's default headers are
    targets: _Targets  # likewise
    sweeper: Sweeper  # likewise: one timer for every connection's read limits
    limits: ReadLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The class's shared objects, read per request, copied to the instance: Python 3.11 specialises attribute
        # reads from an instance's own dict, not class attributes read through an instance (tens of instructions).
        self.dataplane = self.dataplane
        self.head = self.head
        self.targets = self.targets
        self._target: tuple[str, str | None] | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = 0
        # Read limits. Only `_heading` (a head is being read) is kept per request; a read that could carry a head
        # over the size limit, or continues a head, takes `_receive_carefully`, which counts.
        self._heading = False
        self._roomy = self.limits.max_header_bytes  # a read up to this size cannot hold a head over the limit
        self._max_headers = self.limits.max_headers  # -1 while a read is parsed carefully: the head is measured
        self._head_of: object = None  # the header list `_head_bytes` is counted for
        self._head_bytes = 0
        self._refusal: tuple[int, str] | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # Idle until its first byte, under the same keep-alive timeout as between requests: client pools and load
        # balancers open connections ahead of use, and closing those sooner races their first request.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        self.sweeper.arm(self)

    def on_message_begin(self) -> None:
        # uvicorn's own also builds the ASGI scope; that is left to the requests that go its way (below).
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._heading = True

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if len(data) > self._roomy or self._heading:  # rare: a huge read, or a head split over reads
            self._receive_carefully(data)
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """uvicorn's data_received, after its keep-alive timer is unset."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _receive_carefully(self, data: bytes) -> None:
        """Feed a read that may take a head over the size limit. A head is counted across reads by the bytes that
        arrived while it was read (measured exactly the first time, which also counts nothing of a request before
        it), so one endless header cannot make the parser buffer more than the limit plus a read; a head that
        completes in this read is measured exactly in on_headers_complete."""
        limit = self.limits.max_header_bytes
        if self._heading:
            if self._head_of is not self.headers:
                self._head_of, self._head_bytes = self.headers, self._head_size()
            self._head_bytes += len(data)
        self._max_headers = -1
        try:
            self._feed(data)
        finally:
            self._max_headers = self.limits.max_headers
        if self._heading and (self._head_bytes if self._head_of is self.headers else self._head_size()) > limit:
            self.refuse(431, self._header_limit_message())

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) for name, value in self.headers)

    def _header_limit_message(self) -> str:
        limits = self.limits
        return f"request headers over the limit ({limits.max_headers} headers, {limits.max_header_bytes} bytes)"

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser refused; a limit's own status when a limit stopped it."""
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            super().send_400_response(msg)
        else:
            self.refuse(*refusal)

    def refuse(self, status: int, message: str) -> None:
        """Answer `status` with `{"error": message}` and close, unless an answer is already on its way."""
        self._heading = False
        self._target = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and getattr(cycle, "response_started", True):
            self.transport.close()  # an answer is being written: cutting it short is all that is left
            return
        if self.transport.is_closing():
            return
        body = encode_error(message)
        self._send(_Busy(False), self._head(status, [(b"content-type", b"application/json")], body), body)

    def on_headers_complete(self) -> None:
        self._heading = False
        if len(self.headers) > self._max_headers:  # over the count, or a careful read: measure
            limits = self.limits
            if len(self.headers) > limits.max_headers or self._head_size() > limits.max_header_bytes:
                self._refusal = (431, self._header_limit_message())
                raise _LimitError
        target = self._direct_target()
        if target is None:
            self._target = None
            url, headers, expect = self.url, self.headers, self.expect_100_continue
            super().on_message_begin()
            self.url, self.headers, self.expect_100_continue = url, headers, expect
            self.scope["headers"] = headers
            super().on_headers_complete()
            if self.dataplane.draining and self.cycle is not None:
                self.cycle.keep_alive = False  # draining: this answer closes the connection
            return
        self._target = target
        self._chunks, self._size = [], 0
        self._limit = self.dataplane.snapshot.max_body_bytes
        if self.expect_100_continue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _direct_target(self) -> tuple[str, str | None] | None:
        if self.parser.get_method() != b"POST" or self.parser.should_upgrade():
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # pipelined behind a request still being answered: uvicorn keeps the order
        return self.targets.of(self.url)

    def on_body(self, body: bytes) -> None:
        if self._target is None:
            super().on_body(body)
            return
        self._size += len(body)
        if self._size <= self._limit:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._target is None:
            super().on_message_complete()
            return
        (model, pin), self._target = self._target, None
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        keep = self.parser.get_http_version() == "1.1" and self.parser.should_keep_alive()
        busy = _Busy(keep and not self.dataplane.draining)
        self.cycle = busy  # type: ignore[assignment]
        self._start(self._respond(busy, model, pin, self.headers, body, self._size))

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run the answer at once, on this callback: a model that runs inline answers without ever becoming a task
        (a task costs a scheduling round trip of the loop). Only if it waits (a thread, a batch) does a task take
        over, and uvicorn then waits for that task at shutdown as for its own."""
        try:
            pending = coro.send(None)
        except StopIteration:
            return
        task = self.loop.create_task(_Continue(coro, pending).run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _respond(self, busy: _Busy, model: str, pin: str | None, headers: list[tuple[bytes, bytes]],
                       body: bytes, size: int) -> None:  # fmt: skip
        dataplane = self.dataplane
        if size > self._limit:
            exc = PayloadTooLargeError(f"request body of {size} bytes is over the limit of {self._limit} bytes")
            dataplane.count_refused(exc)
            answer = refusal(exc, f"POST /v2/models/{model}/infer")
        else:
            try:
                reply = await dataplane.infer(model, pin, RawHeaders(headers), body)
            except Exception as exc:
                answer = failure(exc, model)
            else:
                if reply.header_length is None:  # the common answer, written without a header list
                    busy.response_complete = True
                    if busy.disconnected:
                        return
                    payload = reply.body
                    head = self.head.of(self.server_state.default_headers)
                    length = str(len(payload)).encode()
                    self._send(
                        busy, (head, DECISION_HEADER, b": ", reply.decision, _JSON_LENGTH, length, b"\r\n"), payload
                    )
                    return
                answer = success(reply)
        busy.response_complete = True
        if busy.disconnected:
            return
        status, extra, payload = answer
        self._send(busy, self._head(status, extra, payload), payload)

    def _head(self, status: int, extra: Sequence[tuple[bytes, bytes]], payload: bytes) -> list[bytes]:
        """An answer's status line and headers (the server's defaults, `extra`, the length), short of the blank line."""
        out = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            out += [name, b": ", value, b"\r\n"]
        for name, value in extra:
            out += [name, b": ", value, b"\r\n"]
        out += [b"content-length: ", str(len(payload)).encode(), b"\r\n"]
        return out

    def _send(self, busy: _Busy, head: Sequence[bytes], payload: bytes) -> None:
        """Write the head (its lines so far), the blank line and the payload in one write, then finish the cycle."""
        close = b"" if busy.keep_alive else b"connection: close\r\n"
        self.transport.write(b"".join((*head, close, b"\r\n", payload)))
        if busy.keep_alive:
            self.on_response_complete()  # resumes reading, starts a pipelined request or arms the keep-alive timer
        else:
            self.transport.close()


class _Continue:
    """Drives a coroutine that was started outside any task and suspended on `pending` (an asyncio future): the
    task running `run()` waits on that future, then on whatever the coroutine waits on next, to its end."""

    def __init__(self, coro: Coroutine[Any, Any, None], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    async def run(self) -> None:
        await self

    def __await__(self) -> Generator[Any, None, None]:
        pending = self._pending
        while True:
            try:
                yield pending
            except BaseException as exc:  # cancellation thrown in by the task: pass it to the coroutine
                try:
                    pending = self._coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                pending = self._coro.send(None)
            except StopIteration:
                return


# What the direct path takes from uvicorn beyond its public API: the methods it overrides or calls, and the state
# an instance holds once a connection is made. Checked at start-up (`internals_missing`).
_METHODS = (
    "on_message_begin", "on_headers_complete", "on_body", "on_message_complete", "on_response_complete", "shutdown",
    "connection_made", "timeout_keep_alive_handler",
)  # fmt: skip
_STATE = (
    "url", "headers", "expect_100_continue", "parser", "cycle", "transport", "server_state", "tasks", "loop",
    "timeout_keep_alive", "timeout_keep_alive_task",
)  # fmt: skip
_PARSER = ("get_method", "should_upgrade", "get_http_version", "should_keep_alive")


def internals_missing() -> str | None:
    """None when this uvicorn has every internal the direct path relies on; else the first one it lacks.

    The check builds a protocol the way uvicorn does and makes a connection on a stand-in transport, so it sees the
    attributes an instance really has, not only the class's."""
    if 200 not in STATUS_LINE:
        return "STATUS_LINE[200]"
    for name in _METHODS:
        if not callable(getattr(HttpToolsProtocol, name, None)):
            return f"HttpToolsProtocol.{name}"
    try:
        from uvicorn.config import Config
        from uvicorn.server import ServerState

        async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
            pass

        config = Config(app, http=HttpToolsProtocol, lifespan="off", log_config=None)
        config.load()
        loop = asyncio.new_event_loop()  # the probe's own: it runs before the server's loop exists, and sets none
        try:
            protocol = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
            protocol.connection_made(StandInTransport())  # type: ignore[arg-type]
            protocol.on_message_begin()  # what a request's start sets: the URL, headers, the 100-continue flag
        finally:
            loop.close()
    except Exception as exc:  # any surprise in a newer uvicorn means the same: take the plain path
        return f"a protocol cannot be built as before ({type(exc).__name__}: {exc})"
    for name in _STATE:
        if not hasattr(protocol, name):
            return f"HttpToolsProtocol().{name}"
    for name in _PARSER:
        if not callable(getattr(protocol.parser, name, None)):
            return f"the parser's {name}"
    if not hasattr(protocol.server_state, "default_headers"):
        return "ServerState.default_headers"
    return None


class StandInTransport:
    """What the protocol asks of a socket transport, answered as a healthy one would; keeps the last write. The
    start-up probe makes its connection on one, and benchmarks/bench_path.py drives whole requests through one."""

    def __init__(self) -> None:
        self.last = b""

    def write(self, data: bytes) -> None:
        self.last = data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def protocol_for(
    dataplane: DataPlane, *, plain: bool = False, limits: ReadLimits | None = None, direct: bool = True
) -> type[HttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to this data plane: the direct path, or,
    when asked (`plain`) or when this uvicorn lacks an internal it relies on, uvicorn's own protocol, which serves
    everything through the ASGI app (correct, slower). `direct=False` keeps the read limits but sends every request
    through the ASGI app (the admin listener: no inference there)."""
    if not plain:
        missing = internals_missing()
        if missing is None:
            limits = limits or ReadLimits()
            return type(
                "BoundInferenceProtocol",
                (InferenceProtocol,),
                {
                    "dataplane": dataplane, "head": _Head(), "targets": _Targets() if direct else _NoTargets(),
                    "sweeper": Sweeper(limits),
                    "limits": limits,
                },
            )  # fmt: skip
        logger.warning(
            "uvicorn %s lacks %s, which the direct inference path relies on: serving every request through ASGI",
            uvicorn_version, missing,
        )  # fmt: skip
    return HttpToolsProtocol
