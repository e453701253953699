"""A remote version: the request path that forwards bytes, and the decoded one for shadow copies and validation.

`forward` is what the data plane calls for a client's request: the body goes to the endpoint as it came (JSON, or
Triton's binary form with its Inference-Header-Content-Length), the answer comes back with only its model name and
version fixed (gateway/remote/answer.py), and the side channels decode a copy only of what they sample
(gateway/remote/sampling.py). `infer` and `run` take arrays (a shadow copy of another version's request, a rollout's
validation rows) and encode them as V2 JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from time import perf_counter
from typing import Any

import httpx
import numpy.typing as npt

from gateway.admission import NO_HEADERS, request_timeout
from gateway.backends import Arrays, Execution
from gateway.dataplane import Channels, DecisionRecord, Reply, Served
from gateway.errors import DeadlineExceededError, ModelRejectedError, ProtocolError
from gateway.protocol import decode_request, decode_response, encode_request, parse_header_length
from gateway.remote.answer import HEADER_LENGTH, MalformedAnswerError, error_of, fix, leading
from gateway.remote.endpoint import Endpoint
from gateway.remote.metadata import RemoteMetadata
from gateway.remote.sampling import Copy, draw, schedule
from gateway.remote.settings import RemoteSpec
from gateway.routing import Decision
from gateway.signature import Signature

_JSON = {"content-type": "application/json"}


class RemoteBackend:
    """One remote version (a `Backend`, and the data plane's `Remote`)."""

    def __init__(self, spec: RemoteSpec, endpoint: Endpoint, metadata: RemoteMetadata, label: str) -> None:
        self._spec = spec
        self._endpoint = endpoint
        self._signature = metadata.signature
        self._label = label
        self._path = spec.infer_path
        self._timeout = spec.timeout
        self._connect = spec.connect_timeout
        self._where = f"remote endpoint {endpoint.url}"
        self._leads: dict[str, bytes] = {}  # route -> the answer's fixed leading fields, made once per route
        self.platform = metadata.platform
        self.fallback = spec.fallback == "baseline"
        self.digest = _digest(spec, metadata)

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    @property
    def shedding(self) -> bool:
        """The endpoint is ejected: the data plane refuses (or diverts) before anything is sent."""
        return self._endpoint.refusing()

    def overloaded(self) -> Exception:
        return self._endpoint.refusal()

    def available(self) -> bool:
        return self._endpoint.available()

    def diverted(self) -> None:
        self._endpoint.metrics.fallbacks.value += 1

    async def forward(
        self,
        served: Served,
        route: str,
        decision: Decision,
        record: DecisionRecord,
        headers: Mapping[str, str],
        body: bytes,
        start: float,
        channels: Channels,
    ) -> Reply:
        if asyncio.current_task() is None:
            # The transport runs a request on its own callback until it first waits; the pool's locks and the
            # timeout need a task, so wait once and let the transport hand the request to one.
            await asyncio.sleep(0)
        header = headers.get(HEADER_LENGTH)
        request_head = None if header is None else parse_header_length(header, len(body))
        sent_headers = _JSON if header is None else {"content-type": "application/octet-stream", HEADER_LENGTH: header}
        timeout = self._deadline(headers, start)
        lead = self._leads.get(route)
        if lead is None:
            lead = self._leads[route] = leading(route, self._label)
        label, where = self._label, self._where

        def read(response: httpx.Response) -> tuple[bytes, int | None]:
            return fix(response, lead, route, label, where)

        sent = perf_counter()
        try:
            answer, head_length = await self._endpoint.send(
                self._path, body, sent_headers, timeout, min(self._connect, timeout), read
            )
        except ProtocolError as exc:
            raise self._judged(exc, body, request_head) from exc
        now = perf_counter()
        round_trip, elapsed = now - sent, now - start
        served.metrics.compute.observe(round_trip)
        draws = draw(served, record, channels)
        if draws is not None:
            copy = Copy(body, request_head, answer, head_length, elapsed, round_trip)
            schedule(copy, draws, served, route, decision.reason, record, channels, self._endpoint.metrics)
        return Reply(answer, head_length, record.header)

    async def infer(
        self, inputs: Arrays, headers: Mapping[str, str] = NO_HEADERS, start: float | None = None
    ) -> Execution:
        """Run decoded `inputs` on the remote model (a shadow copy): V2 JSON there and back."""
        if asyncio.current_task() is None:
            await asyncio.sleep(0)
        sent = perf_counter()
        outputs = await self._endpoint.send(
            self._path, encode_request(inputs), _JSON, self._timeout, self._connect, self._outputs
        )
        return Execution(outputs, perf_counter() - sent)

    def run(self, inputs: Arrays) -> Execution:
        """Blocking `infer` for offline work (validation, in a worker thread): not live traffic, so no retry and no
        say in the endpoint's ejection."""
        sent = perf_counter()
        response = self._endpoint.post_blocking(self._path, encode_request(inputs), self._timeout)
        if not 200 <= response.status_code < 300:
            raise error_of(response, self._where)
        return Execution(self._outputs(response), perf_counter() - sent)

    def close(self) -> None:
        """Nothing of its own: the endpoint's pool belongs to the registry, shared by its versions."""

    def _outputs(self, response: httpx.Response) -> dict[str, npt.NDArray[Any]]:
        header = response.headers.get(HEADER_LENGTH)
        try:
            length = None if header is None else parse_header_length(header, len(response.content))
            decoded = decode_response(response.content, length)
        except ProtocolError as exc:
            raise MalformedAnswerError(f"{self._where}: {exc}") from None
        return {t.name: t.array for t in decoded.outputs}

    def _deadline(self, headers: Mapping[str, str], start: float) -> float:
        """The version's timeout, or what is left of the request's own deadline (x-request-timeout-ms) if sooner."""
        timeout = request_timeout(headers, self._timeout)
        if timeout >= self._timeout:
            return self._timeout
        left = timeout - (perf_counter() - start)
        if left <= 0:
            raise DeadlineExceededError("the request's deadline passed before it was sent to its remote version")
        return left

    def _judged(self, refusal: ProtocolError, body: bytes, request_head: int | None) -> ProtocolError:
        """A request the remote refused (400): the client's fault when the gateway's own codec and the version's
        signature refuse it too (that message, which names the field); else the model refused a well-formed request,
        which a rollout counts against the version (as a local model's refusal is)."""
        if type(refusal) is not ProtocolError:
            return refusal
        try:
            request = decode_request(body, request_head)
            self._signature.check(request)
        except ProtocolError as exc:
            return exc
        return ModelRejectedError(str(refusal))


def _digest(spec: RemoteSpec, metadata: RemoteMetadata) -> str:
    """What a rollout is about when its version is remote: where it is and what it says it is."""
    text = f"{spec.describe()}|{metadata.platform}|{metadata.signature}".encode()
    return hashlib.sha256(text).hexdigest()
