"""A remote version's side channels: the draws are made without decoding, and only what a channel took is decoded
and handed to it, as arrays a local request would give it; a copy that cannot be decoded is counted, not raised."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from gateway.dataplane import Channels, DecisionRecord, Served
from gateway.drift.sampler import DriftKey, DriftSampler
from gateway.remote.metrics import RemoteMetrics
from gateway.remote.sampling import Copy, deliver, draw
from gateway.tally import Count
from gateway.tap import Tap

KEY = DriftKey("m", "gpu")
REQUEST = orjson.dumps(
    {"id": "r-1", "inputs": [{"name": "X", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
)
ANSWER = orjson.dumps({"model_name": "m", "model_version": "gpu", "id": "r-1",
                       "outputs": [{"name": "Y", "shape": [2], "datatype": "INT64", "data": [0, 1]}]})  # fmt: skip


class Ledger:
    def __init__(self) -> None:
        self.seen: list[tuple[str | None, dict[str, Any]]] = []

    def offer(self, request_id: str | None, outputs: dict[str, Any]) -> None:
        self.seen.append((request_id, outputs))


def setup(tap_rate: float) -> tuple[Served, DecisionRecord, Channels, Tap, Ledger, DriftSampler]:
    sampler = DriftSampler(capacity=100, rng=random.Random(1))
    sampler.configure(KEY, 1.0)
    tap = Tap(tap_rate, random=random.Random(2).random)
    ledger = Ledger()
    served = cast(Served, SimpleNamespace(drift_key=KEY, label="gpu"))
    record = DecisionRecord(Count(), b"m/gpu", None, tap, cast(Any, ledger))
    return served, record, Channels(sampler, None), tap, ledger, sampler


def test_each_channel_that_took_the_request_gets_the_decoded_arrays() -> None:
    served, record, channels, tap, ledger, sampler = setup(1.0)
    draws = draw(served, record, channels)
    assert draws is not None and draws.drift and draws.tap and draws.ledger and not draws.log and not draws.shadow
    metrics = RemoteMetrics(CollectorRegistry()).bind("http://r", lambda: 0.0, lambda: 1.0)
    deliver(Copy(REQUEST, None, ANSWER, None, 0.002, 0.001), draws, served, "m", "pin", record, channels, metrics)
    (taken,) = sampler.drain(10)
    assert taken[0] == KEY and taken[3] == 2 and np.array_equal(taken[1]["X"], [[1, 2], [3, 4]])
    ((seconds, outputs),) = tap.drain()
    assert seconds == 0.002 and np.array_equal(outputs["Y"], [0, 1])
    assert ledger.seen[0][0] == "r-1" and metrics.copies["decoded"].value == 1


def test_nothing_is_kept_when_no_channel_takes_the_request() -> None:
    served, record, channels, _, _, sampler = setup(0.001)
    sampler.remove(KEY)
    plain = DecisionRecord(Count(), b"m/gpu")
    assert draw(served, plain, channels) is None


def test_a_copy_that_cannot_be_decoded_is_counted_and_dropped() -> None:
    served, record, channels, tap, _, _ = setup(1.0)
    draws = draw(served, record, channels)
    assert draws is not None
    metrics = RemoteMetrics(CollectorRegistry()).bind("http://r", lambda: 0.0, lambda: 1.0)
    deliver(Copy(REQUEST, None, b"not json", None, 0.0, 0.0), draws, served, "m", "pin", record, channels, metrics)
    assert metrics.copies["failed"].value == 1 and tap.drain() == []
