"""Turns repository versions into live, warmed `Served` versions; reuses one whose file has not changed."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

from gateway.admission import NO_HEADERS, request_timeout
from gateway.backends import Arrays, Execution
from gateway.backends.onnx import OnnxBackend, OnnxOptions, load_onnx
from gateway.batching import BatchingMetrics, DynamicBatcher, executor_offload
from gateway.config import (
    BatchingConfig,
    GatewayConfig,
    LocalVersion,
    RemoteVersion,
    RouteConfig,
    SplitConfig,
    VersionId,
)
from gateway.dataplane import Runner, Served
from gateway.drift.profile import Profile, load_profile
from gateway.drift.sampler import DriftKey
from gateway.errors import ModelLoadError
from gateway.metrics import Metrics, VersionMetrics
from gateway.remote.registry import EndpointRegistry
from gateway.remote.settings import RemoteSpec, parse_remote, version_path
from gateway.repository import METADATA_FILE, MODEL_FILE, VersionSource, locate, scan_models

logger = logging.getLogger(__name__)

Key = tuple[str, VersionId]  # (model, repository version number) or, for a remote version, (model, its name)
PROFILE_FILE = "profile.json"


@dataclass(frozen=True, slots=True)
class FileStamp:
    """Enough to tell that a file was replaced in place (same version number, new bytes)."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


def _folder_stamp(source: VersionSource) -> tuple[FileStamp | None, ...]:
    """The model file and the files beside it that the version reads (metadata, drift profile)."""
    stamps: list[FileStamp | None] = []
    for path in (source.model_file, source.folder / METADATA_FILE, source.folder / PROFILE_FILE):
        try:
            stamps.append(FileStamp.of(path))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


@dataclass(frozen=True, slots=True)
class Loaded:
    served: Served
    stamp: tuple[object, ...]  # what reuse depends on: the folder's file stamps, or a remote version's (registry)
    batching: BatchingConfig | None = None
    batcher: DynamicBatcher | None = None  # closed (queue drained) when the version is retired
    digest: str = ""  # sha256 of the model file's bytes: what a rollout is about survives touches and restarts


class VersionLoader:
    """Loads versions from one repository. Blocking (reads files, builds sessions): reloads call it off the loop."""

    def __init__(
        self,
        options: OnnxOptions,
        executor: Executor,
        metrics: Metrics,
        batching: BatchingMetrics,
        remotes: EndpointRegistry | None = None,
    ) -> None:
        self._options = options
        self._executor = executor
        self._metrics = metrics
        self._batching = batching
        self._remotes = remotes if remotes is not None else EndpointRegistry(metrics.registry)
        self._remote_urls: dict[Key, str] = {}  # the endpoint of each remote version tried: a failed one's retry

    @property
    def remotes(self) -> EndpointRegistry:
        return self._remotes

    def load(
        self, root: Path, key: tuple[str, int], previous: Loaded | None, batching: BatchingConfig | None
    ) -> Loaded:
        source = locate(root, *key)
        stamp = _folder_stamp(source)
        if (
            previous is not None
            and previous.stamp == stamp
            and isinstance(previous.served.source, VersionSource)
            and previous.served.source.folder == source.folder
            and previous.batching == batching
        ):
            return previous
        digest = _sha256(source.model_file)
        backend = load_onnx(source.model_file, self._options, self._executor)
        profile = _profile(source, backend)
        metrics = self._metrics.bind(source.model, str(source.version))
        batcher = None if batching is None else self._batcher(backend, batching, metrics, source)
        runner: Runner = backend.infer if batcher is None else _batched(batcher, self._options.request_timeout)
        drift_key = DriftKey(source.model, str(source.version))
        return Loaded(Served(source, backend, metrics, runner, drift_key, profile), stamp, batching, batcher, digest)

    def forget(self, key: Key, *, batching_only: bool = False) -> None:
        """Drop the series of a version that is gone for good (or only its batching series, when it stopped
        batching); the batching queue-depth callback is what would otherwise keep its session alive."""
        model, version = key[0], str(key[1])
        self._batching.forget(model, version)
        if not batching_only:
            self._metrics.forget(model, version)

    def _batcher(
        self, backend: OnnxBackend, config: BatchingConfig, metrics: VersionMetrics, source: VersionSource
    ) -> DynamicBatcher:
        compute = metrics.compute.share()  # batches record from worker threads: this child now takes a lock

        def run(inputs: Arrays) -> dict[str, Any]:
            outputs, seconds = backend.run(inputs)
            if seconds is not None:
                compute.observe(seconds)  # per execution: a batch is one
            return outputs

        return DynamicBatcher(
            run,
            config,
            metrics=self._batching.bind(source.model, str(source.version)),
            offload=executor_offload(self._executor),
            max_in_flight=self._options.max_concurrency,
            name=f"{source.model}/{source.version}",
        )

    def load_all(
        self, config: GatewayConfig, previous: Mapping[Key, Loaded], *, strict: bool
    ) -> tuple[dict[Key, Loaded], dict[Key, str]]:
        """Every version the config names. `strict`: the first failure raises (a reload must be all or nothing);
        otherwise failures are returned by key with their reason and the rest still load (start-up)."""
        loaded: dict[Key, Loaded] = {}
        failed: dict[Key, str] = {}
        for route, name, key in _referenced(config):
            if key in loaded:
                continue
            # Every version named has its failure count from 0 on, so a version that loaded once and fails later (its
            # file replaced by a broken one) is an increase; a series born at 1 is invisible to increase().
            failures = self._metrics.model_load_failures.labels(key[0], str(key[1]))
            spec = route.versions[name]
            try:
                if isinstance(spec, RemoteVersion):
                    remote = parse_remote(spec.block, f"{version_path(route.name)}.versions.{name}")  # checked already
                    loaded[key] = self._remote(config, route, name, remote, previous.get(key))
                else:
                    loaded[key] = self.load(config.model_repository, (key[0], spec.version), previous.get(key),
                                            route.batching)  # fmt: skip
            except ModelLoadError as exc:
                failures.inc()
                if strict:
                    where = f"{config.source}: routes.{route.name}.versions.{name}"
                    raise ModelLoadError(f"{where}: model {key[0]} version {key[1]}: {exc}") from exc
                logger.error("model %s version %s failed to load: %s", key[0], key[1], exc)
                failed[key] = str(exc)
        return loaded, failed

    def _remote(
        self, config: GatewayConfig, route: RouteConfig, name: str, spec: RemoteSpec, previous: Loaded | None
    ) -> Loaded:
        """A remote version (gateway/remote): kept when its block, endpoint and profile are unchanged, else built,
        which reads its model's metadata from the endpoint."""
        self._remote_urls[(route.model, name)] = spec.endpoint
        stamp = self._remotes.stamp(spec, config.base_dir)
        if previous is not None and previous.stamp == stamp:
            return previous
        where = f"{version_path(route.name)}.versions.{name}"
        version = self._remotes.build(
            route.model, name, spec, where=where, config_dir=config.base_dir, repository=config.model_repository
        )
        backend = version.backend
        served = Served(
            version.source, backend, self._metrics.bind(route.model, name), backend.infer, DriftKey(route.model, name),
            version.profile, remote=backend,
        )  # fmt: skip
        return Loaded(served, stamp, digest=backend.digest)

    def retry_stamp(self, root: Path, key: Key) -> object:
        """What tells that a version that failed to load may load now: its model file's stamp, or for a remote
        version the times its endpoint's health check saw it become ready."""
        url = self._remote_urls.get(key)
        if url is not None:
            return self._remotes.recoveries(url)
        try:
            return FileStamp.of(root / key[0] / str(key[1]) / MODEL_FILE)
        except OSError:
            return None


def _sha256(path: Path) -> str:
    """The file's sha256, read in 1 MiB blocks (models can be gigabytes); "" when it cannot be read (the load that
    follows says why)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def _batched(batcher: DynamicBatcher, default_timeout: float) -> Runner:
    async def infer(inputs: Arrays, headers: Mapping[str, str] = NO_HEADERS, start: float | None = None) -> Execution:
        # Every batched request waits in the queue, so its deadline is read here (a header scan, on this path only).
        timeout = request_timeout(headers, default_timeout)
        if start is not None:
            timeout -= perf_counter() - start
        return Execution(await batcher.submit(inputs, timeout), None)  # compute is observed per batch

    return infer


def _profile(source: VersionSource, backend: OnnxBackend) -> Profile | None:
    """The drift reference profile beside the model, checked against its signature; None when there is none."""
    path = source.folder / PROFILE_FILE
    return load_profile(path, backend.signature) if path.is_file() else None


def _referenced(config: GatewayConfig) -> Iterable[tuple[RouteConfig, str, Key]]:
    for route in config.routes.values():
        for name, spec in route.versions.items():
            yield route, name, (route.model, spec.version)


def repository_config(
    root: Path, *, exclude: set[Key] | None = None, source: str = "--model-repository"
) -> GatewayConfig:
    """The config `tritonserver --model-repository` implies: every model, all its versions pinnable, unversioned
    requests to the highest version whose file is present (Triton's default policy)."""
    root = root.resolve()
    routes: dict[str, RouteConfig] = {}
    for model, versions in scan_models(root).items():
        present = [
            v for v in versions if (root / model / str(v) / MODEL_FILE).is_file() and (model, v) not in (exclude or ())
        ]
        if not present:
            logger.warning("ignoring model %s: no version folder has a %s", model, MODEL_FILE)
            continue
        names = {f"v{v}": LocalVersion(v) for v in present}
        top = f"v{present[-1]}"
        weights = {name: (100.0 if name == top else 0.0) for name in names}
        routes[model] = RouteConfig(model, model, names, SplitConfig(weights=weights, baseline=top))
    if not routes and not exclude:
        raise ModelLoadError(f"model repository {root} has no model with a numeric version folder holding {MODEL_FILE}")
    return GatewayConfig(source=source, model_repository=root, routes=routes)
