"""Keeps the drift monitor's registrations in step with the serving generation: which versions are watched, with
which reference profile and settings."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from gateway.drift.monitor import DriftMonitor
from gateway.drift.profile import Profile
from gateway.drift.sampler import DriftKey
from gateway.drift.settings import DriftSettings
from gateway.generation import Generation
from gateway.repository import VersionSource

logger = logging.getLogger(__name__)


class DriftRegistry:
    def __init__(self, monitor: DriftMonitor) -> None:
        self._monitor = monitor
        self._registered: dict[DriftKey, tuple[Profile, DriftSettings]] = {}
        # register/unregister wait for the monitor's lock, which a worker step holds while it bins and tests: on a
        # reload they run on this one thread (in order) instead of blocking the event loop.
        self._applier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift-registry")

    def sync(self, generation: Generation, previous: Generation | None = None) -> None:
        """Watch every version a drift-enabled route serves; keep the windows of versions whose profile and settings
        did not change; stop watching retired ones."""
        wanted: dict[DriftKey, tuple[Profile, DriftSettings]] = {}
        for name, route in generation.config.routes.items():
            settings = generation.drift[name]
            if not settings.enabled:
                continue
            for spec in route.versions.values():
                loaded = generation.loaded.get((route.model, spec.version))
                if loaded is None:
                    continue
                served = loaded.served
                if served.profile is None:
                    source = served.source
                    where = source.folder if isinstance(source, VersionSource) else f"remote version {source}"
                    logger.warning(
                        "routes.%s.drift is on but %s has no profile.json: build one with `gateway profile` (a remote"
                        " version names it with `profile:`)", name, where,
                    )  # fmt: skip
                    continue
                wanted.setdefault(served.drift_key, (served.profile, settings))
        gone = list(self._registered.keys() - wanted.keys())
        changed = [
            (key, profile, settings)
            for key, (profile, settings) in wanted.items()
            if (old := self._registered.get(key)) is None or old[0] is not profile or old[1] != settings
        ]
        self._registered = wanted
        if previous is None:  # start-up: no worker runs yet, nothing to wait for
            self._apply(gone, changed)
        else:
            self._applier.submit(self._apply, gone, changed)

    def _apply(self, gone: list[DriftKey], changed: list[tuple[DriftKey, Profile, DriftSettings]]) -> None:
        for key in gone:
            self._monitor.unregister(key)
        for key, profile, settings in changed:
            self._monitor.register(key, profile, settings)

    def close(self) -> None:
        self._applier.shutdown(wait=True)
