"""Webhook sender: POST a JSON body to a URL (a drift verdict turned on or off, a rollout changed phase).

`notify` only appends to a bounded queue (thread-safe, never blocks, counts what it drops when full); `send_pending`
delivers what is queued with bounded retries and backoff, on the event loop, so neither the request path nor the
drift worker ever waits on a slow receiver.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import orjson

logger = logging.getLogger(__name__)


class Webhook:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        max_pending: int = 100,
        attempts: int = 3,
        backoff: float = 0.5,
        timeout: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._client = client
        self._pending: deque[tuple[str, bytes]] = deque()
        self._max_pending = max_pending
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout
        self._sleep = sleep
        self.sent = 0
        self.failed = 0  # gave up after every attempt
        self.dropped = 0  # queue full

    def notify(self, url: str, payload: dict[str, Any]) -> None:
        """Queue one notification; never blocks, never raises."""
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        self._pending.append((url, orjson.dumps(payload)))

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def send_pending(self) -> int:
        """Deliver every queued notification, in order; return how many were delivered (2xx)."""
        delivered = 0
        while self._pending:
            url, body = self._pending.popleft()
            if await self._deliver(url, body):
                delivered += 1
        return delivered

    async def run(self, interval: float) -> None:
        while True:
            await self.send_pending()
            await anyio.sleep(interval)

    async def _deliver(self, url: str, body: bytes) -> bool:
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                response = await self._client.post(
                    url, content=body, headers={"content-type": "application/json"}, timeout=self._timeout
                )
            except Exception as exc:  # any failure (transport, a URL httpx rejects) must not stop the sender
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    self.sent += 1
                    return True
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # the receiver rejects the body itself; retrying will not help
            if attempt < self._attempts:
                await self._sleep(delay)
                delay *= 2
        logger.warning("webhook %s: giving up: %s", url, problem)
        self.failed += 1
        return False
