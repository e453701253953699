"""A remote version's side channels: each decides before anything is decoded, and only what they took is decoded,
after the client's answer.

A forwarded request is never decoded for its own sake. Each side channel the request meets makes its own draw
inline, as on the local path (the drift sampler's and the log's skip counters, the shadow's one random number, the
rollout tap's skip counter; the experiment ledger keeps every request with an id). Only when one of them takes the
request is a `Copy` kept, the bytes already in hand, and decoded after the answer is written (`loop.call_soon`,
which runs once the request's own callback has written its answer): then each channel that took it gets the arrays
a local request would have given it. A copy that cannot be decoded (a request the remote accepted but the gateway's
codec refuses, or an answer that is not strictly V2) is counted and dropped, never raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy.typing as npt

from gateway.dataplane import Channels, DecisionRecord, Served
from gateway.errors import GatewayError
from gateway.predlog import Datatypes
from gateway.protocol import decode_request, decode_response
from gateway.remote.metrics import EndpointMetrics

logger = logging.getLogger(__name__)


class Draws(NamedTuple):
    """Which side channels took one forwarded request."""

    drift: bool
    log: bool
    shadow: bool
    tap: bool
    ledger: bool


def draw(served: Served, record: DecisionRecord, channels: Channels) -> Draws | None:
    """Each channel's draw for one answered request; None when no channel took it (what the common request
    costs: a few skip counters)."""
    drift = channels.sampler.due(served.drift_key)
    predlog = channels.predlog
    log = predlog is not None and predlog.sampled()
    lane = record.shadow
    shadow = lane is not None and lane.chosen()
    tap = record.tap
    tapped = tap is not None and tap.due()
    ledger = record.ledger is not None
    if drift or log or shadow or tapped or ledger:
        return Draws(drift, log, shadow, tapped, ledger)
    return None


class Copy(NamedTuple):
    """One forwarded request and its answer, as the bytes the gateway already holds."""

    request: bytes
    request_head: int | None  # Inference-Header-Content-Length of the request (binary tensors follow the head)
    answer: bytes
    answer_head: int | None
    elapsed: float  # seconds from the request's body received to its answer ready
    round_trip: float  # seconds of the remote exchange: the version's "model time"


def schedule(
    copy: Copy,
    draws: Draws,
    served: Served,
    route: str,
    reason: str,
    record: DecisionRecord,
    channels: Channels,
    metrics: EndpointMetrics,
) -> None:
    """Deliver `copy` once the running callback (which writes the answer) is done; never raises."""
    try:
        asyncio.get_running_loop().call_soon(deliver, copy, draws, served, route, reason, record, channels, metrics)
    except RuntimeError:  # no running loop: deliver now rather than lose it
        deliver(copy, draws, served, route, reason, record, channels, metrics)


def deliver(
    copy: Copy,
    draws: Draws,
    served: Served,
    route: str,
    reason: str,
    record: DecisionRecord,
    channels: Channels,
    metrics: EndpointMetrics,
) -> None:
    """Decode `copy` and hand it to each channel that took it. Never raises."""
    try:
        request = decode_request(copy.request, copy.request_head)
        answer = decode_response(copy.answer, copy.answer_head)
    except GatewayError as exc:
        metrics.copies["failed"].value += 1
        logger.debug("a sampled request of %s/%s cannot be decoded, dropped: %s", route, served.label, exc)
        return
    metrics.copies["decoded"].value += 1
    inputs: dict[str, npt.NDArray[Any]] = {t.name: t.array for t in request.inputs}
    outputs: dict[str, npt.NDArray[Any]] = {t.name: t.array for t in answer.outputs}
    try:
        if draws.drift:
            channels.sampler.take(served.drift_key, inputs, outputs)
        if draws.log and channels.predlog is not None:
            datatypes = Datatypes(_datatypes(request.inputs), _datatypes(answer.outputs))
            channels.predlog.record(
                request.id, route, served.label, reason, inputs, outputs, tuple(outputs), datatypes,
                copy.elapsed * 1e3,
            )  # fmt: skip
        if draws.shadow and record.shadow is not None:
            record.shadow.start(inputs, outputs, copy.round_trip, copy.elapsed)
        if draws.tap and record.tap is not None:
            record.tap.keep(copy.elapsed, outputs)
        if draws.ledger and record.ledger is not None:
            record.ledger.offer(request.id, outputs)
    except Exception:  # each channel never raises; should one, the request is long answered: say so, go on
        logger.exception("a side channel failed on a sampled request of %s/%s", route, served.label)


def _datatypes(tensors: Any) -> Mapping[str, str]:
    return {t.name: t.datatype for t in tensors}
