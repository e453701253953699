"""The request-path sampler: Bernoulli per row, bounded buffer, drops counted, never raises."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.drift.sampler import DriftKey, DriftSampler

KEY = DriftKey("fraud", "1")


def _request(rows: int) -> tuple[dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[Any]]]:
    x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    return {"input": x}, {"label": np.arange(rows, dtype=np.int64), "scalar": np.array(1.0)}


def test_unregistered_key_is_ignored() -> None:
    sampler = DriftSampler(10, rng=random.Random(0))
    sampler.offer(KEY, *_request(5))
    assert sampler.depth == 0 and sampler.counts(KEY) is None


def test_rate_one_takes_every_row_with_its_outputs() -> None:
    sampler = DriftSampler(10, rng=random.Random(0))
    sampler.configure(KEY, 1.0)
    sampler.offer(KEY, *_request(4))
    [(key, inputs, outputs, rows)] = sampler.drain(10)
    assert key == KEY and rows == 4
    assert inputs["input"].shape == (4, 3)
    assert outputs["label"].tolist() == [0, 1, 2, 3]
    assert "scalar" not in outputs  # no batch dimension: not a per-row output


def test_sampled_row_count_is_binomial() -> None:
    # 20,000 requests of 1-9 rows (100,000 rows) at rate 0.05: taken ~ Binomial(100000, 0.05), mean 5000, sd 68.9.
    # A 5-sd band fails with probability 6e-7.
    sampler = DriftSampler(1_000_000, rng=random.Random(42))
    sampler.configure(KEY, 0.05)
    sizes = [1 + i % 9 for i in range(20_000)]
    for rows in sizes:
        sampler.offer(KEY, *_request(rows))
    counts = sampler.counts(KEY)
    assert counts is not None
    total = sum(sizes)
    sd = math.sqrt(total * 0.05 * 0.95)
    assert abs(counts.taken - total * 0.05) < 5 * sd
    assert counts.dropped == 0
    assert sum(s[3] for s in sampler.drain(1_000_000)) == counts.taken


class _Untouchable(Mapping[str, npt.NDArray[Any]]):
    """Outputs that fail if the sampler reads them: when the buffer is full it must not copy anything."""

    def __getitem__(self, key: str) -> npt.NDArray[Any]:
        raise AssertionError("read")

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("iterated")

    def __len__(self) -> int:
        raise AssertionError("sized")


def test_full_buffer_drops_and_counts_without_copying() -> None:
    sampler = DriftSampler(3, rng=random.Random(0))
    sampler.configure(KEY, 1.0)
    for _ in range(3):
        sampler.offer(KEY, *_request(2))
    inputs, _ = _request(2)
    for _ in range(5):
        sampler.offer(KEY, inputs, _Untouchable())
    counts = sampler.counts(KEY)
    assert sampler.depth == 3
    assert counts is not None and (counts.taken, counts.dropped) == (16, 10)
    assert sampler.failures == 0  # the full path never touched the outputs
    sampler.drain(1)
    sampler.offer(KEY, *_request(2))
    assert sampler.depth == 3


def test_offer_never_raises_on_malformed_tensors() -> None:
    sampler = DriftSampler(10, rng=random.Random(0))
    sampler.configure(KEY, 1.0)
    sampler.offer(KEY, {"input": np.zeros((4, 2))}, {"label": np.zeros(3)})  # outputs without the batch rows
    sampler.offer(KEY, {}, {})
    sampler.offer(KEY, {"input": np.zeros((2, 2)), "bad": np.zeros((5, 2))}, {})  # inconsistent batch
    assert sampler.failures == 1
    assert sampler.depth == 1  # the label-less one, minus the junk output


def test_reconfigure_keeps_counts_and_remove_stops_sampling() -> None:
    sampler = DriftSampler(10, rng=random.Random(0))
    sampler.configure(KEY, 1.0)
    sampler.offer(KEY, *_request(2))
    sampler.configure(KEY, 0.5)
    counts = sampler.counts(KEY)
    assert counts is not None and counts.taken == 2
    sampler.remove(KEY)
    sampler.offer(KEY, *_request(2))
    assert sampler.depth == 1


@pytest.mark.parametrize("rate", [0.0, 1.5])
def test_bad_rate_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        DriftSampler(10, rng=random.Random(0)).configure(KEY, rate)
