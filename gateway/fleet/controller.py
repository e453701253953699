"""The fleet rollout controller: every route's rollout, judged from Prometheus over all replicas, published through
the routing file they all watch.

```
source file (operator's, rollout: blocks) --load, check_supported--> RolloutController per route (the in-process
    state machine and gates) <--read-- PrometheusRecorder (PromQL over every replica)
        --traffic--> rollout_plan --render, check--> output file (atomic) --hot reload--> every replica
```

Each rollout runs the state machine a replica runs in process (gateway.rollout.controller), on the same gates
(gateway.rollout.gates), with a different metrics source; a step moves only once every replica applies it (the
recorder's `replicas` result joins the gates). State files are written after every transition, as in process, so a
restarted controller resumes at the same step. The controller loads no model: a rollout is told apart from another
by its versions' names and repository numbers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from gateway.config import GatewayConfig, parse_config_bytes
from gateway.errors import ConfigError
from gateway.fleet.prometheus import PrometheusError, Querier
from gateway.fleet.publication import RoutingFile, check, check_paths, render
from gateway.fleet.queries import FleetQueries
from gateway.fleet.recorder import FleetRecorder, PrometheusRecorder, Target
from gateway.fleet.settings import FleetSettings
from gateway.fleet.support import check_supported
from gateway.generation import Features, parse_features
from gateway.plan import RoutePlan
from gateway.prediction import Task
from gateway.rollout.controller import Evaluation, RecorderFactory, RolloutController, Traffic, fresh_state, resumed
from gateway.rollout.observations import Recorder
from gateway.rollout.settings import RolloutSettings
from gateway.rollout.state import (
    Identity,
    RolloutState,
    load_state,
    save_state,
    transition_event,
    transitions_since,
)
from gateway.rollouts import rollout_plan, same_rollout
from gateway.webhook import Webhook

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Source:
    """The operator's routing file, parsed as a replica parses it and checked for what a fleet can carry out."""

    document: Mapping[str, Any]  # the YAML as loaded, rendered into the output with the plans written in
    config: GatewayConfig
    features: Features
    digest: str


def load_source(path: Path, *, output: Path) -> Source:
    """Read and check the source; ConfigError naming the file and key of the first fault."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the source routing config: {exc.strerror or exc}") from exc
    return parse_source(raw, path, output=output)


def parse_source(raw: bytes, path: Path, *, output: Path) -> Source:
    config = parse_config_bytes(raw, source=str(path), base_dir=path.parent)
    features = parse_features(config)
    check_supported(config, features)
    document = yaml.safe_load(raw)
    check_paths(document, source_path=path, output=output)
    return Source(document, config, features, hashlib.sha256(raw).hexdigest())


RecorderMaker = Callable[[Target], FleetRecorder]


class FleetController:
    """`start` once, then `check_once` every tick (tests call it with a fake clock and fake recorders)."""

    def __init__(
        self,
        settings: FleetSettings,
        prometheus: Querier,
        *,
        clock: Callable[[], float] = time.time,
        recorders: RecorderMaker | None = None,
        webhook: Webhook | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._webhook = webhook
        queries = FleetQueries(settings.prometheus.selector)
        self._make_recorder: RecorderMaker = recorders or (
            lambda target: PrometheusRecorder(target, prometheus, queries, clock=clock)
        )
        self._file = RoutingFile(settings.output)
        self._source: Source | None = None
        self._seen = ""  # the digest of the source file last read, taken up or rejected
        self._said: dict[str, str] = {}  # route -> its plan as last logged
        self._rendered: tuple[object, bytes | None] = (None, None)  # what the last render was of, and its bytes
        self._controllers: dict[str, RolloutController] = {}
        self.transitions: dict[tuple[str, str], int] = {}  # (route, phase entered) -> count, for the metrics
        self.dropped: dict[str, int] = {}  # the collector's protocol: a fleet source drops no samples
        self.rejected = 0  # source files refused since the start

    @property
    def controllers(self) -> Mapping[str, RolloutController]:
        """A copy: the metrics server reads it from its own thread while a reload may add or drop a rollout."""
        return dict(self._controllers)

    def start(self) -> None:
        """Load the source (ConfigError when it is bad: a controller must not start on a config it cannot carry
        out), take up each rollout (from its state file when it has one) and publish."""
        source = load_source(self._settings.source, output=self._settings.output)
        self._seen = source.digest
        self._adopt(source, self._clock())
        self._publish()

    async def check_once(self) -> None:
        """One look: a changed source is taken up, every due step judged, and the routing file published when the
        plans changed."""
        self._reload()
        for name, controller in list(self._controllers.items()):
            if not controller.due(self._clock()):
                continue
            try:
                evaluation = await asyncio.to_thread(_evaluate, controller)
            except PrometheusError as exc:  # no evidence either way: the step holds at its weights
                logger.error("rollout of route %s: no evaluation (%s); trying again in one interval", name, exc)
                controller.postpone(self._clock())
                continue
            except Exception:  # a surprise in one route's evaluation must not stop the others
                logger.exception("rollout of route %s: evaluation failed; trying again in one interval", name)
                controller.postpone(self._clock())
                continue
            if evaluation is None or self._controllers.get(name) is not controller:
                continue
            before = controller.state
            controller.apply(evaluation, self._clock())
            if logger.isEnabledFor(logging.DEBUG):
                verdicts = "; ".join(f"{r.name} {r.verdict} ({r.detail})" for r in controller.results)
                logger.debug("rollout of route %s: %s", name, verdicts)
            self._recorded(controller, before)
        self._publish()

    async def run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # the loop must outlive any surprise; the next tick tries again
                logger.exception("fleet controller tick failed")
            await asyncio.sleep(self._settings.tick)

    # --- the source --------------------------------------------------------------------------------------------

    def _reload(self) -> None:
        path = self._settings.source
        try:
            raw = path.read_bytes()
        except OSError as exc:
            logger.error("source %s cannot be read (%s); the rollouts go on as they were", path, exc)
            return
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self._seen:
            return
        self._seen = digest  # a rejected file is not tried again until it changes
        try:
            source = parse_source(raw, path, output=self._settings.output)
        except ConfigError as exc:
            self.rejected += 1
            logger.error("source rejected, the previous one stays in force: %s", exc)
            return
        logger.info("source %s changed: taking it up", path)
        self._adopt(source, self._clock())

    def _adopt(self, source: Source, now: float) -> None:
        """Start, continue, restart or end each route's rollout as the new source asks."""
        self._source = source
        wanted = {name: s for name, s in source.features.rollout.items() if s is not None}
        for name in [n for n in self._controllers if n not in wanted]:
            logger.info("rollout of route %s ended: its rollout block is gone; the source's weights apply", name)
            self._controllers.pop(name).close()
        for name, settings in wanted.items():
            identity = _identity(source.config, name, settings)
            controller = self._controllers.get(name)
            if controller is not None and same_rollout(controller.state, identity):
                before = controller.state
                controller.update_settings(settings, now)
                self._recorded(controller, before)
                continue
            stored = None if settings.state_file is None else load_state(settings.state_file)
            if stored is not None and stored.route == name and same_rollout(stored, identity):
                state = resumed(stored, now)
            else:
                why = "new rollout" if controller is None else "the candidate or baseline changed: a new rollout"
                state = fresh_state(name, identity, settings, now, f"{why}: {identity.describe()}")
            if controller is not None:
                controller.close()
            controller = RolloutController(settings, state, recorders=self._recorder_factory(name), now=now)
            self._controllers[name] = controller
            self._recorded(controller, None, since=now)

    def _recorder_factory(self, name: str) -> RecorderFactory:
        def make(controller: RolloutController, traffic: Traffic) -> Recorder | None:
            source = self._source
            if source is None:
                return None
            route = source.config.routes[name]
            settings = controller.settings
            plan = self._plan(source, name, settings, traffic)
            compare = source.features.shadow.get(name)
            kind = "auto" if compare is None else compare.compare.kind
            task: Task = "regression" if kind == "regression" else "classification"
            return self._make_recorder(
                Target(
                    route=name,
                    model=route.model,
                    candidate=settings.candidate,
                    candidate_version=str(route.versions[settings.candidate].version),
                    baseline=route.split.baseline,
                    baseline_version=str(route.versions[route.split.baseline].version),
                    shares=plan.shares(),
                    shadowing=traffic.shadow_percent > 0,
                    task=task,
                )
            )

        return make

    # --- publishing --------------------------------------------------------------------------------------------

    @staticmethod
    def _plan(source: Source, name: str, settings: RolloutSettings, traffic: Traffic) -> RoutePlan:
        route = source.config.routes[name]
        return rollout_plan(route, source.features.shadow.get(name), settings.candidate, traffic, None)

    def _publish(self) -> None:
        source = self._source
        if source is None:
            return
        plans = {
            name: self._plan(source, name, controller.settings, controller.traffic())
            for name, controller in self._controllers.items()
        }
        key = (
            source.digest,
            tuple(
                (name, plan.shares(), plan.baseline, plan.shadow_to, plan.shadow_percent, plan.order)
                for name, plan in sorted(plans.items())
            ),
        )
        current = self._file.read()
        if key == self._rendered[0] and current == self._rendered[1]:
            return  # nothing changed, and nobody wrote over the file: no need to render it again
        body = render(source.document, plans, source_path=self._settings.source)
        self._rendered = (key, body)
        if body == current:
            return
        check(body, output=self._settings.output)
        self._file.write(body)
        for name, plan in sorted(plans.items()):
            shares = ", ".join(f"{v} {s:.4g}" for v, s in plan.shares().items())
            shadow = f"; shadow {plan.shadow_percent:g}% to {plan.shadow_to}" if plan.shadow_to else ""
            line = f"{shares}{shadow}; baseline {plan.baseline}"
            if self._said.get(name) != line:
                logger.info("published %s: route %s: %s", self._settings.output, name, line)
                self._said[name] = line

    # --- after every change ------------------------------------------------------------------------------------

    def _recorded(self, controller: RolloutController, before: RolloutState | None, since: float | None = None) -> None:
        state = controller.state
        if state == before:
            return
        settings = controller.settings
        if settings.state_file is not None:
            try:
                save_state(settings.state_file, state)
            except OSError as exc:  # a full or read-only disk must not stop the rollout: it is said, loudly
                logger.error("rollout state %s cannot be written: %s", settings.state_file, exc)
        for entry in transitions_since(before, state, since):
            if entry.source == entry.target:
                continue
            key = (state.route, entry.target)
            self.transitions[key] = self.transitions.get(key, 0) + 1
            logger.info(
                "rollout of route %s: %s -> %s: %s", state.route, entry.source or "start", entry.target, entry.reason
            )
            if self._webhook is not None and settings.webhook_url is not None:
                self._webhook.notify(
                    settings.webhook_url, transition_event(state, entry.target, entry.reason, entry.at)
                )


def _evaluate(controller: RolloutController) -> Evaluation | None:
    """The controller's look at its step, with the fleet's own condition joined to the gates: every replica
    applies the step's weights (until then the step cannot pass, and its progress deadline says why)."""
    evaluation = controller.evaluate()
    recorder = controller.recorder
    if evaluation is None or not isinstance(recorder, FleetRecorder):
        return evaluation
    applied = recorder.replicas_result()
    if applied.verdict != "pass":  # nothing of the step is observed yet: no gate has anything to say
        return replace(evaluation, results=(applied,))
    return replace(evaluation, results=(*evaluation.results, applied))


def _identity(config: GatewayConfig, name: str, settings: RolloutSettings) -> Identity:
    """A rollout as the fleet tells it from another: its versions' names and repository numbers (no model is
    loaded here, so a model file replaced under the same number is the same rollout; publish a new number)."""
    route = config.routes[name]
    baseline = route.split.baseline
    return Identity(
        candidate=settings.candidate,
        candidate_version=route.versions[settings.candidate].version,
        candidate_model="",
        baseline=baseline,
        baseline_version=route.versions[baseline].version,
        baseline_model="",
    )
