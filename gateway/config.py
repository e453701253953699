"""The gateway's YAML config: untrusted bytes -> validated, frozen values (no I/O but reading the file)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeAlias, TypeVar

import yaml

from gateway.errors import ConfigError

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_QUEUE_DELAY_US = 0  # Triton's default: batch only what is already waiting
DEFAULT_MAX_QUEUE_SIZE = 1024

# Names reach URLs, folder names and metric labels, so they are kept to a boring alphabet. Version names must start
# with a letter so a pin such as "/versions/2" can never mean both a name and a repository version number.
ROUTE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
VERSION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: header and cookie names
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")

OnMissing: TypeAlias = Literal["random", "baseline", "reject"]
KeySource: TypeAlias = Literal["header", "cookie"]
_ON_MISSING: tuple[OnMissing, ...] = ("random", "baseline", "reject")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


@dataclass(frozen=True, slots=True)
class LocalVersion:
    """A version served from the model repository: `<model_repository>/<model>/<version>/model.onnx`."""

    version: int


@dataclass(frozen=True, slots=True)
class RemoteVersion:
    """A version another V2 server serves (gateway/remote): `version` is its name in the route, which is also its
    label (a remote version has no repository number), and `block` its mapping, which gateway.remote.settings
    parses (with every other remote block, before anything loads)."""

    version: str
    block: Mapping[str, Any]


VersionSpec: TypeAlias = LocalVersion | RemoteVersion
VersionId: TypeAlias = int | str  # a repository version number, or a remote version's name


@dataclass(frozen=True, slots=True)
class StickyKey:
    """Where a sticky key comes from. Header names are lower-cased (case-insensitive); cookie names are not."""

    source: KeySource
    name: str

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"


@dataclass(frozen=True, slots=True)
class StickyConfig:
    keys: tuple[StickyKey, ...]  # first present wins
    salt: str
    on_missing: OnMissing = "random"


@dataclass(frozen=True, slots=True)
class OverrideConfig:
    """Send requests whose headers ALL equal these values (names lower-cased, values exact) to version `to`."""

    headers: Mapping[str, str]
    to: str


@dataclass(frozen=True, slots=True)
class SplitConfig:
    weights: Mapping[str, float]  # every version of the route, in declaration order; absent from YAML -> 0 (dark)
    baseline: str
    sticky: StickyConfig | None = None
    overrides: tuple[OverrideConfig, ...] = ()
    written: frozenset[str] = frozenset()  # the versions whose weight the file states (a rollout watches these)


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    max_batch_size: int
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str  # == the model name in /v2/models/{name}/...
    model: str  # folder in the model repository
    versions: Mapping[str, VersionSpec]  # declaration order is kept: it fixes the sticky bucket layout
    split: SplitConfig
    batching: BatchingConfig | None = None
    drift: Mapping[str, Any] | None = None  # loosely validated; the drift module owns its fields
    shadow: Mapping[str, Any] | None = None  # loosely validated; owned by gateway.shadow
    rollout: Mapping[str, Any] | None = None  # loosely validated; owned by gateway.rollout
    experiment: Mapping[str, Any] | None = None  # loosely validated; owned by gateway.experiment
    feedback: Mapping[str, Any] | None = None  # likewise


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    source: str  # the file name used in messages
    model_repository: Path  # absolute
    routes: Mapping[str, RouteConfig]
    server: ServerConfig = ServerConfig()
    prediction_log: Mapping[str, Any] | None = None  # loosely validated; owned by the prediction log
    drift_webhook: Mapping[str, Any] | None = None  # loosely validated; owned by drift
    base_dir: Path | None = None  # the config file's folder: paths inside the file (golden sets, state) are relative


@dataclass(frozen=True, slots=True)
class Fault:
    path: str  # e.g. "routes.fraud.split.overrides[0].to"
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidConfigError(ConfigError):
    """A config that parsed as YAML but is not a valid gateway config; `faults` lists every fault found."""

    def __init__(self, source: str, faults: Sequence[Fault]) -> None:
        super().__init__("\n".join(f"{source}: {fault}" for fault in faults))
        self.source = source
        self.faults = tuple(faults)


def load_config(path: Path) -> GatewayConfig:
    """Read `path` once and parse it; relative paths inside resolve against the file's folder."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse_config_bytes(raw, source=str(path), base_dir=path.parent)


def parse_config_bytes(raw: bytes, *, source: str, base_dir: Path) -> GatewayConfig:
    """Parse YAML bytes (e.g. already read and hashed by the reloader)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 (byte {exc.start})") from exc
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{source}: {where}YAML syntax error: {problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML syntax error: {exc}") from exc
    return parse_config(data, source=source, base_dir=base_dir)


def parse_config(data: object, *, source: str, base_dir: Path) -> GatewayConfig:
    """Validate decoded YAML/JSON data; raise `InvalidConfigError` listing every fault with its exact path."""
    faults = _Faults()
    config = _parse_gateway(data, faults, source=source, base_dir=base_dir)
    if faults.items or config is None:
        raise InvalidConfigError(source, faults.items or [Fault("<root>", "invalid")])
    return config


# --- YAML loading ---------------------------------------------------------------------------------------------------

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_Base):  # type: ignore[misc]
    """SafeLoader that rejects duplicate keys: PyYAML silently keeps the last one, hiding typos like two `canary:`."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` then an explicit key is an override, not a duplicate
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: let the base class raise its own error
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


# --- validation helpers ---------------------------------------------------------------------------------------------


class _Faults:
    def __init__(self) -> None:
        self.items: list[Fault] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(Fault(path, message))


T = TypeVar("T")


def _key_path(path: str, key: str) -> str:
    # Quote keys that would make the dotted path ambiguous ("routes.my.model" vs routes["my.model"]).
    part = f".{key}" if _PLAIN_KEY.fullmatch(key) else f"[{key!r}]"
    return part[1:] if not path else path + part


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _mapping(
    value: object, path: str, faults: _Faults, allowed: Sequence[str] | None = None, required: Sequence[str] = ()
) -> dict[str, object] | None:
    """A mapping with string keys; with `allowed`, unknown keys are faults. Returns None if not a usable mapping."""
    if not isinstance(value, dict):
        faults.add(path or "<root>", f"must be a mapping, not {_type_name(value)}")
        return None
    result: dict[str, object] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            faults.add(_key_path(path, str(key)), f"keys must be strings, not {_type_name(key)}")
            continue
        if allowed is not None and key not in allowed:
            faults.add(_key_path(path, key), f"unknown key (allowed: {', '.join(allowed)})")
            continue
        result[key] = item
    for key in required:
        if key not in value:
            faults.add(_key_path(path, key), "is required")
    return result


def _integer(value: object, path: str, faults: _Faults, minimum: int) -> int | None:
    # JSON Schema counts 2.0 as an integer, so the parser does too; bools are not numbers.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        faults.add(path, f"must be an integer >= {minimum}, not {_type_name(value)}")
        return None
    if value < minimum:
        faults.add(path, f"must be >= {minimum}")
        return None
    return value


def _string(value: object, path: str, faults: _Faults, pattern: re.Pattern[str] | None = None) -> str | None:
    if not isinstance(value, str):
        faults.add(path, f"must be a string, not {_type_name(value)}")
        return None
    if not value:
        faults.add(path, "must not be empty")
        return None
    if pattern is not None and not pattern.fullmatch(value):
        faults.add(path, f"{value!r} must match {pattern.pattern}")
        return None
    return value


def _optional(data: Mapping[str, object], key: str, default: T, parse: Callable[[object], T | None]) -> T | None:
    """The parsed value of `key`, or `default` when the key is absent; None when it is present but invalid."""
    return parse(data[key]) if key in data else default


def _loose_value(value: object, path: str, faults: _Faults) -> object:
    """Deep-freeze a JSON-like value: mappings -> read-only mappings, lists -> tuples, scalars as they are."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list):
        return tuple(_loose_value(item, f"{path}[{i}]", faults) for i, item in enumerate(value))
    if isinstance(value, dict):
        return _loose_mapping(value, path, faults)
    faults.add(path, f"must be a string, number, boolean, null, list or mapping, not {_type_name(value)}")
    return None


def _loose_mapping(value: object, path: str, faults: _Faults) -> Mapping[str, Any] | None:
    """A section owned by another module: only checked to be JSON-like; null means absent."""
    if value is None:
        return None
    data = _mapping(value, path, faults)
    if data is None:
        return None
    return MappingProxyType({key: _loose_value(item, _key_path(path, key), faults) for key, item in data.items()})


# --- the schema, section by section ----------------------------------------------------------------------------------

_TOP_KEYS = ("model_repository", "server", "routes", "prediction_log", "drift_webhook")
_SERVER_KEYS = ("max_body_bytes",)
_ROUTE_KEYS = ("model", "versions", "split", "batching", "drift", "shadow", "rollout", "experiment", "feedback")
_VERSION_KEYS = ("version",)
_SPLIT_KEYS = ("weights", "baseline", "sticky", "overrides")
_STICKY_KEYS = ("key", "salt", "on_missing")
_OVERRIDE_KEYS = ("header", "to")
_BATCHING_KEYS = ("max_batch_size", "max_queue_delay_us", "max_queue_size")


def _parse_gateway(data: object, faults: _Faults, *, source: str, base_dir: Path) -> GatewayConfig | None:
    if data is None:
        faults.add("<root>", "the file is empty; expected a mapping with model_repository and routes")
        return None
    top = _mapping(data, "", faults, _TOP_KEYS, required=("model_repository", "routes"))
    if top is None:
        return None
    repository = _optional(top, "model_repository", None, lambda v: _string(v, "model_repository", faults))
    server = _parse_server(top.get("server"), faults)
    routes = _parse_routes(top["routes"], faults) if "routes" in top else None
    prediction_log = _loose_mapping(top.get("prediction_log"), "prediction_log", faults)
    drift_webhook = _loose_mapping(top.get("drift_webhook"), "drift_webhook", faults)
    if repository is None or server is None or routes is None:
        return None
    # abspath, not resolve(): a symlinked repository (a Kubernetes volume swaps a symlink) must be followed on every
    # load, not pinned to whatever it pointed at when the config was parsed.
    model_repository = Path(os.path.abspath(base_dir / Path(repository).expanduser()))
    return GatewayConfig(
        source=source,
        model_repository=model_repository,
        routes=routes,
        server=server,
        prediction_log=prediction_log,
        drift_webhook=drift_webhook,
        base_dir=Path(os.path.abspath(base_dir)),
    )


def _parse_server(value: object, faults: _Faults) -> ServerConfig | None:
    if value is None:
        return ServerConfig()
    data = _mapping(value, "server", faults, _SERVER_KEYS)
    if data is None:
        return None
    limit = _optional(
        data, "max_body_bytes", DEFAULT_MAX_BODY_BYTES, lambda v: _integer(v, "server.max_body_bytes", faults, 1)
    )
    return None if limit is None else ServerConfig(max_body_bytes=limit)


def _parse_routes(value: object, faults: _Faults) -> Mapping[str, RouteConfig] | None:
    data = _mapping(value, "routes", faults)
    if data is None:
        return None
    if not value:
        faults.add("routes", "must name at least one route")
        return None
    routes: dict[str, RouteConfig] = {}
    for name, item in data.items():
        path = _key_path("routes", name)
        if not ROUTE_NAME.fullmatch(name):
            faults.add(path, f"route name {name!r} must match {ROUTE_NAME.pattern}")
            continue
        route = _parse_route(name, item, path, faults)
        if route is not None:
            routes[name] = route
    return MappingProxyType(routes) if len(routes) == len(data) else None


def _parse_route(name: str, value: object, path: str, faults: _Faults) -> RouteConfig | None:
    before = len(faults.items)
    data = _mapping(value, path, faults, _ROUTE_KEYS, required=("versions",))
    if data is None:
        return None
    model = _optional(data, "model", name, lambda v: _string(v, f"{path}.model", faults, ROUTE_NAME))
    versions = _parse_versions(data["versions"], f"{path}.versions", faults) if "versions" in data else None
    # With invalid versions the split is still checked (minus cross-references), so one pass reports both.
    split = _parse_split(data.get("split"), f"{path}.split", versions, name, faults)
    batching = _parse_batching(data.get("batching"), f"{path}.batching", faults)
    drift = _loose_mapping(data.get("drift"), f"{path}.drift", faults)
    shadow = _loose_mapping(data.get("shadow"), f"{path}.shadow", faults)
    rollout = _loose_mapping(data.get("rollout"), f"{path}.rollout", faults)
    experiment = _loose_mapping(data.get("experiment"), f"{path}.experiment", faults)
    feedback = _loose_mapping(data.get("feedback"), f"{path}.feedback", faults)
    if len(faults.items) > before or model is None or versions is None or split is None:
        return None
    return RouteConfig(
        name=name, model=model, versions=versions, split=split, batching=batching, drift=drift, shadow=shadow,
        rollout=rollout, experiment=experiment, feedback=feedback,
    )  # fmt: skip


def _parse_versions(value: object, path: str, faults: _Faults) -> Mapping[str, VersionSpec] | None:
    data = _mapping(value, path, faults)
    if data is None:
        return None
    if not data:
        faults.add(path, "must name at least one version")
        return None
    versions: dict[str, VersionSpec] = {}
    names_by_number: dict[int, str] = {}
    ok = True
    for name, item in data.items():
        item_path = _key_path(path, name)
        if not VERSION_NAME.fullmatch(name):
            faults.add(item_path, f"version name {name!r} must start with a letter and match {VERSION_NAME.pattern}")
            ok = False
            continue
        if isinstance(item, dict) and "endpoint" in item:  # its fields are gateway.remote's (loose here)
            block = _loose_mapping(item, item_path, faults)
            if block is None:
                ok = False
            else:
                versions[name] = RemoteVersion(name, block)
            continue
        number = _parse_version_number(item, item_path, faults)
        if number is None:
            ok = False
            continue
        if number in names_by_number:
            faults.add(item_path, f"repository version {number} is already named {names_by_number[number]!r}")
            ok = False
            continue
        names_by_number[number] = name
        versions[name] = LocalVersion(number)
    return MappingProxyType(versions) if ok else None


def _parse_version_number(value: object, path: str, faults: _Faults) -> int | None:
    if isinstance(value, dict):
        if "url" in value:
            faults.add(f"{path}.url", "a remote version names its server with `endpoint` (and `model`), not `url`")
            return None
        data = _mapping(value, path, faults, _VERSION_KEYS, required=_VERSION_KEYS)
        if data is None or "version" not in data:
            return None
        return _integer(data["version"], f"{path}.version", faults, 1)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _integer(value, path, faults, 1)
    faults.add(
        path,
        f"must be a repository version number (integer >= 1), {{version: N}} or a remote version"
        f" {{endpoint: URL, model: NAME}}, not {_type_name(value)}",
    )
    return None


def _unknown_version(name: str, versions: Mapping[str, VersionSpec]) -> str:
    return f"unknown version {name!r} (versions: {', '.join(versions)})"


def _parse_split(
    value: object, path: str, versions: Mapping[str, VersionSpec] | None, route: str, faults: _Faults
) -> SplitConfig | None:
    """`versions` is None when they were invalid: the split is still checked, minus cross-references."""
    if value is None:
        if versions is not None and len(versions) == 1:
            only = next(iter(versions))
            return SplitConfig(weights=MappingProxyType({only: 1}), baseline=only)
        if versions is not None:
            faults.add(path, "is required when a route has more than one version")
        return None
    before = len(faults.items)
    data = _mapping(value, path, faults, _SPLIT_KEYS, required=("weights",))
    if data is None:
        return None
    declared = _parse_weights(data["weights"], f"{path}.weights", versions, faults) if "weights" in data else None
    baseline: str | None = None
    if "baseline" in data:
        baseline = _version_ref(data["baseline"], f"{path}.baseline", versions, faults)
    elif declared:
        baseline = next(iter(declared))
    sticky = _parse_sticky(data.get("sticky"), f"{path}.sticky", route, faults)
    overrides = _parse_overrides(data.get("overrides"), f"{path}.overrides", versions, faults)
    if len(faults.items) > before or versions is None or declared is None or baseline is None or overrides is None:
        return None
    # Every version gets a weight, in declaration order; the ones not named are dark (pin or override only).
    weights = MappingProxyType({name: declared.get(name, 0) for name in versions})
    return SplitConfig(
        weights=weights, baseline=baseline, sticky=sticky, overrides=overrides, written=frozenset(declared)
    )


def _version_ref(value: object, path: str, versions: Mapping[str, VersionSpec] | None, faults: _Faults) -> str | None:
    name = _string(value, path, faults)
    if name is None or versions is None:
        return None
    if name not in versions:
        faults.add(path, _unknown_version(name, versions))
        return None
    return name


def _parse_weights(
    value: object, path: str, versions: Mapping[str, VersionSpec] | None, faults: _Faults
) -> dict[str, float] | None:
    data = _mapping(value, path, faults)
    if data is None:
        return None
    weights: dict[str, float] = {}
    ok = True
    for name, item in data.items():
        item_path = _key_path(path, name)
        if versions is not None and name not in versions:
            faults.add(item_path, _unknown_version(name, versions))
            ok = False
        if isinstance(item, bool) or not isinstance(item, int | float):
            faults.add(item_path, f"must be a number >= 0, not {_type_name(item)}")
            ok = False
        elif not math.isfinite(item):
            faults.add(item_path, "must be a finite number")
            ok = False
        elif item < 0:
            faults.add(item_path, "must be >= 0")
            ok = False
        else:
            weights[name] = item
    if ok and not any(weight > 0 for weight in weights.values()):
        faults.add(path, "at least one weight must be > 0")
        ok = False
    return weights if ok else None


def _parse_sticky(value: object, path: str, route: str, faults: _Faults) -> StickyConfig | None:
    if value is None:
        return None
    data = _mapping(value, path, faults, _STICKY_KEYS, required=("key",))
    if data is None:
        return None
    keys = _parse_sticky_keys(data["key"], f"{path}.key", faults) if "key" in data else None
    salt = _optional(data, "salt", route, lambda v: _string(v, f"{path}.salt", faults))
    on_missing: OnMissing | None = "random"
    if "on_missing" in data:
        raw = data["on_missing"]
        on_missing = next((choice for choice in _ON_MISSING if choice == raw), None)
        if on_missing is None:
            faults.add(f"{path}.on_missing", f"must be one of {', '.join(_ON_MISSING)}, not {raw!r}")
    if keys is None or salt is None or on_missing is None:
        return None
    return StickyConfig(keys=keys, salt=salt, on_missing=on_missing)


def _parse_sticky_keys(value: object, path: str, faults: _Faults) -> tuple[StickyKey, ...] | None:
    if isinstance(value, str):
        key = _parse_sticky_key(value, path, faults)
        return None if key is None else (key,)
    if not isinstance(value, list) or not value:
        faults.add(path, f"must be a key such as header:x-user-id or a non-empty list of them, not {_type_name(value)}")
        return None
    keys = [_parse_sticky_key(item, f"{path}[{i}]", faults) for i, item in enumerate(value)]
    parsed = tuple(key for key in keys if key is not None)
    if len(parsed) != len(keys):
        return None
    for i, key in enumerate(parsed):
        if key in parsed[:i]:
            faults.add(f"{path}[{i}]", f"duplicate key {str(key)!r}")
            return None
    return parsed


def _parse_sticky_key(value: object, path: str, faults: _Faults) -> StickyKey | None:
    if not isinstance(value, str):
        faults.add(path, f"must be a string such as header:x-user-id or cookie:uid, not {_type_name(value)}")
        return None
    source, _, name = value.partition(":")
    if source not in ("header", "cookie") or not HTTP_TOKEN.fullmatch(name):
        faults.add(path, f"{value!r} must have the form header:NAME or cookie:NAME")
        return None
    if source == "header":
        return StickyKey("header", name.lower())
    return StickyKey("cookie", name)


def _parse_overrides(
    value: object, path: str, versions: Mapping[str, VersionSpec] | None, faults: _Faults
) -> tuple[OverrideConfig, ...] | None:
    if value is None:
        return ()
    if not isinstance(value, list):
        faults.add(path, f"must be a list, not {_type_name(value)}")
        return None
    overrides = [_parse_override(item, f"{path}[{i}]", versions, faults) for i, item in enumerate(value)]
    parsed = tuple(override for override in overrides if override is not None)
    return parsed if len(parsed) == len(overrides) else None


def _parse_override(
    value: object, path: str, versions: Mapping[str, VersionSpec] | None, faults: _Faults
) -> OverrideConfig | None:
    data = _mapping(value, path, faults, _OVERRIDE_KEYS, required=_OVERRIDE_KEYS)
    if data is None:
        return None
    to = _version_ref(data["to"], f"{path}.to", versions, faults) if "to" in data else None
    headers = _parse_match_headers(data["header"], f"{path}.header", faults) if "header" in data else None
    if to is None or headers is None:
        return None
    return OverrideConfig(headers=headers, to=to)


def _parse_match_headers(value: object, path: str, faults: _Faults) -> Mapping[str, str] | None:
    data = _mapping(value, path, faults)
    if data is None:
        return None
    if not data:
        faults.add(path, "must name at least one header")
        return None
    headers: dict[str, str] = {}
    ok = True
    for name, item in data.items():
        item_path = _key_path(path, name)
        if not HTTP_TOKEN.fullmatch(name):
            faults.add(item_path, f"{name!r} is not a valid header name")
            ok = False
        elif name.lower() in headers:
            faults.add(item_path, f"header {name.lower()!r} is named twice (header names ignore case)")
            ok = False
        elif not isinstance(item, str):
            # YAML turns `1` into an int and `yes` into a bool; header values are text, so ask for quotes.
            faults.add(item_path, f'must be a string (quote it, e.g. "1"), not {_type_name(item)}')
            ok = False
        else:
            headers[name.lower()] = item
    return MappingProxyType(headers) if ok else None


def _parse_batching(value: object, path: str, faults: _Faults) -> BatchingConfig | None:
    if value is None:
        return None
    data = _mapping(value, path, faults, _BATCHING_KEYS, required=("max_batch_size",))
    if data is None:
        return None
    size = _optional(data, "max_batch_size", None, lambda v: _integer(v, f"{path}.max_batch_size", faults, 1))
    delay = _optional(
        data,
        "max_queue_delay_us",
        DEFAULT_MAX_QUEUE_DELAY_US,
        lambda v: _integer(v, f"{path}.max_queue_delay_us", faults, 0),
    )
    queue = _optional(data, "max_queue_size", None, lambda v: _integer(v, f"{path}.max_queue_size", faults, 1))
    if size is None or delay is None or ("max_queue_size" in data and queue is None):
        return None
    if queue is None:
        queue = max(DEFAULT_MAX_QUEUE_SIZE, size)
    elif queue < size:
        faults.add(f"{path}.max_queue_size", f"must be >= max_batch_size ({size})")
        return None
    return BatchingConfig(max_batch_size=size, max_queue_delay_us=delay, max_queue_size=queue)
