"""The webhook sender: a bounded queue, bounded retries with backoff, never blocking the caller."""

from __future__ import annotations

import httpx
import pytest

from gateway.webhook import Webhook

URL = "http://hooks.test/drift"


class _Receiver:
    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 0:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(status)


class _Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.mark.anyio
async def test_retries_transient_failures_with_backoff_then_delivers() -> None:
    receiver, sleeps = _Receiver(503, 0, 200), _Sleeps()
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as client:
        webhook = Webhook(client, attempts=3, backoff=0.5, sleep=sleeps)
        webhook.notify(URL, {"event": "drift_started"})
        assert await webhook.send_pending() == 1
    assert receiver.calls == 3 and sleeps.delays == [0.5, 1.0]
    assert (webhook.sent, webhook.failed) == (1, 0)


@pytest.mark.anyio
async def test_gives_up_after_the_last_attempt_and_moves_on() -> None:
    receiver, sleeps = _Receiver(500, 500, 500, 200), _Sleeps()
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as client:
        webhook = Webhook(client, attempts=3, sleep=sleeps)
        webhook.notify(URL, {"n": 1})
        webhook.notify(URL, {"n": 2})
        assert await webhook.send_pending() == 1
    assert (webhook.sent, webhook.failed, receiver.calls) == (1, 1, 4)


@pytest.mark.anyio
async def test_client_errors_are_not_retried() -> None:
    receiver, sleeps = _Receiver(400), _Sleeps()
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as client:
        webhook = Webhook(client, sleep=sleeps)
        webhook.notify(URL, {"n": 1})
        assert await webhook.send_pending() == 0
    assert receiver.calls == 1 and sleeps.delays == [] and webhook.failed == 1


@pytest.mark.anyio
async def test_a_full_queue_drops_and_counts() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(_Receiver())) as client:
        webhook = Webhook(client, max_pending=2)
        for n in range(5):
            webhook.notify(URL, {"n": n})
        assert (webhook.pending, webhook.dropped) == (2, 3)
        assert await webhook.send_pending() == 2
