"""Turns repository versions into live, warmed `Served` versions; reuses one whose file has not changed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from gateway.backends import Backend
from gateway.backends.onnx import OnnxOptions, load_onnx
from gateway.config import GatewayConfig, LocalVersion, RouteConfig, SplitConfig
from gateway.dataplane import Runner, Served
from gateway.errors import ModelLoadError
from gateway.metrics import Metrics
from gateway.repository import MODEL_FILE, VersionSource, locate, scan_models

logger = logging.getLogger(__name__)

Key = tuple[str, int]
# Wraps a backend's runner, e.g. in a dynamic batcher, given the route's config; identity when not batching.
RunnerFactory = Callable[[Backend, RouteConfig | None, Key], Runner]


@dataclass(frozen=True, slots=True)
class FileStamp:
    """Enough to tell that a model file was replaced in place (same version number, new bytes)."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True, slots=True)
class Loaded:
    served: Served
    stamp: FileStamp


class VersionLoader:
    """Loads versions from one repository. Blocking (reads files, builds sessions): reloads call it off the loop."""

    def __init__(self, options: OnnxOptions, executor: Executor, metrics: Metrics) -> None:
        self._options = options
        self._executor = executor
        self._metrics = metrics

    def load(self, root: Path, key: Key, previous: Loaded | None, route: RouteConfig | None,
             wrap: RunnerFactory) -> Loaded:  # fmt: skip
        source = locate(root, *key)
        stamp = FileStamp.of(source.model_file)
        if previous is not None and previous.stamp == stamp and previous.served.source.folder == source.folder:
            return previous
        backend = load_onnx(source.model_file, self._options, self._executor)
        metrics = self._metrics.bind(source.model, str(source.version))
        return Loaded(Served(source, backend, metrics, wrap(backend, route, key)), stamp)

    def load_all(
        self,
        config: GatewayConfig,
        previous: Mapping[Key, Loaded],
        wrap: RunnerFactory,
        *,
        strict: bool,
    ) -> tuple[dict[Key, Loaded], dict[Key, str]]:
        """Every version the config names. `strict`: the first failure raises (a reload must be all or nothing);
        otherwise failures are returned by key with their reason and the rest still load (start-up)."""
        loaded: dict[Key, Loaded] = {}
        failed: dict[Key, str] = {}
        for route, name, key in _referenced(config):
            if key in loaded:
                continue
            try:
                loaded[key] = self.load(config.model_repository, key, previous.get(key), route, wrap)
            except ModelLoadError as exc:
                self._metrics.model_load_failures.labels(key[0], str(key[1])).inc()
                if strict:
                    where = f"{config.source}: routes.{route.name}.versions.{name}"
                    raise ModelLoadError(f"{where}: model {key[0]} version {key[1]}: {exc}") from exc
                logger.error("model %s version %s failed to load: %s", key[0], key[1], exc)
                failed[key] = str(exc)
        return loaded, failed


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


def describe(source: VersionSource) -> str:
    return f"{source.model}/{source.version} ({source.model_file})"
