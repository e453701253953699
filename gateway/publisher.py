"""Builds the serving snapshot from a config generation and the current traffic plans, and reports the weights.

Called by the reloader when a new config applies and by the rollout manager when a rollout decides; both swap the
result into the data plane in one assignment, on the event loop, so a request sees one whole plan or the next.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from gateway.dataplane import DecisionRecord, Served, Snapshot
from gateway.experiment.hub import Experiments
from gateway.generation import Generation
from gateway.metrics import Metrics
from gateway.plan import RoutePlan, config_plan, effective_config
from gateway.prediction import PredictionError, reader_for
from gateway.routing import Reason, Route, RoutingTable
from gateway.shadow.comparison import Comparator
from gateway.shadow.runner import ShadowHub, ShadowLane
from gateway.shadow.settings import DEFAULT as DEFAULT_SHADOW

logger = logging.getLogger(__name__)

REASONS: tuple[Reason, ...] = ("override", "pin", "sticky", "weighted")
# The baseline's record for requests a remote version diverted to it while its endpoint was ejected; made only on
# routes with a version that falls back, so other routes export no series for it.
FALLBACK: tuple[Reason, ...] = (*REASONS, "fallback")


class Planner(Protocol):
    """Whoever decides plans other than the config's (the rollout manager). Called whenever a snapshot is built, on
    the event loop; it must be quick."""

    def plan(self, generation: Generation) -> Mapping[str, RoutePlan]:
        """Plans for the routes it steers; routes it leaves out follow their config."""
        ...


class Publisher:
    def __init__(
        self, metrics: Metrics, shadows: ShadowHub | None = None, experiments: Experiments | None = None
    ) -> None:
        self._metrics = metrics
        self._shadows = shadows
        self._experiments = experiments
        self.planner: Planner | None = None
        self._published: set[tuple[str, str]] = set()  # (route, version) weight series exported
        self._warned: set[tuple[str, str]] = set()

    def plans(self, generation: Generation) -> dict[str, RoutePlan]:
        config = generation.config
        shadows = generation.features.shadow
        plans = {name: config_plan(route, shadows.get(name)) for name, route in config.routes.items()}
        if self.planner is not None:
            plans.update(self.planner.plan(generation))
        return plans

    def build(self, generation: Generation) -> Snapshot:
        plans = self.plans(generation)
        config = effective_config(generation.config, plans)
        table = RoutingTable.from_config(config)
        served = {key: loaded.served for key, loaded in generation.loaded.items()}
        decisions: dict[tuple[str, str, str], DecisionRecord] = {}
        experiments = self._experiments
        if experiments is not None:
            experiments.configure(generation.features.experiment, _references(generation))
        for name, route in table.routes.items():
            plan = plans[name]
            lane = self._lane(generation, name, route, plan, served)
            diverts = any(_falls_back(served.get((t.model, t.version))) for t in route.targets)
            for target in route.targets:
                shadow = lane if lane is not None and target.name != lane.version else None
                tap = plan.taps.get(target.name)
                ledger = experiments.lane(name, target.name) if experiments is not None else None
                for reason in FALLBACK if diverts and target is route.baseline else REASONS:
                    counter = self._metrics.route_requests.labels(name, target.name, reason)
                    decisions[(name, target.name, reason)] = DecisionRecord.of(
                        counter, name, target.name, target.version, reason, shadow=shadow, tap=tap, ledger=ledger
                    )
        if self._shadows is not None:
            # A shadow's series stay while its route still has the version (a finished rollout's final counts are
            # still scraped); they go with the version.
            self._shadows.retain((name, version) for name, route in config.routes.items() for version in route.versions)
        self._publish_weights(plans)
        return Snapshot(generation.number, table, served, decisions, config.server.max_body_bytes)

    def _lane(
        self,
        generation: Generation,
        name: str,
        route: Route,
        plan: RoutePlan,
        served: Mapping[tuple[str, int | str], Served],
    ) -> ShadowLane | None:
        if self._shadows is None or plan.shadow_to is None or plan.shadow_percent <= 0:
            return None
        target = route.target(plan.shadow_to)
        version = served.get((target.model, target.version))
        if version is None:
            return None
        settings = generation.features.shadow.get(name) or DEFAULT_SHADOW
        try:
            reader = reader_for(version.backend.signature, settings.compare.kind, settings.compare.output)
        except PredictionError as exc:
            if (name, target.name) not in self._warned:
                self._warned.add((name, target.name))
                logger.error(
                    "routes.%s.shadow: cannot compare answers of %s, not shadowing: %s", name, target.name, exc
                )
            return None
        return self._shadows.lane(
            route=name, version=target.name, infer=version.infer, drift_key=version.drift_key, settings=settings,
            percent=plan.shadow_percent, comparator=Comparator(reader, settings.compare), sink=plan.shadow_sink,
        )  # fmt: skip

    def _publish_weights(self, plans: Mapping[str, RoutePlan]) -> None:
        """Each route version's share of unpinned traffic now; series of versions no longer routed are dropped."""
        gauge = self._metrics.route_weight
        now = {(name, version): share for name, plan in plans.items() for version, share in plan.shares().items()}
        for name, version in self._published - now.keys():
            try:
                gauge.remove(name, version)
            except KeyError:
                pass
        for (name, version), share in now.items():
            gauge.labels(name, version).set(share)
        self._published = set(now)


def _falls_back(served: Served | None) -> bool:
    return served is not None and served.remote is not None and served.remote.fallback


def _references(generation: Generation) -> dict[str, dict[str, dict[str, float]]]:
    """Route -> version -> the figures its metadata.json states under "metrics" (its validation figures)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, route in generation.config.routes.items():
        for version, spec in route.versions.items():
            loaded = generation.loaded.get((route.model, spec.version))
            figures = loaded.served.source.metadata.get("metrics") if loaded is not None else None
            if isinstance(figures, dict):
                numbers = {
                    k: float(v) for k, v in figures.items() if isinstance(v, int | float) and not isinstance(v, bool)
                }
                out.setdefault(name, {})[version] = numbers
    return out
