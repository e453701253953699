"""Every route's rollout, tied to the gateway (as monitoring.py ties drift to it): which controllers exist (kept in
step with each config generation), the traffic plan each asks for (the publisher applies it to every snapshot), the
tick that evaluates their gates, the validation jobs, the state files, the webhook and the admin actions. The
rollout/ package holds the parts (settings, controller, gates, statistics, validation, state) and knows nothing of
generations or snapshots.

Decisions are published by swapping a new snapshot (`republish`), so a rollback reaches every new request at once.
Gate evaluation and validation run in worker threads; state changes happen on the event loop only; state files
are written by one writer thread, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.config import RouteConfig
from gateway.dataplane import Served
from gateway.drift.monitor import DriftMonitor
from gateway.drift.profile import Profile
from gateway.drift.settings import DriftSettings
from gateway.errors import UnknownModelError
from gateway.experiment.hub import Experiments
from gateway.generation import Generation
from gateway.plan import RoutePlan, config_plan
from gateway.prediction import PredictionError, PredictionReader, reader_for
from gateway.rollout.controller import (
    Action,
    RolloutController,
    Traffic,
    fresh_state,
    resumed,
    traffic_of,
)
from gateway.rollout.observations import FeedbackVerdict, LocalRecorder, Recorder, Side
from gateway.rollout.settings import RolloutSettings, Validation
from gateway.rollout.state import (
    Identity,
    Phase,
    RolloutState,
    load_state,
    save_state,
    transition_event,
    transitions_since,
)
from gateway.rollout.timing import child_timer
from gateway.rollout.validation import ValidationReport, validate_candidate
from gateway.shadow.settings import DEFAULT as DEFAULT_SHADOW, CompareSettings, ShadowSettings
from gateway.webhook import Webhook

logger = logging.getLogger(__name__)

SHADOW_STEP_BASELINE_RATE = 0.01  # a shadow step judges the paired copies; the baseline's tap only needs a trickle


@dataclass(frozen=True, slots=True)
class ValidationJob:
    """What a validation run needs; it runs in a worker thread."""

    route: str
    candidate: Served
    baseline: Served
    settings: Validation
    reader: PredictionReader
    compare: CompareSettings
    profile: Profile | None
    drift: DriftSettings
    feature_names: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class ValidationOutcome:
    passed: bool
    summary: str
    report: dict[str, Any] = field(default_factory=dict)


Validator = Callable[[ValidationJob], ValidationOutcome]


def validation_report(job: ValidationJob) -> ValidationReport:
    """Every check of gateway/rollout/validation.py on the job's golden set (blocking: a worker thread's work)."""
    return validate_candidate(
        job.candidate.backend, job.baseline.backend, job.settings, reader=job.reader, compare=job.compare,
        profile=job.profile, drift=job.drift, feature_names=job.feature_names, timer=child_timer,
    )  # fmt: skip


def validate_job(job: ValidationJob) -> ValidationOutcome:
    """The default validator."""
    report = validation_report(job)
    return ValidationOutcome(report.passed, report.summary(), report.to_json())


class Republish(Protocol):
    def __call__(self) -> None: ...


def identity_of(generation: Generation, route: str, settings: RolloutSettings) -> Identity | None:
    """The rollout's identity in this generation; None when the candidate or the baseline is not loaded."""
    config = generation.config.routes[route]
    candidate = _loaded(generation, config, settings.candidate)
    baseline = _loaded(generation, config, config.split.baseline)
    if candidate is None or baseline is None:
        return None
    return Identity(
        candidate=settings.candidate,
        candidate_version=candidate[0],
        candidate_model=candidate[1],
        baseline=config.split.baseline,
        baseline_version=baseline[0],
        baseline_model=baseline[1],
    )


def _loaded(generation: Generation, route: RouteConfig, name: str) -> tuple[int | str, str] | None:
    version = route.versions[name].version
    loaded = generation.loaded.get((route.model, version))
    if loaded is None:
        return None
    return version, loaded.digest  # by content: a model file touched, re-synced or restored is the same model


def same_rollout(state: RolloutState, identity: Identity) -> bool:
    """Whether `state` is the rollout `identity` describes. Once promoted only the candidate matters: the old
    baseline serves nothing any more, and a change to it must not start the rollout over (and send everyone back to
    it)."""
    if state.phase == "succeeded":
        mine, theirs = state.identity, identity
        return (mine.candidate, mine.candidate_version, mine.candidate_model) == (
            theirs.candidate,
            theirs.candidate_version,
            theirs.candidate_model,
        )
    return state.identity == identity


def rollout_plan(
    route: RouteConfig, shadow: ShadowSettings | None, candidate: str, traffic: Traffic, recorder: Recorder | None
) -> RoutePlan:
    """The route's plan while a rollout steers it.

    The candidate's share comes out of the baseline's; only once the baseline has none left do the route's other
    versions give up theirs, in proportion. The candidate is laid out next to the baseline, so with the sticky
    bucket layout a rising share moves users from the baseline to the candidate only, never between other versions.
    """
    base = config_plan(route, shadow)
    shadow_to, percent = base.shadow_to, base.shadow_percent
    if traffic.shadow_percent > 0:
        shadow_to, percent = candidate, traffic.shadow_percent
    elif shadow_to == candidate:  # the rollout owns the candidate's shadow: off outside its shadow steps
        shadow_to, percent = None, 0.0
    baseline = route.split.baseline
    order = (*(name for name in route.versions if name not in (candidate, baseline)), candidate, baseline)
    weights: dict[str, float] = {name: route.split.weights.get(name, 0.0) for name in order}
    if traffic.promoted:
        weights = {name: 0.0 for name in order}
        weights[candidate] = 1.0
        baseline = candidate
    elif traffic.candidate_share is not None:
        share = traffic.candidate_share
        others = {name: w for name, w in weights.items() if name != candidate}
        total = sum(others.values())
        if total <= 0:
            others, total = {baseline: 1.0}, 1.0
        shares = {name: w / total for name, w in others.items()}
        if share <= shares.get(baseline, 0.0):
            shares[baseline] = shares.get(baseline, 0.0) - share
        else:  # more than the baseline had: the others give up the rest, in proportion
            rest = 1.0 - shares.get(baseline, 0.0)
            shares = {name: (0.0 if name == baseline else v * (1.0 - share) / rest) for name, v in shares.items()}
        weights = {name: shares.get(name, 0.0) for name in order}
        weights[candidate] = share
    taps = dict(recorder.taps) if recorder is not None else {}
    # Only copies to the candidate are the rollout's evidence; a shadow the config keeps on another version is not.
    sink = recorder.sink if recorder is not None and shadow_to == candidate else None
    return RoutePlan(weights, baseline, shadow_to, percent, taps, sink, order=order)


class RolloutManager:
    def __init__(
        self,
        *,
        validator: Validator,
        clock: Callable[[], float] = time.time,
        monitor: DriftMonitor | None = None,
        webhook: Webhook | None = None,
        random: Callable[[], float],
        experiments: Experiments | None = None,
    ) -> None:
        self._experiments = experiments
        self._validator = validator
        self._clock = clock
        self._monitor = monitor
        self._webhook = webhook
        self._random = random
        self._republish: Republish | None = None
        self._generation: Generation | None = None
        self._controllers: dict[str, RolloutController] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-state")
        self._writes: set[Future[None]] = set()
        self.transitions: dict[tuple[str, str], int] = {}  # (route, phase entered) -> count, for the metrics
        self.dropped: dict[str, int] = {}  # route -> tap samples and shadow results lost in finished steps

    def attach(self, republish: Republish) -> None:
        self._republish = republish

    @property
    def controllers(self) -> Mapping[str, RolloutController]:
        return self._controllers

    # --- planning (called by the publisher whenever a snapshot is built) ---------------------------------------

    def plan(self, generation: Generation) -> dict[str, RoutePlan]:
        plans: dict[str, RoutePlan] = {}
        for name, settings in generation.features.rollout.items():
            if settings is None:
                continue
            route = generation.config.routes[name]
            controller = self._controllers.get(name)
            identity = identity_of(generation, name, settings)
            state: RolloutState | None
            recorder: Recorder | None = None
            if controller is not None and identity is not None and same_rollout(controller.state, identity):
                state, recorder = controller.state, controller.recorder
                settings = controller.settings
            else:
                # Not synced yet (start-up, or a reload in flight): what the state file says, so a restart resumes at
                # the same weight; a different or new candidate gets no traffic until its rollout begins.
                state = self._stored(settings, name, identity)
            traffic = traffic_of(state, settings)
            plans[name] = rollout_plan(
                route, generation.features.shadow.get(name), settings.candidate, traffic, recorder
            )
        return plans

    def _stored(self, settings: RolloutSettings, route: str, identity: Identity | None) -> RolloutState | None:
        if identity is None or settings.state_file is None:
            return None
        state = load_state(settings.state_file)
        if state is None or state.route != route or not same_rollout(state, identity):
            return None
        return state

    # --- keeping controllers in step with the config ------------------------------------------------------------

    def sync(self, generation: Generation, previous: Generation | None = None) -> None:
        """A new generation is serving: start, restart, continue or end each route's rollout, then republish."""
        now = self._clock()
        self._generation = generation
        wanted = {name: s for name, s in generation.features.rollout.items() if s is not None}
        for name in list(self._controllers):
            if name not in wanted:
                self._warn_if_unpromoted(name, generation)
                logger.info("rollout of route %s ended: its rollout block is gone", name)
                self._retire(name)
        for name, settings in wanted.items():
            identity = identity_of(generation, name, settings)
            controller = self._controllers.get(name)
            if identity is None:
                logger.error("rollout of route %s cannot run: its candidate or baseline is not loaded", name)
                if controller is not None:
                    self._retire(name)
                continue
            if controller is not None and same_rollout(controller.state, identity):
                before = controller.state
                controller.update_settings(settings, now)
                self._hand_edit(controller, generation, previous, now)
                self._recorded(controller, before)
                continue
            stored = self._stored(settings, name, identity)
            if stored is not None:
                state = resumed(stored, now)
            else:
                why = "new rollout" if controller is None else "the candidate or baseline changed: a new rollout"
                state = fresh_state(name, identity, settings, now, f"{why}: {identity.describe()}")
            if controller is not None:
                self._retire(name)
            controller = RolloutController(
                settings, state, recorders=self._recorder_factory(name), closed=self._closed(name), now=now
            )
            self._controllers[name] = controller
            self._recorded(controller, None, since=now)
        self.republish()

    def _warn_if_unpromoted(self, name: str, generation: Generation) -> None:
        """A promoted rollout whose block is removed while the file still routes elsewhere sends every user back to
        the old baseline: that is what the file says, but rarely what was meant."""
        state = self._controllers[name].state
        route = generation.config.routes.get(name)
        if state.phase != "succeeded" or route is None:
            return
        candidate = state.identity.candidate
        others = sum(w for v, w in route.split.weights.items() if v != candidate)
        if route.split.baseline != candidate or others > 0:
            logger.warning(
                "rollout of route %s ended after promoting %s, but the file routes traffic elsewhere: it now serves as"
                " the file says; to keep %s, make it the baseline with all the weight in the same change",
                name, candidate, candidate,
            )  # fmt: skip

    def _hand_edit(
        self, controller: RolloutController, generation: Generation, previous: Generation | None, now: float
    ) -> None:
        """Writing the candidate's weight into the file, or changing it there, hands the weights to the file: the
        rollout pauses (see RolloutController.hand_edit). An unchanged file leaves the rollout in charge."""
        if previous is None:
            return
        name, candidate = controller.route, controller.settings.candidate
        old = previous.config.routes.get(name)
        if old is None:
            return
        new = generation.config.routes[name].split
        before = (candidate in old.split.written, old.split.weights.get(candidate, 0.0))
        after = (candidate in new.written, new.weights.get(candidate, 0.0))
        if before != after and after[0] and controller.state.active:
            controller.hand_edit(after[1], now)

    def _retire(self, name: str) -> None:
        self._controllers.pop(name).close()

    def _closed(self, name: str) -> Callable[[Recorder], None]:
        def closed(recorder: Recorder) -> None:
            if isinstance(recorder, LocalRecorder):
                self.dropped[name] = self.dropped.get(name, 0) + recorder.lost

        return closed

    def _recorder_factory(self, name: str) -> Callable[[RolloutController, Traffic], Recorder | None]:
        def make(controller: RolloutController, traffic: Traffic) -> Recorder | None:
            generation = self._generation
            if generation is None:
                return None
            route = generation.config.routes.get(name)
            if route is None:
                return None
            candidate = self._served(generation, route, controller.settings.candidate)
            baseline = self._served(generation, route, route.split.baseline)
            if candidate is None or baseline is None:
                return None
            share = traffic.candidate_share or 0.0
            base_share = (1.0 - share) * _config_share(
                route, route.split.baseline, exclude=controller.settings.candidate
            )
            base_rate = SHADOW_STEP_BASELINE_RATE if share <= 0 else min(1.0, share / base_share) if base_share else 1.0
            return LocalRecorder(
                Side(controller.settings.candidate, candidate.metrics, candidate.drift_key),
                Side(route.split.baseline, baseline.metrics, baseline.drift_key),
                reader=self._reader(generation, name, candidate),
                candidate_rate=1.0,
                baseline_rate=max(base_rate, SHADOW_STEP_BASELINE_RATE),
                monitor=self._monitor,
                random=self._random,
                feedback=self._feedback_verdict(name, route.split.baseline, controller.settings.candidate),
            )

        return make

    def _feedback_verdict(self, route: str, baseline: str, candidate: str) -> Callable[[], FeedbackVerdict] | None:
        experiments = self._experiments
        if experiments is None:
            return None

        def read() -> FeedbackVerdict:
            return FeedbackVerdict(*experiments.verdict(route, baseline, candidate))

        return read

    @staticmethod
    def _served(generation: Generation, route: RouteConfig, name: str) -> Served | None:
        loaded = generation.loaded.get((route.model, route.versions[name].version))
        return None if loaded is None else loaded.served

    @staticmethod
    def _reader(generation: Generation, name: str, served: Served) -> PredictionReader:
        compare = (generation.features.shadow.get(name) or DEFAULT_SHADOW).compare
        try:
            return reader_for(served.backend.signature, compare.kind, compare.output)
        except PredictionError as exc:
            first = served.backend.signature.outputs[0].name
            logger.error("routes.%s: cannot read predictions (%s); comparing output %s as values", name, exc, first)
            return PredictionReader("regression", first)

    # --- ticking -----------------------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Start pending validations and evaluate every step that is due. Tests call this with a fake clock."""
        for name, controller in list(self._controllers.items()):
            try:
                if controller.state.phase == "validating" and not controller.validating:
                    self._start_validation(name, controller)
                elif controller.due(self._clock()):
                    evaluation = await asyncio.to_thread(controller.evaluate)
                    if evaluation is None or self._controllers.get(name) is not controller:
                        continue
                    before = controller.state
                    changed = controller.apply(evaluation, self._clock())
                    self._recorded(controller, before, republish=changed)
            except Exception:  # one route's fault must not stop the others' rollouts, nor repeat every tick
                logger.exception("rollout of route %s: evaluation failed; trying again in one interval", name)
                controller.postpone(self._clock())

    async def idle(self) -> None:
        """Wait for the validation jobs running now (tests)."""
        while self._jobs:
            await asyncio.gather(*list(self._jobs), return_exceptions=True)

    async def run(self, period: float = 0.25) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the loop must outlive any surprise; the next tick tries again
                logger.exception("rollout tick failed")
            await asyncio.sleep(period)

    def _start_validation(self, name: str, controller: RolloutController) -> None:
        controller.validating = True
        before = controller.state
        if controller.settings.validate is None:  # the block was removed by a reload (or after a restart)
            controller.validated(True, "no validate block", None, self._clock())
            self._recorded(controller, before)
            return
        job = self._job(name, controller)
        if job is None:
            controller.validated(
                False, "validation failed: the candidate or the baseline is not loaded", None, self._clock()
            )
            self._recorded(controller, before)
            return
        task = asyncio.get_running_loop().create_task(self._validate(controller, job, controller.epoch))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _validate(self, controller: RolloutController, job: ValidationJob, epoch: int) -> None:
        try:
            outcome = await asyncio.to_thread(self._validator, job)
        except Exception as exc:
            logger.exception("rollout of route %s: validation crashed", job.route)
            outcome = ValidationOutcome(False, f"validation failed: {type(exc).__name__}: {exc}")
        if self._controllers.get(job.route) is not controller:
            return  # the rollout restarted or ended meanwhile
        before = controller.state
        controller.validated(outcome.passed, outcome.summary, outcome.report, self._clock(), epoch)
        self._recorded(controller, before)

    def _job(self, name: str, controller: RolloutController) -> ValidationJob | None:
        generation = self._generation
        if generation is None:
            return None
        return validation_job(generation, name, controller.settings)

    # --- operator actions --------------------------------------------------------------------------------------

    def controller(self, route: str) -> RolloutController:
        """The rollout of `route`; UnknownModelError naming the routes that have one."""
        controller = self._controllers.get(route)
        if controller is None:
            raise UnknownModelError(
                f"route '{route}' has no rollout (routes with one: {', '.join(sorted(self._controllers)) or 'none'})"
            )
        return controller

    def act(self, route: str, action: Action) -> dict[str, Any]:
        controller = self.controller(route)
        before = controller.state
        controller.act(action, self._clock())
        self._recorded(controller, before, republish=True)
        return self.status_of(controller)

    # --- after every change ------------------------------------------------------------------------------------

    def _recorded(
        self,
        controller: RolloutController,
        before: RolloutState | None,
        *,
        republish: bool = False,
        since: float | None = None,
    ) -> None:
        """Persist, count, notify and republish what changed since `before` (a new controller: since `since`)."""
        state = controller.state
        if state == before:
            return
        settings = controller.settings
        if settings.state_file is not None:
            self._write(settings.state_file, state)
        for entry in transitions_since(before, state, since):
            if entry.source != entry.target:
                key = (state.route, entry.target)
                self.transitions[key] = self.transitions.get(key, 0) + 1
                logger.info(
                    "rollout of route %s: %s -> %s: %s",
                    state.route,
                    entry.source or "start",
                    entry.target,
                    entry.reason,
                )
                self._notify(controller, entry.target, entry.reason, entry.at)
        moved = before is None or (state.phase, state.step, state.manual_weight) != (
            before.phase,
            before.step,
            before.manual_weight,
        )
        if republish or moved:
            self.republish()

    def _notify(self, controller: RolloutController, phase: str, reason: str, at: float) -> None:
        url = controller.settings.webhook_url
        if self._webhook is None or url is None:
            return
        self._webhook.notify(url, transition_event(controller.state, phase, reason, at))

    def _write(self, path: Path, state: RolloutState) -> None:
        future = self._writer.submit(_save, path, state)
        self._writes.add(future)
        future.add_done_callback(self._writes.discard)

    def republish(self) -> None:
        if self._republish is not None:
            self._republish()

    async def flush(self) -> None:
        """Wait for every state file write queued so far."""
        pending = list(self._writes)
        if pending:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in pending), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._jobs):
            task.cancel()
        await asyncio.gather(*list(self._jobs), return_exceptions=True)
        await self.flush()
        self._writer.shutdown(wait=True)

    # --- status ------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {"rollouts": [self.status_of(c) for _, c in sorted(self._controllers.items())]}

    def status_of(self, controller: RolloutController) -> dict[str, Any]:
        state, settings = controller.state, controller.settings
        now = self._clock()
        identity = state.identity
        step: dict[str, Any] | None = None
        if state.step >= 0 and state.active:
            current = settings.step(state.step)
            step = {
                "index": state.step + 1,
                "of": len(settings.steps),
                "weight": current.weight,
                "shadow": current.shadow,
                "duration": current.duration,
                "min_requests": current.min_requests,
                "requests": controller.requests,
                "started_at": state.step_started_at,
                "elapsed": max(0.0, now - state.step_started_at),
            }
        plan = self._current_plan(controller)
        return {
            "route": state.route,
            "phase": state.phase,
            "reason": state.reason,
            "candidate": {"name": identity.candidate, "version": identity.candidate_version},
            "baseline": {"name": identity.baseline, "version": identity.baseline_version},
            "step": step,
            "weights": None if plan is None else plan.shares(),
            "shadow": None
            if plan is None or plan.shadow_to is None
            else {"to": plan.shadow_to, "percent": plan.shadow_percent},
            "failed_checks": state.failed_checks,
            "failure_limit": settings.failure_limit,
            "interval": settings.interval,
            "progress_deadline": settings.progress_deadline,
            "started_at": state.started_at,
            "gates": [r.to_json() for r in controller.results],
            "validation": state.validation,
            "history": [t.to_json() for t in state.history],
            "state_file": None if settings.state_file is None else str(settings.state_file),
        }

    def _current_plan(self, controller: RolloutController) -> RoutePlan | None:
        generation = self._generation
        if generation is None or controller.route not in generation.config.routes:
            return None
        route = generation.config.routes[controller.route]
        shadow = generation.features.shadow.get(controller.route)
        return rollout_plan(route, shadow, controller.settings.candidate, controller.traffic(), controller.recorder)

    def phases(self) -> dict[str, Phase]:
        return {name: c.state.phase for name, c in self._controllers.items()}


def validation_job(generation: Generation, name: str, settings: RolloutSettings) -> ValidationJob | None:
    """Route `name`'s validation job in `generation`: None without a validate block, or when the candidate or the
    baseline is not loaded. `gateway validate` builds its jobs here too, so it checks what the gateway would."""
    if settings.validate is None:
        return None
    route = generation.config.routes[name]
    candidate = RolloutManager._served(generation, route, settings.candidate)
    baseline = RolloutManager._served(generation, route, route.split.baseline)
    if candidate is None or baseline is None:
        return None
    names = candidate.source.metadata.get("feature_names")
    features = tuple(str(n) for n in names) if isinstance(names, list | tuple) else None
    return ValidationJob(
        route=name, candidate=candidate, baseline=baseline, settings=settings.validate,
        reader=RolloutManager._reader(generation, name, candidate),
        compare=(generation.features.shadow.get(name) or DEFAULT_SHADOW).compare,
        profile=candidate.profile, drift=generation.features.drift[name], feature_names=features,
    )  # fmt: skip


def _config_share(route: RouteConfig, name: str, *, exclude: str) -> float:
    others = {n: w for n, w in route.split.weights.items() if n != exclude}
    total = sum(others.values())
    if total <= 0:
        return 1.0 if name == route.split.baseline else 0.0
    return others.get(name, 0.0) / total


def _save(path: Path, state: RolloutState) -> None:
    try:
        save_state(path, state)
    except OSError as exc:  # a read-only or full disk must not stop the rollout: it is said, loudly
        logger.error("rollout state %s cannot be written: %s", path, exc)
