"""The off-request-path side of drift: drain the sampler, bin samples into tumbling windows per model version,
evaluate each full window, apply persistence, and publish an immutable snapshot for Prometheus and `/admin/drift`.

`process_pending()` is one bounded synchronous step (tests call it; `run()` calls it in a worker thread). A lock
guards the per-version state between that step and `register`/`unregister`; the request path never takes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from prometheus_client import CollectorRegistry

from gateway.drift.collector import DriftCollector
from gateway.drift.counting import WindowCounter
from gateway.drift.evaluation import Persistence, Reference, WindowResult, evaluate_window
from gateway.drift.profile import UNSEEN_TRACKED, FeatureProfile, Profile, SlotCounts
from gateway.drift.sampler import Arrays, DriftKey, DriftSampler, Sample
from gateway.drift.settings import DriftSettings
from gateway.webhook import Webhook

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VersionSnapshot:
    """What the exports show for one model version; replaced whole, never mutated."""

    key: DriftKey
    settings: DriftSettings
    profile: Profile
    window: WindowResult | None  # the latest full window, None before the first
    drifting: bool
    recent: tuple[bool, ...]  # the persistence history, oldest first
    filling: int  # rows in the window being filled
    processed: int
    windows_total: int
    windows_drifted_total: int

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.key.model,
            "version": self.key.version,
            "drifting": self.drifting,
            "recent_windows": list(self.recent),
            "window_size": self.settings.window_size,
            "filling": self.filling,
            "samples_processed": self.processed,
            "windows_total": self.windows_total,
            "windows_drifted_total": self.windows_drifted_total,
            "settings": {
                "sample_rate": self.settings.sample_rate,
                "alpha": self.settings.alpha,
                "min_js_distance": self.settings.min_js_distance,
                "min_novel_share": self.settings.min_novel_share,
                "persistence_k": self.settings.persistence_k,
                "persistence_m": self.settings.persistence_m,
                "max_window_seconds": self.settings.max_window_seconds,
                "min_window_size": self.settings.min_window_size,
                "joint": self.settings.joint,
            },
            "profile": {
                "dataset_sha256": self.profile.dataset_sha256,
                "rows": self.profile.rows,
                "schema_version": self.profile.version,
                "joint": self.profile.joint is not None,
            },
            "window": None if self.window is None else self.window.to_json(),
        }


class _Window:
    """Integer counts of the window being filled, one slot array per feature plus (missing, below, above)."""

    def __init__(self, features: tuple[FeatureProfile, ...]) -> None:
        self.slots = [np.zeros(len(f.counts), dtype=np.int64) for f in features]
        self.extra = np.zeros((len(features), 3), dtype=np.int64)
        self.unseen: list[Counter[object] | None] = [None if f.kind == "numeric" else Counter() for f in features]
        self.untracked = [0] * len(features)
        self.rows = 0
        self.opened_at: float | None = None  # when its first rows were binned (the time cap counts from there)

    def add(self, i: int, counts: SlotCounts) -> None:
        self.slots[i] += counts.slots
        self.extra[i] += (counts.missing, counts.below, counts.above)
        unseen = self.unseen[i]
        if unseen is not None and counts.unseen:
            unseen.update(counts.unseen)
            self.untracked[i] += counts.untracked
            if len(unseen) > 2 * UNSEEN_TRACKED:  # bounded: keep the most frequent, count the rest as untracked
                kept = dict(unseen.most_common(UNSEEN_TRACKED))
                self.untracked[i] += sum(unseen.values()) - sum(kept.values())
                self.unseen[i] = Counter(kept)

    def counts(self) -> list[SlotCounts]:
        return [
            SlotCounts(s, int(e[0]), int(e[1]), int(e[2]), u, t)
            for s, e, u, t in zip(self.slots, self.extra, self.unseen, self.untracked, strict=True)
        ]


class _Version:
    def __init__(self, key: DriftKey, profile: Profile, settings: DriftSettings) -> None:
        self.key = key
        self.profile = profile
        self.settings = settings
        self.counter = WindowCounter(profile, joint=settings.joint)
        self.reference = Reference(profile, joint=settings.joint)
        self.window = _Window(self.counter.features)
        self.persistence = Persistence(settings.persistence_k, settings.persistence_m)
        self.latest: WindowResult | None = None
        self.index = 0
        self.processed = 0
        self.windows_drifted = 0

    def snapshot(self) -> VersionSnapshot:
        return VersionSnapshot(
            self.key,
            self.settings,
            self.profile,
            self.latest,
            self.persistence.drifting,
            self.persistence.recent,
            self.window.rows,
            self.processed,
            self.index,
            self.windows_drifted,
        )


class DriftMonitor:
    def __init__(
        self,
        sampler: DriftSampler,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.time,
        webhook: Webhook | None = None,
        versions: Mapping[DriftKey, tuple[Profile, DriftSettings]] | None = None,
        batch_limit: int = 2048,
    ) -> None:
        self.sampler = sampler
        self._clock = clock
        self._webhook = webhook
        self._batch_limit = batch_limit
        self._lock = threading.Lock()
        self._versions: dict[DriftKey, _Version] = {}
        self._snapshot: dict[DriftKey, VersionSnapshot] = {}
        self.discarded = 0  # samples of versions no longer registered, or that failed to bin
        for key, (profile, settings) in (versions or {}).items():
            self.register(key, profile, settings)
        registry.register(DriftCollector(self, webhook))

    def register(self, key: DriftKey, profile: Profile, settings: DriftSettings) -> None:
        """Start monitoring `key` (or restart it with fresh windows, e.g. on a new profile). Disabled: unregister."""
        if not settings.enabled:
            self.unregister(key)
            return
        with self._lock:
            version = _Version(key, profile, settings)
            self._versions[key] = version
            self._publish([version])
        self.sampler.configure(key, settings.sample_rate)

    def unregister(self, key: DriftKey) -> None:
        """Stop monitoring `key`; its series leave the exports at once."""
        self.sampler.remove(key)
        with self._lock:
            self._versions.pop(key, None)
            if key in self._snapshot:
                snapshot = dict(self._snapshot)
                del snapshot[key]
                self._snapshot = snapshot

    def snapshot(self) -> Mapping[DriftKey, VersionSnapshot]:
        return self._snapshot

    def snapshot_json(self) -> dict[str, Any]:
        """The body of `GET /admin/drift`: the latest window and verdict per monitored version."""
        snapshot = self._snapshot
        return {
            "queue": {"depth": self.sampler.depth, "capacity": self.sampler.capacity},
            "versions": [s.to_json() for s in sorted(snapshot.values(), key=lambda s: (s.key.model, s.key.version))],
        }

    def process_pending(self, limit: int | None = None) -> int:
        """Drain and bin up to `limit` samples (default: the batch limit), closing any windows they fill.

        Returns the number of sampled rows processed.
        """
        samples = self.sampler.drain(self._batch_limit if limit is None else limit)
        by_key: dict[DriftKey, list[Sample]] = {}
        for sample in samples:
            by_key.setdefault(sample[0], []).append(sample)
        processed = 0
        with self._lock:
            touched = []
            for key, group in by_key.items():
                version = self._versions.get(key)
                if version is None:
                    self.discarded += len(group)
                    continue
                try:
                    processed += self._ingest(version, group)
                except Exception:  # one bad batch must not stop the worker; count it and move on
                    logger.exception("drift: cannot bin samples of %s/%s", key.model, key.version)
                    self.discarded += len(group)
                touched.append(version)
            # Also when nothing arrived: that is when a quiet version's time runs out.
            touched += self._expire()
            if touched:
                self._publish(touched)
        return processed

    async def run(self, interval: float) -> None:
        """Process forever: a step in a worker thread, then a pause of `interval` seconds unless a whole batch is
        already waiting (the worker is behind); webhook deliveries run alongside. Cancel to stop.

        The pause is what keeps the worker cheap for the requests: each step is a thread hop and a loop wake-up
        (tens of microseconds of a core the event loop shares), so steps come at most 1/interval times a second,
        each taking everything sampled since, rather than one per few samples as they trickle in."""
        async with anyio.create_task_group() as group:
            if self._webhook is not None:
                group.start_soon(self._webhook.run, interval)
            while True:
                await anyio.to_thread.run_sync(self.process_pending)
                if self.sampler.depth < self._batch_limit:
                    await anyio.sleep(interval)

    def _publish(self, versions: Iterable[_Version]) -> None:
        snapshot = dict(self._snapshot)
        for version in versions:
            if self._versions.get(version.key) is version:
                snapshot[version.key] = version.snapshot()
        self._snapshot = snapshot  # one assignment: a scrape sees the old or the new snapshot, never a mix

    def _expire(self) -> list[_Version]:
        """Close every window past its time cap that holds enough rows to judge (see DriftSettings)."""
        now = self._clock()
        closed = []
        for version in self._versions.values():
            settings, window = version.settings, version.window
            cap = settings.max_window_seconds
            if cap is None or window.opened_at is None or window.rows < settings.min_window_size:
                continue
            if now - window.opened_at >= cap:
                self._close(version)
                closed.append(version)
        return closed

    def _ingest(self, version: _Version, group: list[Sample]) -> int:
        size = version.settings.window_size
        pending: list[tuple[Arrays, Arrays, int]] = []
        filled = version.window.rows
        total = 0
        for _, inputs, outputs, rows in group:
            total += rows
            while rows > 0:
                room = size - filled
                if rows <= room:
                    pending.append((inputs, outputs, rows))
                    filled += rows
                    rows = 0
                else:  # the window closes inside this sample: split it
                    pending.append((_head(inputs, room), _head(outputs, room), room))
                    inputs, outputs = _tail(inputs, room), _tail(outputs, room)
                    rows -= room
                    filled += room
                if filled >= size:
                    self._accumulate(version, pending)
                    pending = []
                    self._close(version)
                    filled = 0
        if pending:
            self._accumulate(version, pending)
        version.processed += total
        return total

    def _accumulate(self, version: _Version, pending: list[tuple[Arrays, Arrays, int]]) -> None:
        window = version.window
        sources: tuple[Arrays, Arrays] = (
            _concatenate([part[0] for part in pending]),
            _concatenate([part[1] for part in pending]),
        )
        for i, counts in enumerate(version.counter.count(*sources)):
            if counts is not None:  # None: e.g. a request that asked for a subset of the outputs
                window.add(i, counts)
        window.rows += sum(part[2] for part in pending)
        if window.opened_at is None:
            window.opened_at = self._clock()

    def _close(self, version: _Version) -> None:
        window = version.window
        result = evaluate_window(
            version.profile,
            window.counts(),
            version.settings,
            index=version.index,
            evaluated_at=self._clock(),
            reference=version.reference,
        )
        version.window = _Window(version.counter.features)
        version.index += 1
        version.latest = result
        if result.drifted:
            version.windows_drifted += 1
        if version.persistence.add(result.drifted):
            self._announce(version, result)

    def _announce(self, version: _Version, result: WindowResult) -> None:
        key = version.key
        drifting = version.persistence.drifting
        drifted = [f.name for f in result.features if f.drifted]
        logger.warning(
            "drift: %s/%s is %s (window %d, drifted features: %s)",
            key.model,
            key.version,
            "drifting" if drifting else "no longer drifting",
            result.index,
            ", ".join(drifted) or "none",
        )
        url = version.settings.webhook_url
        if self._webhook is None or url is None:
            return
        self._webhook.notify(
            url,
            {
                "event": "drift_started" if drifting else "drift_stopped",
                "model": key.model,
                "version": key.version,
                "drifting": drifting,
                "window": result.index,
                "samples": result.samples,
                "drifted_features": drifted,
                "recent_windows": list(version.persistence.recent),
                "timestamp": result.evaluated_at,
            },
        )


def _concatenate(parts: list[Arrays]) -> Arrays:
    names = {name for part in parts for name in part}
    out: Arrays = {}
    for name in names:
        arrays = [part[name] for part in parts if name in part]
        out[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return out


def _head(tensors: Arrays, rows: int) -> Arrays:
    return {name: a[:rows] for name, a in tensors.items()}


def _tail(tensors: Arrays, rows: int) -> Arrays:
    return {name: a[rows:] for name, a in tensors.items()}
