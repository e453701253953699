"""A remote endpoint without a network (httpx.MockTransport): the pool, the timeout, the retry rule (only a failed
connect is sent again), faults as gateway errors, the ejection it feeds, and the answer fixed for the client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import ProtocolError, RemoteError, RemoteTimeoutError, RemoteUnavailableError
from gateway.remote.answer import MalformedAnswerError, fix, leading
from gateway.remote.connections import LeanTransport
from gateway.remote.endpoint import Endpoint
from gateway.remote.metrics import RemoteMetrics
from gateway.remote.registry import EndpointRegistry
from gateway.remote.settings import EjectionSettings, EndpointSettings, PoolSettings

URL = "http://remote:8000"
ANSWER = orjson.dumps({"model_name": "m", "model_version": "3", "outputs": [{"name": "y", "datatype": "FP32",
                       "shape": [1], "data": [1.5]}]})  # fmt: skip


Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


def endpoint(handler: Handler, *, failures: int = 3) -> tuple[Endpoint, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        result = handler(request)
        return result if isinstance(result, httpx.Response) else await result

    settings = EndpointSettings(ejection=EjectionSettings(failures, 60.0, 60.0))
    made = Endpoint(URL, settings, RemoteMetrics(CollectorRegistry()), clock=lambda: 0.0,
                    transport=httpx.MockTransport(record))  # fmt: skip
    return made, seen


def send(made: Endpoint, timeout: float = 1.0) -> bytes:
    async def go() -> bytes:
        try:
            return await made.send("/v2/models/m/infer", b"{}", {}, timeout, min(0.5, timeout), lambda r: r.content)
        finally:
            await made.aclose()

    return asyncio.run(go())


def count(made: Endpoint, family: str, key: str) -> float:
    metrics = made.metrics
    table = {"outcome": metrics.outcomes, "error": metrics.errors}[family]
    return table[key].value


def test_a_failed_connect_is_sent_once_more_and_counted() -> None:
    calls = iter([None, httpx.Response(200, content=ANSWER)])

    def handler(request: httpx.Request) -> httpx.Response:
        outcome = next(calls)
        if outcome is None:
            raise httpx.ConnectError("refused")
        return outcome

    made, seen = endpoint(handler)
    assert send(made) == ANSWER
    assert len(seen) == 2 and made.metrics.retries.value == 1 and count(made, "outcome", "success") == 1


def test_a_connect_that_fails_twice_is_unavailable_and_counts_as_one_failure() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("no route")

    made, seen = endpoint(handler)
    with pytest.raises(RemoteUnavailableError, match="remote endpoint http://remote:8000: cannot connect"):
        send(made)
    assert len(seen) == 2 and count(made, "error", "connect") == 1 and made.ejection.failures == 1


@pytest.mark.parametrize(
    ("fault", "error", "kind"),
    [
        (httpx.ReadError("reset"), RemoteError, "disconnect"),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), RemoteError, "disconnect"),
        (httpx.WriteError("broken pipe"), RemoteError, "disconnect"),
        (httpx.ReadTimeout("slow"), RemoteTimeoutError, "timeout"),
    ],
)
def test_a_request_that_may_have_reached_the_server_is_never_sent_again(
    fault: Exception, error: type[Exception], kind: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise fault

    made, seen = endpoint(handler)
    with pytest.raises(error, match="remote endpoint http://remote:8000"):
        send(made)
    assert len(seen) == 1 and made.metrics.retries.value == 0 and count(made, "error", kind) == 1


def test_the_timeout_bounds_the_whole_exchange() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, content=ANSWER)

    made, seen = endpoint(slow)
    with pytest.raises(RemoteTimeoutError, match="no answer within 0.05s"):
        send(made, timeout=0.05)
    assert len(seen) == 1 and count(made, "error", "timeout") == 1


@pytest.mark.parametrize(
    ("status", "error", "outcome"),
    [
        (400, ProtocolError, "refused"),
        (404, RemoteError, "refused"),
        (500, RemoteError, "failed"),
        (502, RemoteError, "failed"),
        (503, RemoteUnavailableError, "failed"),
        (504, RemoteTimeoutError, "failed"),
    ],
)
def test_error_statuses_become_gateway_errors_with_the_remote_message(
    status: int, error: type[Exception], outcome: str
) -> None:
    made, seen = endpoint(lambda r: httpx.Response(status, json={"error": "model said no"}))
    with pytest.raises(error, match=f"remote endpoint http://remote:8000 answered {status}: model said no"):
        send(made)
    assert len(seen) == 1 and count(made, "outcome", outcome) == 1
    assert made.ejection.failures == (1 if outcome == "failed" else 0)  # a 4xx is the request's fault


def test_failures_in_a_row_eject_the_endpoint_and_it_refuses_without_sending() -> None:
    made, seen = endpoint(lambda r: httpx.Response(500, text="boom"), failures=2)

    async def go() -> list[str]:
        out = []
        for _ in range(4):
            try:
                await made.send("/v2/models/m/infer", b"{}", {}, 1.0, 0.5, lambda r: r.content)
            except (RemoteError, RemoteUnavailableError) as exc:
                out.append(type(exc).__name__)
        await made.aclose()
        return out

    assert asyncio.run(go()) == ["RemoteError", "RemoteError", "RemoteUnavailableError", "RemoteUnavailableError"]
    assert len(seen) == 2 and made.refusing() and made.metrics.ejections.value == 1
    assert count(made, "outcome", "ejected") == 2


def test_an_answer_that_is_not_v2_is_a_malformed_failure() -> None:
    made, _ = endpoint(lambda r: httpx.Response(200, text="<html>proxy error</html>"))

    def read(response: httpx.Response) -> tuple[bytes, int | None]:
        return fix(response, leading("route", "gpu"), "route", "gpu", "remote endpoint x")

    async def go() -> None:
        try:
            await made.send("/v2/models/m/infer", b"{}", {}, 1.0, 0.5, read)
        finally:
            await made.aclose()

    with pytest.raises(MalformedAnswerError, match="the answer is not JSON"):
        asyncio.run(go())
    assert count(made, "error", "malformed") == 1


def test_the_answer_keeps_its_bytes_but_names_the_route_and_version() -> None:
    lead = leading("fraud", "gpu")
    body, head = fix(httpx.Response(200, content=ANSWER), lead, "fraud", "gpu", "x")
    assert head is None and body.endswith(ANSWER[ANSWER.index(b'"outputs"') :])
    assert orjson.loads(body)["model_name"] == "fraud" and orjson.loads(body)["model_version"] == "gpu"
    # Without model_version (MLServer leaves it out when it has none), and with other fields first: parsed.
    for original in (
        b'{"model_name":"m","id":"7","outputs":[]}',
        b'{"id":"7","model_name":"m","model_version":"1","outputs":[]}',
    ):
        fixed = orjson.loads(fix(httpx.Response(200, content=original), lead, "fraud", "gpu", "x")[0])
        assert fixed == {"model_name": "fraud", "model_version": "gpu", "id": "7", "outputs": []}


def test_a_binary_answer_gets_its_head_rewritten_and_its_length_header_follows() -> None:
    head = b'{"model_name":"m","model_version":"3","outputs":[{"name":"y","datatype":"FP32","shape":[1],' \
           b'"parameters":{"binary_data_size":4}}]}'  # fmt: skip
    raw = b"\x00\x00\xc0\x3f"
    response = httpx.Response(200, content=head + raw, headers={"inference-header-content-length": str(len(head))})
    body, length = fix(response, leading("fraud", "gpu"), "fraud", "gpu", "x")
    assert length is not None and body[length:] == raw
    assert orjson.loads(body[:length])["model_name"] == "fraud"


def test_one_pool_per_endpoint_with_its_limits_kept_across_reloads() -> None:
    registry = EndpointRegistry(CollectorRegistry())
    settings = EndpointSettings(pool=PoolSettings(max_connections=7, max_keepalive=3, keepalive_expiry=2.0))
    first = registry.endpoint(URL, settings)
    assert registry.endpoint(URL, settings) is first  # a second version, or a reload, on the same endpoint
    pool = first._client._transport
    assert isinstance(pool, LeanTransport)
    assert (pool._max, pool._keep, pool._expiry) == (7, 3, 2.0)
    other = registry.endpoint(URL, EndpointSettings())
    assert other is not first and registry.endpoints() == (other,)  # new settings: a new pool replaces it
    registry.retain([])
    assert registry.endpoints() == ()
    asyncio.run(registry.aclose())
