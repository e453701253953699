"""A remote version's block in a route's `versions:` (a mapping with `endpoint`), parsed into frozen values.

```yaml
versions:
  stable: 1
  gpu:
    endpoint: http://triton:8000  # a V2 server's base URL (a path prefix is kept: http://host/prefix)
    model: resnet                 # the model's name there
    version: "3"                  # its version there; default: the server's own choice (no /versions/ in the URL)
    timeout: 10s                  # one request, connect to the last byte of the answer (also the metadata read)
    connect_timeout: 1s           # the connect phase, within `timeout`: a dead host fails fast and may be retried
    fallback: none                # none | baseline: while the endpoint is ejected, 503 or the route's baseline serves
    profile: null                 # a drift reference profile (as profile.json beside a local model), from the
                                  #   config's folder; drift needs one
    # The endpoint's own: every version naming the same endpoint states the same (or leaves them to the defaults).
    pool: {max_connections: 100, max_keepalive: 20, keepalive_expiry: 5s}
    ejection: {consecutive_failures: 5, base_time: 10s, max_time: 5m}
    health_interval: 5s           # GET /v2/health/ready this often; 0 turns it off
```

The version's name (`gpu`) is what the gateway calls it: its pin (`/versions/gpu`), its label in metrics, the
`version=` of `x-gateway-route` and the `model_version` of its answers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit

from gateway import fields
from gateway.config import GatewayConfig, RemoteVersion
from gateway.errors import ConfigError

Fallback: TypeAlias = Literal["none", "baseline"]

_KEYS = (
    "endpoint", "model", "version", "timeout", "connect_timeout", "fallback", "profile", "pool", "ejection",
    "health_interval",
)  # fmt: skip
_POOL_KEYS = ("max_connections", "max_keepalive", "keepalive_expiry")
_EJECTION_KEYS = ("consecutive_failures", "base_time", "max_time")
_FALLBACKS: tuple[Fallback, ...] = ("none", "baseline")
# Model names and versions go into the remote URL's path: one segment each, nothing to escape.
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """httpx's connection limits for one endpoint: its keep-alive pool."""

    max_connections: int = 100
    max_keepalive: int = 20
    keepalive_expiry: float = 5.0  # seconds an idle connection is kept


@dataclass(frozen=True, slots=True)
class EjectionSettings:
    """Outlier ejection (gateway/remote/ejection.py): this many failures in a row eject the endpoint for `base_time`,
    doubled at each ejection that follows a failed probe, up to `max_time`."""

    consecutive_failures: int = 5
    base_time: float = 10.0
    max_time: float = 300.0


@dataclass(frozen=True, slots=True)
class EndpointSettings:
    """What belongs to the endpoint rather than to one version: the pool, the ejection and the health checks."""

    pool: PoolSettings = PoolSettings()
    ejection: EjectionSettings = EjectionSettings()
    health_interval: float = 5.0  # seconds; 0: no health checks


@dataclass(frozen=True, slots=True)
class RemoteSpec:
    """One remote version. Hashable: a reload reuses a loaded version whose spec did not change."""

    endpoint: str  # the base URL, without a trailing slash
    model: str
    version: str | None = None  # None: the server's default version
    timeout: float = 10.0
    connect_timeout: float = 1.0
    fallback: Fallback = "none"
    profile: Path | None = None  # as written; relative to the config's folder
    settings: EndpointSettings = EndpointSettings()

    @property
    def infer_path(self) -> str:
        return f"{self.model_path}/infer"

    @property
    def model_path(self) -> str:
        """The model's V2 resource path on the endpoint: `/v2/models/m` or `/v2/models/m/versions/v`."""
        base = f"/v2/models/{self.model}"
        return base if self.version is None else f"{base}/versions/{self.version}"

    def describe(self) -> str:
        version = "" if self.version is None else f" version {self.version}"
        return f"{self.endpoint} model {self.model}{version}"


@dataclass(frozen=True, slots=True)
class RemoteSource:
    """Where a served remote version comes from: the route's model and the version's name (its label), its block,
    and the parameters its metadata answer shows (the endpoint's, and the remote model's own)."""

    model: str
    version: str
    spec: RemoteSpec
    metadata: Mapping[str, Any]

    def __str__(self) -> str:
        return self.spec.describe()


def parse_remote(data: Mapping[str, object], path: str) -> RemoteSpec:
    """A version's mapping that names an `endpoint` -> RemoteSpec, or ConfigError naming the key."""
    block = fields.block(data, path, _KEYS, required=("endpoint", "model"))
    endpoint = parse_endpoint(block["endpoint"], f"{path}.endpoint")
    model = _segment(block, "model", path)
    version = _segment(block, "version", path) if block.get("version") is not None else None
    timeout = fields.duration(block, "timeout", 10.0, path, low=0.001)
    connect = fields.duration(block, "connect_timeout", min(1.0, timeout), path, low=0.001)
    if connect > timeout:
        raise ConfigError(f"{path}.connect_timeout: must not exceed timeout ({timeout:g}s), got {connect:g}s")
    fallback = fields.choice(block, "fallback", "none", path, _FALLBACKS)
    profile = fields.string(block, "profile", path)
    return RemoteSpec(
        endpoint=endpoint,
        model=model,
        version=version,
        timeout=timeout,
        connect_timeout=connect,
        fallback="baseline" if fallback == "baseline" else "none",
        profile=None if profile is None else Path(profile),
        settings=EndpointSettings(
            pool=_pool(block.get("pool"), f"{path}.pool"),
            ejection=_ejection(block.get("ejection"), f"{path}.ejection"),
            health_interval=fields.duration(block, "health_interval", 5.0, path),
        ),
    )


def parse_endpoint(value: object, path: str) -> str:
    """An http(s) base URL with a host and nothing after its path, normalised without a trailing slash."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: must be an http(s) URL such as http://triton:8000, got {value!r}")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        raise ConfigError(f"{path}: {value!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{path}: must be an http(s) URL with a host, such as http://triton:8000, got {value!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{path}: must have no query, fragment or credentials, got {value!r}")
    del port
    return value.rstrip("/")


def parse_remote_versions(config: GatewayConfig) -> dict[tuple[str, str], RemoteSpec]:
    """Every remote version's block, parsed, by (model, version name): what the loader builds. ConfigError naming
    the key for a bad block, for a model's version name given two different blocks (a version is (model, name)
    wherever it is named), and for one endpoint given two sets of settings."""
    specs: dict[tuple[str, str], RemoteSpec] = {}
    where: dict[tuple[str, str], str] = {}
    by_path: dict[str, RemoteSpec] = {}
    for route in config.routes.values():
        for name, version in route.versions.items():
            if not isinstance(version, RemoteVersion):
                continue
            path = f"{version_path(route.name)}.versions.{name}"
            spec = parse_remote(version.block, path)
            key = (route.model, name)
            first = specs.setdefault(key, spec)
            where.setdefault(key, path)
            if first != spec:
                raise ConfigError(
                    f"{path}: model {route.model} has a remote version {name!r} with another block at {where[key]};"
                    " one model's version name is one version: give this one another name"
                )
            by_path[path] = spec
    _check_endpoints(by_path)
    return specs


def version_path(route: str) -> str:
    """`routes.fraud`, or `routes['fraud.v2']` where the name would make the dotted path ambiguous (as config.py)."""
    return f"routes.{route}" if re.fullmatch(r"[A-Za-z0-9_-]+", route) else f"routes[{route!r}]"


def _check_endpoints(specs: Mapping[str, RemoteSpec]) -> None:
    """Every version naming an endpoint gives it the same settings (one pool, one ejection state per endpoint);
    `specs` maps each version's key path to its spec. ConfigError naming both paths otherwise."""
    first: dict[str, tuple[str, EndpointSettings]] = {}
    for path, spec in specs.items():
        seen = first.setdefault(spec.endpoint, (path, spec.settings))
        if seen[1] != spec.settings:
            raise ConfigError(
                f"{path}: endpoint {spec.endpoint} has other pool, ejection or health_interval settings at {seen[0]};"
                " they are the endpoint's: state the same in both (or leave both to the defaults)"
            )


def _segment(block: Mapping[str, object], key: str, path: str) -> str:
    value = block.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `version: 3` as YAML writes it unquoted
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise ConfigError(f"{path}.{key}: must be a name matching {_SEGMENT.pattern}, got {value!r}")
    return value


def _pool(data: object, path: str) -> PoolSettings:
    if data is None:
        return PoolSettings()
    block = fields.block(data, path, _POOL_KEYS)
    connections = fields.integer(block, "max_connections", 100, path, low=1, high=10_000)
    keepalive = fields.integer(block, "max_keepalive", min(20, connections), path, low=0, high=connections)
    return PoolSettings(connections, keepalive, fields.duration(block, "keepalive_expiry", 5.0, path))


def _ejection(data: object, path: str) -> EjectionSettings:
    if data is None:
        return EjectionSettings()
    block = fields.block(data, path, _EJECTION_KEYS)
    base = fields.duration(block, "base_time", 10.0, path, low=0.001)
    longest = fields.duration(block, "max_time", max(300.0, base), path, low=0.001)
    if longest < base:
        raise ConfigError(f"{path}.max_time: must be at least base_time ({base:g}s), got {longest:g}s")
    failures = fields.integer(block, "consecutive_failures", 5, path, low=1, high=1_000_000)
    return EjectionSettings(failures, base, longest)
