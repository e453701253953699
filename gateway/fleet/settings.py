"""The fleet controller's own config file parsed into a frozen FleetSettings; every fault names its key path.

```yaml
source: gateway.yaml              # the routing config the operator edits, rollout: blocks and all (relative: to here)
output: live/gateway.yaml         # the routing file every replica watches: the controller owns it and rewrites it
prometheus:
  url: http://prometheus:9090     # `--prometheus URL` overrides it
  selector: {job: gateway}        # label values every query carries: this fleet's series and no other
  timeout: 5s
lock: null                        # default: <output>.lock beside the output
tick: 1s                          # how often the controller looks (each rollout still judges every `interval`)
```

The rollouts themselves are the source's `rollout:` blocks, parsed by gateway.rollout as a replica would; which of
their gates a fleet can judge is gateway.fleet.support's business.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

from gateway import fields
from gateway.errors import ConfigError

_KEYS = ("source", "output", "prometheus", "lock", "tick")
_PROMETHEUS_KEYS = ("url", "selector", "timeout")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Labels the controller's own queries set: a selector naming one would contradict them.
RESERVED_LABELS = frozenset({"__name__", "model", "version", "route", "outcome", "result", "le", "feature"})


@dataclass(frozen=True, slots=True)
class PrometheusSettings:
    url: str
    selector: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class FleetSettings:
    source: Path  # absolute
    output: Path  # absolute
    prometheus: PrometheusSettings
    lock: Path  # absolute
    tick: float = 1.0


def load_fleet_settings(path: Path, *, prometheus_url: str | None = None) -> FleetSettings:
    """Read and parse the fleet config at `path`; `prometheus_url` (the command line's) wins over the file's."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the fleet config: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {exc}") from exc
    try:
        return parse_fleet_settings(data, base_dir=path.parent, prometheus_url=prometheus_url)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def parse_fleet_settings(data: object, *, base_dir: Path, prometheus_url: str | None = None) -> FleetSettings:
    """Untrusted fleet config -> FleetSettings, or ConfigError naming the key. Relative paths resolve against
    `base_dir` (the file's folder)."""
    block = fields.block(data, "<root>", _KEYS, required=("source", "output"))
    source = _path(base_dir, fields.string(block, "source", "<root>"), "source")
    output = _path(base_dir, fields.string(block, "output", "<root>"), "output")
    if source == output:
        raise ConfigError(
            "output: is the source itself; the controller writes the replicas' file from the source, so they must be"
            " two files (the source keeps the operator's text and rollout blocks, the output the published weights)"
        )
    lock_value = fields.string(block, "lock", "<root>")
    lock = output.with_name(f"{output.name}.lock") if lock_value is None else _path(base_dir, lock_value, "lock")
    return FleetSettings(
        source=source,
        output=output,
        prometheus=_parse_prometheus(block.get("prometheus"), "prometheus", prometheus_url),
        lock=lock,
        tick=fields.duration(block, "tick", 1.0, "<root>", low=0.01),
    )


def _path(base: Path, value: str | None, key: str) -> Path:
    if value is None:
        raise ConfigError(f"{key}: must be a non-empty string, got null")
    return Path(os.path.abspath(base / Path(value).expanduser()))


def _parse_prometheus(data: object, path: str, url_override: str | None) -> PrometheusSettings:
    block = fields.block({} if data is None else data, path, _PROMETHEUS_KEYS)
    url = url_override if url_override is not None else fields.http_url(block, "url", path)
    if url is None:
        raise ConfigError(f"{path}.url: is required (or give --prometheus URL)")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--prometheus: must be an http(s) URL, got {url!r}")
    return PrometheusSettings(
        url=url.rstrip("/"),
        selector=_parse_selector(block.get("selector"), f"{path}.selector"),
        timeout=fields.duration(block, "timeout", 5.0, path, low=0.1),
    )


def _parse_selector(data: object, path: str) -> Mapping[str, str]:
    if data is None:
        return MappingProxyType({})
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: must be a mapping of label names to values, e.g. {{job: gateway}}")
    selector: dict[str, str] = {}
    for name, value in data.items():
        if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name):
            raise ConfigError(f"{path}: {name!r} is not a Prometheus label name")
        if name in RESERVED_LABELS:
            raise ConfigError(f"{path}.{name}: the controller's queries set this label themselves")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}.{name}: must be a non-empty string (an exact label value), got {value!r}")
        selector[name] = value
    return MappingProxyType(selector)
