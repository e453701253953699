"""Lock-free counters and histograms for the request path, exported through a custom Prometheus collector.

prometheus_client takes a lock on every `inc` and `observe` (0.4-0.9 us each, eight of them per request). The request
path runs on the one event-loop thread, so plain attribute arithmetic is safe there; a child that other threads also
write takes its own lock (`threaded=True`). Values are read only at scrape time.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry


class Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Spread:
    """A histogram child: `counts[i]` holds observations <= bounds[i] (and above the bound before); the last is +Inf.

    Lock-free until `share()` is called for a child that worker threads also write (a batch's compute time); the
    lock is added in place, so the child and its counts survive the change.
    """

    __slots__ = ("_lock", "bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self._lock: threading.Lock | None = None

    def observe(self, value: float) -> None:
        lock = self._lock
        if lock is None:
            self.counts[bisect_left(self.bounds, value)] += 1
            self.sum += value
            return
        with lock:
            self.counts[bisect_left(self.bounds, value)] += 1
            self.sum += value

    def share(self) -> Spread:
        if self._lock is None:
            self._lock = threading.Lock()
        return self


class CounterFamily:
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], Count] = {}

    def labels(self, *values: str) -> Count:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Count()
        return child

    def remove(self, *values: str) -> None:
        self._children.pop(values, None)

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value)
        return family


class HistogramFamily:
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Iterable[float]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self._children: dict[tuple[str, ...], Spread] = {}

    def labels(self, *values: str) -> Spread:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Spread(self.bounds)
        return child

    def remove(self, *values: str) -> None:
        self._children.pop(values, None)

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            counts, total = list(child.counts), child.sum
            cumulative, buckets = 0, []
            for bound, count in zip((*child.bounds, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            family.add_metric(values, buckets, total)
        return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class Tally(Collector):
    """Registers the families on a registry; one collector so a scrape reads them in one pass."""

    def __init__(self, registry: CollectorRegistry, *families: CounterFamily | HistogramFamily) -> None:
        self._families = families
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.collect()

    def describe(self) -> Iterator[Metric]:
        return iter(())
