"""What a route's traffic does right now: the split (weights, baseline), the shadow target and share, and which
versions are tapped for a rollout's gates.

A route without a rollout follows its config. A rollout controller decides a different plan as it walks its steps
(the candidate's share rises, the candidate becomes the baseline on promotion, or drops to 0 on rollback); the
snapshot builder applies whatever plan is current, so a decision is published by swapping one snapshot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.config import GatewayConfig, RouteConfig
from gateway.shadow.runner import Sink
from gateway.shadow.settings import ShadowSettings
from gateway.tap import Tap

_NO_TAPS: Mapping[str, Tap] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RoutePlan:
    weights: Mapping[str, float]  # every version of the route, relative (0: dark)
    baseline: str
    shadow_to: str | None = None
    shadow_percent: float = 0.0
    taps: Mapping[str, Tap] = field(default_factory=lambda: _NO_TAPS)  # version name -> its tap
    shadow_sink: Sink | None = None  # who listens to the shadow's results (a rollout's gates)
    order: tuple[str, ...] | None = None  # the versions' order for the sticky layout (None: as declared)

    def shares(self) -> dict[str, float]:
        total = sum(self.weights.values())
        return {name: (weight / total if total > 0 else 0.0) for name, weight in self.weights.items()}


def config_plan(route: RouteConfig, shadow: ShadowSettings | None) -> RoutePlan:
    """The plan a route's config alone asks for."""
    to = shadow.to if shadow is not None else None
    return RoutePlan(
        weights=route.split.weights,
        baseline=route.split.baseline,
        shadow_to=to,
        shadow_percent=shadow.percent if shadow is not None and to is not None else 0.0,
    )


def effective_route(route: RouteConfig, plan: RoutePlan) -> RouteConfig:
    """The route with the plan's split (and version order) applied; the routing table is built from this."""
    versions = route.versions
    if plan.order is not None and tuple(versions) != plan.order:
        versions = MappingProxyType({name: route.versions[name] for name in plan.order})
    if plan.weights == route.split.weights and plan.baseline == route.split.baseline and versions is route.versions:
        return route
    split = dataclasses.replace(route.split, weights=MappingProxyType(dict(plan.weights)), baseline=plan.baseline)
    return dataclasses.replace(route, versions=versions, split=split)


def effective_config(config: GatewayConfig, plans: Mapping[str, RoutePlan]) -> GatewayConfig:
    routes = {
        name: effective_route(route, plans[name]) if name in plans else route for name, route in config.routes.items()
    }
    return dataclasses.replace(config, routes=MappingProxyType(routes))
