"""Just enough HTTP/1.1 for a load generator: one pre-encoded request, and an incremental response framer.

The framer only finds where each response ends (Content-Length or chunked framing) and its status code; it never
builds header dicts or copies bodies it does not need, which is what lets one Python core drive tens of thousands of
requests a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


class WireError(Exception):
    """The server sent something this framer cannot delimit (no length, bad chunk size, not HTTP)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only plain http:// URLs are supported, got {url!r}")
        if parts.hostname is None:
            raise ValueError(f"no host in {url!r}")
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        return cls(parts.hostname, parts.port or 80, path)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def encode_request(
    endpoint: Endpoint,
    body: bytes,
    *,
    method: str = "POST",
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """The full request (head and body) as one bytes object, written as-is for every send."""
    lines = [f"{method} {endpoint.path} HTTP/1.1", f"Host: {endpoint.host}:{endpoint.port}"]
    if body or method == "POST":
        lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_HEADERS_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"\r\ncontent-length:"
_CHUNKED = b"\r\ntransfer-encoding: chunked"
_CLOSE = b"\r\nconnection: close"
# States of the framer.
_HEAD = 0
_BODY = 1
_CHUNK_SIZE = 2
_CHUNK_DATA = 3
_TRAILERS = 4


class ResponseFramer:
    """Feed it bytes as they arrive; it returns the status codes of the responses those bytes completed.

    `close_requested` turns true once a completed response carried `Connection: close`.
    """

    __slots__ = ("_buf", "_need", "_state", "_status", "close_requested")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = _HEAD
        self._need = 0
        self._status = 0
        self.close_requested = False

    @property
    def idle(self) -> bool:
        """True when no partial response is buffered."""
        return self._state == _HEAD and not self._buf

    def feed(self, data: bytes) -> list[int]:
        buf = self._buf
        buf += data
        done: list[int] = []
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(_HEADERS_END)
                if end < 0:
                    return done
                self._start(bytes(buf[:end]).lower())
                del buf[: end + 4]
            elif state == _BODY:
                if len(buf) < self._need:
                    return done
                del buf[: self._need]
                done.append(self._status)
                self._state = _HEAD
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return done
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError as exc:
                    raise WireError(f"bad chunk size {size_text!r}") from exc
                del buf[: end + 2]
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._need = size + 2  # chunk data plus its CRLF
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                if len(buf) < self._need:
                    return done
                del buf[: self._need]
                self._state = _CHUNK_SIZE
            else:  # _TRAILERS: zero or more header lines, then an empty line
                end = buf.find(b"\r\n")
                if end < 0:
                    return done
                del buf[: end + 2]
                if end == 0:
                    done.append(self._status)
                    self._state = _HEAD

    def _start(self, head: bytes) -> None:
        """Read the status and framing of one response head (lower-cased, without the final blank line)."""
        if not head.startswith(b"http/1."):
            raise WireError(f"not an HTTP/1.x response: {head[:40]!r}")
        try:
            self._status = int(head[9:12])
        except ValueError as exc:
            raise WireError(f"bad status line {head[:40]!r}") from exc
        if _CLOSE in head:
            self.close_requested = True
        start = head.find(_CONTENT_LENGTH)
        if start >= 0:
            start += len(_CONTENT_LENGTH)
            stop = head.find(b"\r\n", start)
            self._need = int(head[start:] if stop < 0 else head[start:stop])
            self._state = _BODY
        elif _CHUNKED in head:
            self._state = _CHUNK_SIZE
        elif self._status in (204, 304):
            self._need = 0
            self._state = _BODY
        else:
            raise WireError("response has neither Content-Length nor chunked framing")
