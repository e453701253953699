"""A config generation: the parsed file, the versions it loaded, and each feature's settings, parsed by the feature.

The features' blocks are parsed before any model loads, so a fault rejects the file by its key path and nothing is
half applied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.drift.settings import DriftSettings, parse_drift_settings
from gateway.errors import ConfigError
from gateway.experiment.settings import RouteExperiment, parse_experiment_settings
from gateway.loader import Key, Loaded
from gateway.paths import check_contained
from gateway.remote.settings import parse_remote_versions
from gateway.rollout.settings import RolloutSettings, parse_rollout_settings
from gateway.shadow.settings import ShadowSettings, parse_shadow_settings

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Features:
    """The per-route settings other modules own, by route name."""

    drift: Mapping[str, DriftSettings]
    shadow: Mapping[str, ShadowSettings | None]
    rollout: Mapping[str, RolloutSettings | None]
    experiment: Mapping[str, RouteExperiment | None]


@dataclass(frozen=True, slots=True)
class Generation:
    """What is serving now: the config, its hash and the versions it loaded."""

    number: int
    config: GatewayConfig
    digest: str
    loaded: dict[Key, Loaded]
    failed: dict[Key, str]
    features: Features

    @property
    def drift(self) -> Mapping[str, DriftSettings]:
        return self.features.drift


def route_path(name: str) -> str:
    """`routes.fraud`, or `routes['fraud.v2']` when the name would make the dotted path ambiguous (as config.py)."""
    return f"routes.{name}" if _PLAIN.fullmatch(name) else f"routes[{name!r}]"


def parse_features(config: GatewayConfig) -> Features:
    """Settings other modules own, validated before any model loads so a fault rejects the file by its key."""
    drift: dict[str, DriftSettings] = {}
    shadow: dict[str, ShadowSettings | None] = {}
    rollout: dict[str, RolloutSettings | None] = {}
    experiment: dict[str, RouteExperiment | None] = {}
    try:
        parse_remote_versions(config)  # remote versions' blocks (gateway/remote), checked before anything loads
    except ConfigError as exc:
        raise ConfigError(f"{config.source}: {exc}") from exc
    batching: dict[Key, tuple[str, object]] = {}
    for name, route in config.routes.items():
        for spec in route.versions.values():
            first = batching.setdefault((route.model, spec.version), (name, route.batching))
            if first[1] != route.batching:
                raise ConfigError(
                    f"{config.source}: {route_path(name)}.batching: model {route.model} version {spec.version} is also"
                    f" served by route {first[0]} with other batching settings; one version has one batcher"
                )
        path = route_path(name)
        versions = tuple(route.versions)
        baseline = route.split.baseline
        try:
            drift[name] = parse_drift_settings(route.drift, f"{path}.drift")
            rollout[name] = parse_rollout_settings(
                route.rollout, f"{path}.rollout", versions=versions, baseline=baseline, base_dir=config.base_dir,
                route=name,
            )  # fmt: skip
            candidate = rollout[name]
            if candidate is not None:  # the files it reads and writes stay where the operator allows (gateway.paths)
                files = [(f"{path}.rollout.state_file", candidate.state_file)]
                if candidate.validate is not None:
                    files.append((f"{path}.rollout.validate.golden_set", candidate.validate.golden_set))
                for key, file in files:
                    if file is not None:
                        check_contained(file, key, config_dir=config.base_dir, repository=config.model_repository)
            shadow[name] = parse_shadow_settings(
                route.shadow, f"{path}.shadow", versions=versions, baseline=baseline,
                candidate=None if candidate is None else candidate.candidate,
            )  # fmt: skip
            experiment[name] = parse_experiment_settings(
                route.experiment, route.feedback, path, versions=versions, baseline=baseline,
                weights=route.split.weights, candidate=None if candidate is None else candidate.candidate,
            )  # fmt: skip
        except ConfigError as exc:
            raise ConfigError(f"{config.source}: {exc}") from exc
    return Features(drift, shadow, rollout, experiment)
