"""Config file -> validated config -> loaded, warmed versions -> one new snapshot, swapped whole; or the old one kept.

Change is detected by content hash, never mtime, so in-place edits, atomic renames and Kubernetes ConfigMap symlink
swaps (which keep the file's own mtime) are all seen.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from gateway.config import parse_config_bytes
from gateway.dataplane import DataPlane, Snapshot
from gateway.errors import ConfigError, GatewayError, ModelLoadError
from gateway.generation import Generation, parse_features
from gateway.loader import Key, Loaded, VersionLoader, repository_config
from gateway.metrics import Metrics
from gateway.publisher import Publisher

logger = logging.getLogger(__name__)

Outcome = Literal["applied", "unchanged", "rejected"]
OnSwap = Callable[[Generation, Generation | None], None]


class Reloader:
    """Owns the path from config to snapshot. `start()` at boot (fails fast), `check_once()` on every tick/signal."""

    def __init__(
        self,
        loader: VersionLoader,
        metrics: Metrics,
        *,
        config_path: Path | None,
        model_repository: Path | None = None,
        publisher: Publisher | None = None,
        on_swap: Iterable[OnSwap] = (),
        retire_grace: float = 30.0,
    ) -> None:
        if (config_path is None) == (model_repository is None):
            raise ValueError("give exactly one of config_path and model_repository")
        self._loader = loader
        self._metrics = metrics
        self._path = config_path
        self._repository = model_repository
        self._publisher = publisher if publisher is not None else Publisher(metrics)
        self._on_swap = tuple(on_swap)
        self._lock = asyncio.Lock()
        self._current: Generation | None = None
        self._dataplane: DataPlane | None = None
        self._sm = _ReloadMetrics(metrics)
        self._retiring: set[asyncio.Future[None]] = set()
        self._grace = retire_grace
        self._rejected_digest: str | None = None  # the last file rejected: not re-processed until it changes
        self._failed_stamps: dict[Key, object] = {}  # failed versions' model files (or endpoints), as last tried

    @property
    def current(self) -> Generation:
        if self._current is None:
            raise RuntimeError("start() has not run")
        return self._current

    @property
    def path(self) -> Path | None:
        return self._path

    def start(self) -> Snapshot:
        """Load the first config. Any config fault raises; a model that fails to load is reported and the rest serve."""
        if self._path is not None:
            raw = self._path.read_bytes()
            config = parse_config_bytes(raw, source=str(self._path), base_dir=self._path.parent)
            digest = hashlib.sha256(raw).hexdigest()
            features = parse_features(config)
            loaded, failed = self._loader.load_all(config, {}, strict=False)
        else:
            assert self._repository is not None
            config = repository_config(self._repository)
            features = parse_features(config)
            loaded, failed = self._loader.load_all(config, {}, strict=False)
            if failed:  # unversioned requests go to the highest version that did load, as Triton does
                config = repository_config(self._repository, exclude=set(failed))
            digest = ""
        generation = Generation(1, config, digest, loaded, failed, features)
        self._current = generation
        snapshot = self._publisher.build(generation)
        self._install(generation, None)
        self._failed_stamps = self._stamps(failed)
        self._sm.applied(generation.number)
        return snapshot

    def attach(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    async def check_once(self, *, force: bool = False) -> Outcome:
        """Re-read the config; if its content changed, validate, load, warm and swap, or keep the old one.

        A file already rejected is not tried again until it changes, and a version that failed to load at start is
        retried once its model file changes. `force` (SIGHUP, POST /admin/reload) tries again regardless, for a fix
        made to a model file the config names.
        """
        if self._path is None:
            return "unchanged"
        async with self._lock:  # a SIGHUP and the watcher must not build two snapshots at once
            try:
                raw = await asyncio.to_thread(self._path.read_bytes)
            except OSError as exc:
                # Mid-swap of a ConfigMap symlink the file can vanish for a moment: keep serving, try next tick.
                self._sm.rejected()
                logger.error("config reload rejected: cannot read %s: %s", self._path, exc)
                return "rejected"
            digest = hashlib.sha256(raw).hexdigest()
            if not force:
                if digest == self._rejected_digest:
                    return "unchanged"
                if digest == self.current.digest and not self._failed_changed():
                    self._rejected_digest = None
                    self._sm.serving()  # e.g. a rejected file reverted: what is on disk serves again
                    return "unchanged"
            elif digest == self.current.digest and not self.current.failed:
                self._rejected_digest = None
                self._sm.serving()
                return "unchanged"
            try:
                generation = await asyncio.to_thread(self._prepare, raw, digest)
                snapshot = self._publisher.build(generation)  # on the loop: it reads the current rollout plans
            except (ConfigError, ModelLoadError, GatewayError) as exc:
                self._sm.rejected()
                self._rejected_digest = digest
                self._failed_stamps = self._stamps(self.current.failed)
                logger.error("config reload rejected, the previous config keeps serving: %s", exc)
                return "rejected"
            self._rejected_digest = None
            previous = self.current
            # Swap first, then tell the listeners: a rollout manager that re-plans on the new generation publishes
            # after this snapshot, never before it.
            self._current = generation
            if self._dataplane is not None:
                self._dataplane.swap(snapshot)
            self._install(generation, previous)
            self._sm.applied(generation.number)
            logger.info("config generation %d applied from %s", generation.number, self._path)
            return "applied"

    def _stamps(self, keys: Iterable[Key]) -> dict[Key, object]:
        root = self.current.config.model_repository
        return {key: self._loader.retry_stamp(root, key) for key in keys}

    def _failed_changed(self) -> bool:
        """Whether a version that failed to load has a different model file now, or its remote endpoint became ready
        (cheap: one stat or one read each)."""
        failed = self.current.failed
        return bool(failed) and self._stamps(failed) != self._failed_stamps

    def _prepare(self, raw: bytes, digest: str) -> Generation:
        assert self._path is not None
        config = parse_config_bytes(raw, source=str(self._path), base_dir=self._path.parent)
        features = parse_features(config)
        current = self.current
        # strict: one version that fails to load rejects the whole reload, so traffic never meets a broken table.
        loaded, _ = self._loader.load_all(config, current.loaded, strict=True)
        return Generation(current.number + 1, config, digest, loaded, {}, features)

    def republish(self) -> None:
        """Rebuild the serving snapshot of the current generation with the current plans and swap it in (a rollout
        decided); cheap: no model is loaded."""
        if self._dataplane is not None and self._current is not None:
            self._dataplane.swap(self._publisher.build(self._current))

    def _install(self, generation: Generation, previous: Generation | None) -> None:
        for model, version in generation.loaded:
            self._metrics.model_ready.labels(model, str(version)).set(1)
        for model, version in generation.failed:
            self._metrics.model_ready.labels(model, str(version)).set(0)
        if previous is not None:
            for key, old in previous.loaded.items():
                kept = generation.loaded.get(key)
                if kept is not None and kept.served is old.served:
                    continue
                # Retired or replaced: requests already running hold their own reference and finish on it; new ones
                # cannot reach it. The session is freed when the last of them drops it.
                if kept is None:
                    self._metrics.model_ready.remove(key[0], str(key[1]))
                closing = asyncio.ensure_future(self._retire(key, old, gone=kept is None))
                self._retiring.add(closing)  # the loop keeps only a weak reference
                closing.add_done_callback(self._retiring.discard)
        for listener in self._on_swap:
            listener(generation, previous)

    async def _retire(self, key: Key, old: Loaded, *, gone: bool) -> None:
        if old.batcher is not None:
            await old.batcher.aclose(drain=True)  # its queued requests still run
        if not gone:
            now = self.current.loaded.get(key)
            if now is not None and now.batcher is None and old.batcher is not None:
                self._loader.forget(key, batching_only=True)
            return
        # Requests still running on the retired version record their outcome into its series first.
        await asyncio.sleep(self._grace)
        if key not in self.current.loaded:  # it may have come back meanwhile, with these same series
            self._loader.forget(key)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_once()
            except Exception:  # the watcher must outlive any surprise; the next tick tries again
                logger.exception("config check failed")


class _ReloadMetrics:
    def __init__(self, metrics: Metrics) -> None:
        reloads = metrics.config_reloads
        self._applied = reloads.labels("applied")
        self._rejected = reloads.labels("rejected")
        self._generation = metrics.config_generation
        self._last = metrics.config_last_reload
        self._successful = metrics.config_last_reload_successful

    def applied(self, number: int) -> None:
        self._applied.inc()
        self._generation.set(number)
        self._last.set(time.time())
        self._successful.set(1)

    def rejected(self) -> None:
        self._rejected.inc()
        self._successful.set(0)

    def serving(self) -> None:
        """The file on disk is the config serving (unchanged, or back to it after a rejection)."""
        self._successful.set(1)
