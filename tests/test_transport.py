"""The direct inference path in the HTTP transport: keep-alive, pipelining order, HTTP/1.0, 100-continue, limits."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import models
import orjson
import pytest
from server import Server, gateway

BODY = orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]})


def infer_request(
    body: bytes = BODY, *, version: str = "1.1", extra: str = "", path: str = "/v2/models/affine/infer"
) -> bytes:
    head = f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


@pytest.fixture(scope="module", params=["direct", "plain"])
def served(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Server]:
    """Every test of this module runs on both transports: the direct path, and uvicorn's own (the fallback when the
    installed uvicorn lacks an internal the direct path needs), which must answer the same."""
    root = tmp_path_factory.mktemp("t")
    models.affine_repository(root / "repo", {1: 2.0, 2: 3.0})
    config = root / "gateway.yaml"
    config.write_text(
        f"model_repository: {root / 'repo'}\nserver: {{max_body_bytes: 4096}}\n"
        "routes:\n  affine:\n    versions: {a: 1, b: 2}\n    split: {weights: {b: 1}}\n"
    )
    with gateway(["--config", str(config), "--transport", request.param], root / "log") as server:
        yield server


def read_responses(sock: socket.socket, count: int) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    data = b""
    out: list[tuple[bytes, dict[bytes, bytes], bytes]] = []
    while len(out) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(out)} responses")
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
        length = int(headers[b"content-length"])
        while len(data) < length:
            data += sock.recv(65536)
        out.append((status, headers, data[:length]))
        data = data[length:]
    return out


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=20)


def test_keep_alive_serves_many_requests_on_one_connection(served: Server) -> None:
    with connect(served) as sock:
        for _ in range(50):
            sock.sendall(infer_request())
            [(status, headers, body)] = read_responses(sock, 1)
            assert status == b"HTTP/1.1 200 OK" and orjson.loads(body)["model_version"] == "2"
            assert headers[b"x-gateway-route"].startswith(b"affine/b;")


def test_pipelined_requests_are_answered_in_order(served: Server) -> None:
    pinned = infer_request(path="/v2/models/affine/versions/a/infer")
    health = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(served) as sock:
        sock.sendall(infer_request() + health + pinned + infer_request(b"{bad") + infer_request())
        answers = read_responses(sock, 5)
    assert [a[0].split(b" ")[1] for a in answers] == [b"200", b"200", b"200", b"400", b"200"]
    assert orjson.loads(answers[0][2])["model_version"] == "2"
    assert orjson.loads(answers[1][2]) == {"live": True}
    assert orjson.loads(answers[2][2])["model_version"] == "1"
    assert "not valid JSON" in orjson.loads(answers[3][2])["error"]


def test_http_1_0_gets_its_answer_and_a_close(served: Server) -> None:
    with connect(served) as sock:
        sock.sendall(infer_request(version="1.0"))
        [(status, headers, _)] = read_responses(sock, 1)
        assert status.endswith(b"200 OK") and headers[b"connection"] == b"close"
        assert sock.recv(10) == b""


def test_expect_100_continue(served: Server) -> None:
    with connect(served) as sock:
        sock.sendall(
            infer_request(b"", extra="Expect: 100-continue\r\n").replace(
                b"Content-Length: 0", f"Content-Length: {len(BODY)}".encode()
            )
        )
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(BODY)
        [(status, _, _)] = read_responses(sock, 1)
        assert status.endswith(b"200 OK")


def test_body_over_the_limit_is_413_and_the_connection_goes_on(served: Server) -> None:
    big = orjson.dumps({"inputs": [{"name": "X", "shape": [1000, 4], "datatype": "FP32", "data": [1.0] * 4000}]})
    with connect(served) as sock:
        sock.sendall(infer_request(big) + infer_request())
        (first, _, body), (second, _, _) = read_responses(sock, 2)
        assert first.endswith(b"413 Request Entity Too Large") and b"over the limit of 4096" in body
        assert second.endswith(b"200 OK")


@pytest.mark.parametrize("batching", [False, True])
def test_answers_that_wait_on_a_thread_or_a_batch_keep_their_order(tmp_path: Path, batching: bool) -> None:
    models.affine_repository(tmp_path / "repo", {1: 2.0})
    config = tmp_path / "gateway.yaml"
    extra = "    batching: {max_batch_size: 4, max_queue_delay_us: 200}\n" if batching else ""
    config.write_text(f"model_repository: {tmp_path / 'repo'}\nroutes:\n  affine:\n    versions: {{a: 1}}\n{extra}")
    args = ["--config", str(config), "--inline-below-us", "0"]
    with gateway(args, tmp_path / "log") as server, connect(server) as sock:
        rows = [[float(i)] * 4 for i in range(20)]
        bodies = [
            orjson.dumps({"id": str(i), "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [r]}]})
            for i, r in enumerate(rows)
        ]
        sock.sendall(b"".join(infer_request(b) for b in bodies))  # pipelined: answers must come back in order
        answers = read_responses(sock, len(bodies))
        for i, (status, _, body) in enumerate(answers):
            out = orjson.loads(body)
            assert status.endswith(b"200 OK") and out["id"] == str(i)
            assert out["outputs"][0]["data"] == [i * 2.0 + 1] * 4
        for i in range(20):  # and one at a time on the same connection
            sock.sendall(infer_request(bodies[i]))
            [(status, _, body)] = read_responses(sock, 1)
            assert orjson.loads(body)["id"] == str(i)


def test_request_targets_are_parsed_once_and_the_memory_stays_bounded() -> None:
    from gateway.transport import _Targets

    targets = _Targets()
    assert targets.of(b"/v2/models/m/infer?x=1") == ("m", None)
    assert targets.of(b"/v2/models/m/versions/canary/infer") == ("m", "canary")
    assert targets.of(b"/v2/models/m%2Fx/infer") is None  # percent-encoded: uvicorn's path decodes it
    assert targets.of(b"/v2/models/m/ready") is None
    for i in range(3 * _Targets.LIMIT):
        assert targets.of(f"/v2/models/m{i}/infer".encode()) == (f"m{i}", None)
        assert len(targets._known) <= _Targets.LIMIT
    targets._known.clear()
    assert targets.of(b"/v2/models/m/infer?" + b"q" * 1_000_000) == ("m", None)  # kept by path, without the query
    assert targets.of(b"/v2/models/" + b"m" * 1_000 + b"/infer") == ("m" * 1_000, None)  # too long to keep
    assert targets.of(b"/elsewhere") is None  # not an inference path: not kept
    assert list(targets._known) == [b"/v2/models/m/infer"]


def test_this_uvicorn_has_every_internal_the_direct_path_needs() -> None:
    from gateway.transport import internals_missing

    assert internals_missing() is None


def test_a_uvicorn_without_them_falls_back_to_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from gateway import transport

    said: list[str] = []
    # Recorded at the logger itself: a uvicorn config loaded by another test may have disabled existing loggers.
    monkeypatch.setattr(transport.logger, "warning", lambda message, *args: said.append(message % args))
    monkeypatch.setattr(transport, "_STATE", (*transport._STATE, "a_future_internal"))
    assert transport.internals_missing() == "HttpToolsProtocol().a_future_internal"
    protocol = transport.protocol_for(None)  # type: ignore[arg-type]  # never bound on the fallback
    assert protocol is HttpToolsProtocol
    assert len(said) == 1 and "serving every request through ASGI" in said[0]
