"""Every remote endpoint the serving config names, kept across reloads: a reload that still names an endpoint
keeps its pool (warm connections), its ejection state and its health. Builds remote versions for the loader, runs
the health checks, and closes the endpoints a config no longer names once their last requests are done.

Loading a remote version reads its model's metadata (the signature) from the endpoint, blocking, in the loader's
thread. When that fails (the endpoint is down or does not have the model) the version fails to load as a local
version with a broken file does: at start-up it is reported and the rest serve, and it is tried again each time
the endpoint's health check sees it become ready; on a reload the new config is rejected and the last good one
keeps serving. A version that is already loaded and whose block did not change is kept as it is, without asking
the endpoint anything, so a reload never depends on an endpoint being up unless it adds or changes a version there.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from gateway.config import GatewayConfig
from gateway.drift.profile import Profile, load_profile
from gateway.errors import GatewayError, ModelLoadError
from gateway.paths import check_contained
from gateway.remote.backend import RemoteBackend
from gateway.remote.endpoint import Endpoint
from gateway.remote.metadata import parse_metadata
from gateway.remote.metrics import RemoteMetrics
from gateway.remote.settings import EndpointSettings, RemoteSource, RemoteSpec, parse_remote_versions

logger = logging.getLogger(__name__)

# Test seam: the transports an endpoint's clients use (async, blocking); None: real connections.
Transports = Callable[[str], tuple[httpx.AsyncBaseTransport | None, httpx.BaseTransport | None]]


@dataclass(frozen=True, slots=True)
class BuiltVersion:
    """A remote version, built: what the loader wraps into a served version."""

    source: RemoteSource
    backend: RemoteBackend
    profile: Profile | None


class EndpointRegistry:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.monotonic,
        transports: Transports | None = None,
        retire_grace: float = 30.0,
    ) -> None:
        self._metrics = RemoteMetrics(registry)
        self._clock = clock
        self._transports = transports
        self._grace = retire_grace
        # Built in the loader's thread, read on the loop: replaced whole under the lock, never mutated in place.
        self._lock = threading.Lock()
        self._endpoints: dict[str, Endpoint] = {}
        self._retiring: list[Endpoint] = []  # replaced or no longer named: closed once their requests are done
        self._checked: dict[str, float] = {}  # endpoint -> clock time of its last health check
        self._tasks: set[asyncio.Task[None]] = set()

    def endpoint(self, url: str, settings: EndpointSettings) -> Endpoint:
        """The endpoint at `url` with these settings: the one kept, or a new one (which replaces one whose settings
        changed; that one is closed after its requests are done)."""
        with self._lock:
            current = self._endpoints.get(url)
            if current is not None and current.settings == settings:
                return current
            transport, sync_transport = self._transports(url) if self._transports is not None else (None, None)
            if current is not None:
                self._metrics.forget(url)  # its children are bound anew, to the new endpoint's state
                self._retiring.append(current)
            made = Endpoint(
                url, settings, self._metrics, clock=self._clock, transport=transport, sync_transport=sync_transport
            )
            self._endpoints = {**self._endpoints, url: made}
            return made

    def build(
        self, model: str, name: str, spec: RemoteSpec, *, where: str, config_dir: Path | None, repository: Path
    ) -> BuiltVersion:
        """Read the remote model's metadata and build the version (blocking: the loader's thread). ModelLoadError
        when the endpoint cannot say what the model is; ConfigError for a profile the config may not name."""
        endpoint = self.endpoint(spec.endpoint, spec.settings)
        what = spec.describe()
        try:
            response = endpoint.get(spec.model_path, spec.timeout)
        except GatewayError as exc:
            raise ModelLoadError(f"{what}: cannot read the model's metadata: {exc}") from exc
        if response.status_code != 200:
            raise ModelLoadError(
                f"{what}: the model's metadata answered {response.status_code}: {response.text[:200].strip()}"
            )
        metadata = parse_metadata(response.content, what)
        backend = RemoteBackend(spec, endpoint, metadata, name)
        profile = None
        if spec.profile is not None:
            path = (config_dir or Path.cwd()) / spec.profile
            check_contained(path, f"{where}.profile", config_dir=config_dir, repository=repository)
            profile = load_profile(path, metadata.signature)
        # The remote's own parameters (another gateway sends its metadata.json: feature_names, metrics), but not its
        # names for the version: the gateway's metadata answer says what the version is called here.
        own = {k: v for k, v in metadata.parameters.items() if k not in ("version", "version_name")}
        parameters = {
            "endpoint": spec.endpoint, "remote_model": spec.model, "remote_version": spec.version,
            "remote_platform": metadata.platform, **own,
        }  # fmt: skip
        source = RemoteSource(model, name, spec, parameters)
        logger.info("%s: %s loaded (%d inputs, %d outputs)", where, what, len(metadata.signature.inputs),
                    len(metadata.signature.outputs))  # fmt: skip
        return BuiltVersion(source, backend, profile)

    def stamp(self, spec: RemoteSpec, config_dir: Path | None) -> tuple[object, ...]:
        """What a loaded version's reuse depends on: its block, its endpoint (replaced when the endpoint's settings
        change) and its profile file."""
        profile = None
        if spec.profile is not None:
            try:
                st = ((config_dir or Path.cwd()) / spec.profile).stat()
                profile = (st.st_size, st.st_mtime_ns, st.st_ino)
            except OSError:
                pass
        return (spec, self.endpoint(spec.endpoint, spec.settings), profile)

    def recoveries(self, url: str) -> int:
        """How many times the endpoint's health check saw it become ready (a failed version retries on a change)."""
        endpoint = self._endpoints.get(url)
        return -1 if endpoint is None else endpoint.recoveries

    def sync(self, config: GatewayConfig) -> None:
        """Keep the endpoints the serving config names (a listener of the reloader's swaps)."""
        self.retain(spec.endpoint for spec in parse_remote_versions(config).values())

    def retain(self, urls: Iterable[str]) -> None:
        """Keep the endpoints at `urls` (the serving config's); close the others once their requests are done."""
        keep = set(urls)
        with self._lock:
            gone = [e for url, e in self._endpoints.items() if url not in keep]
            self._endpoints = {url: e for url, e in self._endpoints.items() if url in keep}
            retiring, self._retiring = self._retiring + gone, []
        for endpoint in gone:
            self._metrics.forget(endpoint.url)
        for endpoint in retiring:
            self._spawn(self._close_later(endpoint))

    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(self._endpoints.values())

    async def check_once(self) -> float:
        """Health-check every endpoint whose interval is up; returns the seconds until the next one is due."""
        now = self._clock()
        due: list[Endpoint] = []
        wait = 1.0
        for endpoint in self.endpoints():
            interval = endpoint.settings.health_interval
            if interval <= 0:
                continue
            left = self._checked.get(endpoint.url, -float("inf")) + interval - now
            if left <= 0:
                due.append(endpoint)
                self._checked[endpoint.url] = now
                left = interval
            wait = min(wait, left)
        if due:
            await asyncio.gather(*(e.check_health(min(2.0, e.settings.health_interval)) for e in due))
        return max(0.05, wait)

    async def run(self) -> None:
        while True:
            try:
                wait = await self.check_once()
            except Exception:  # the checker must outlive any surprise; the next round tries again
                logger.exception("remote health check failed")
                wait = 1.0
            await asyncio.sleep(wait)

    async def aclose(self) -> None:
        with self._lock:
            endpoints, self._endpoints = [*self._endpoints.values(), *self._retiring], {}
            self._retiring = []
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(e.aclose() for e in endpoints), return_exceptions=True)

    async def _close_later(self, endpoint: Endpoint) -> None:
        await asyncio.sleep(self._grace)  # requests already on their way finish on it
        await endpoint.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop (a synchronous caller such as `gateway validate`): nothing is in flight
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
