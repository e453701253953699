"""The routing file a fleet controller publishes: the source config with each rollout's current plan written in.

The operator edits the source (comments, rollout: blocks and all); the controller owns the output, which every
replica watches and hot-reloads. For each route with a rollout the output holds the plan the in-process controller
would apply (gateway.rollouts.rollout_plan: the same weights, the candidate laid next to the baseline so that sticky
users only move from the baseline to the candidate, the shadow of a shadow step, the candidate as the baseline once
promoted) and no rollout: block, so a replica serving it runs no controller of its own. Every other key is copied.

The output is checked as a replica would parse it before it is written, and written atomically (temporary file,
fsync, rename, in the output's folder), so a replica's watcher sees the old file or the new one, never half.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from gateway.config import parse_config_bytes
from gateway.errors import ConfigError
from gateway.generation import parse_features
from gateway.plan import RoutePlan
from gateway.rollout.state import write_atomically
from gateway.routing import RoutingTable

HEADER = "# Written by `gateway rollout-controller` from {source}; edit that file, not this one: it is rewritten at\n"
HEADER += "# every rollout step, and carries the steps' weights instead of the rollout blocks.\n"


def render(source: Mapping[str, Any], plans: Mapping[str, RoutePlan], *, source_path: Path) -> bytes:
    """The output's bytes: `source` (the source file's YAML, as loaded) with each planned route's split, version
    order and shadow replaced by its plan, and every rollout block left out."""
    document = dict(source)
    routes: dict[str, Any] = {}
    for name, route in (source.get("routes") or {}).items():
        route = dict(route)
        route.pop("rollout", None)
        plan = plans.get(name)
        if plan is not None:
            route = _planned(route, plan)
        routes[name] = route
    document["routes"] = routes
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return (HEADER.format(source=source_path) + body).encode()


def _planned(route: dict[str, Any], plan: RoutePlan) -> dict[str, Any]:
    versions = dict(route["versions"])
    order = plan.order or tuple(versions)
    route["versions"] = {name: versions[name] for name in order}  # the sticky layout follows the declared order
    split = dict(route["split"])
    split["weights"] = {name: _number(share * 100.0) for name, share in plan.shares().items()}
    split["baseline"] = plan.baseline
    route["split"] = split
    shadow = route.pop("shadow", None)
    if plan.shadow_to is not None and plan.shadow_percent > 0:
        route["shadow"] = {**(shadow or {}), "to": plan.shadow_to, "percent": _number(plan.shadow_percent)}
    return route


def _number(value: float) -> float | int:
    """A percentage as a person would write it: 95, not 95.00000000000001 (a replica's share is weight / sum, so
    the rounding moves no share by more than 1e-9)."""
    value = round(value, 9)
    return int(value) if value.is_integer() else value


def check(body: bytes, *, output: Path) -> None:
    """Parse `body` as a replica would read it from `output`: ConfigError naming what is wrong, so a bad render is
    never written (a replica would reject it and keep serving the previous step, which no gate would then judge)."""
    try:
        config = parse_config_bytes(body, source=str(output), base_dir=output.parent)
        parse_features(config)
        RoutingTable.from_config(config)
    except ConfigError as exc:
        raise ConfigError(f"the routing file the controller would publish is not valid: {exc}") from exc


def check_paths(source: Mapping[str, Any], *, source_path: Path, output: Path) -> None:
    """The output is read in its own folder: a relative model repository would move with it."""
    repository = source.get("model_repository")
    if (
        isinstance(repository, str)
        and not Path(repository).expanduser().is_absolute()
        and source_path.parent != output.parent
    ):
        raise ConfigError(
            f"{source_path}: model_repository: {repository!r} is relative to the source's folder, but the replicas"
            f" read the output in {output.parent}; write it as an absolute path, as the replicas see it (or put the"
            " output beside the source)"
        )


class RoutingFile:
    """The output file: what it holds, and its atomic replacement."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def write(self, body: bytes) -> None:
        write_atomically(self.path, body)
