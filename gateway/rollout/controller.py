"""One route's rollout: the state machine that walks a candidate from validation through its steps to promotion, or
rolls it back. It owns no thread and no timer: the manager ticks it with the time, which a test fakes.

```
candidate appears -> validating --fail--> failed
                        | pass (or no validate block)
                        v
     shadowing / progressing [step k] --gate failed x failure_limit, or step inconclusive past the deadline--> failed
                        | every gate passed, duration and min_requests met
                        v
                 step k + 1 ... last step passed --> succeeded (the candidate is the baseline at 100 %)
pause -> paused -> resume; promote -> succeeded; abort -> aborted; retry (failed, aborted) -> validating
```

Decisions, in order, at each evaluation of a step: any gate FAILED counts one failed check (at `failure_limit` the
rollout fails: the candidate's weight goes to 0 and every sticky user is back on the baseline); else, when every gate
has passed in this step (or is skipped), the step's duration has passed and the candidate has answered
`min_requests`, the next step begins; else, past the progress deadline (counted from the step's start) the rollout
fails; else it waits.

A gate that passed once in a step stays passed for that step: its test is always valid, so stopping at the first
look that shows the evidence keeps its level (that is what "always valid" buys), whereas asking every gate to pass at
the same look would wait on the noise of whichever fell back below its line. A failure is never latched away: a
gate that passed and later fails still counts a failed check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias, get_args

from gateway.errors import ConflictError
from gateway.rollout.gates import GateResult, evaluate
from gateway.rollout.observations import Recorder, StepObservations
from gateway.rollout.settings import RolloutSettings, Step
from gateway.rollout.state import MAX_HISTORY, Identity, Phase, RolloutState, Transition

Action: TypeAlias = Literal["pause", "resume", "promote", "abort", "retry"]
ACTIONS: tuple[Action, ...] = get_args(Action)


@dataclass(frozen=True, slots=True)
class Traffic:
    """What the rollout asks of the route's traffic now.

    `candidate_share` is the candidate's share of unpinned traffic (the other versions share the rest in the
    config's proportions); None means the config's weights apply as written (a hand edit while paused).
    `promoted`: the candidate is the baseline, alone."""

    candidate_share: float | None
    shadow_percent: float = 0.0
    promoted: bool = False


NO_TRAFFIC = Traffic(0.0)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One look at the current step (computed off the event loop, applied on it)."""

    epoch: int  # the observation window it read (see RolloutController.epoch)
    results: tuple[GateResult, ...]
    requests: int  # what the step's min_requests counts: the candidate's answered requests, or shadow copies
    observations: StepObservations


RecorderFactory: TypeAlias = Callable[["RolloutController", Traffic], Recorder | None]


def traffic_of(state: RolloutState | None, settings: RolloutSettings) -> Traffic:
    """The traffic a state asks for; a missing state (a rollout about to start) asks for none."""
    if state is None:
        return NO_TRAFFIC
    phase = state.phase
    if phase == "paused":
        if state.manual_weight is not None:
            return Traffic(None)
        phase = state.resume_to or "progressing"
    if phase in ("shadowing", "progressing"):
        step = settings.step(state.step)
        return Traffic(step.weight / 100.0, step.shadow)
    if phase == "succeeded":
        return Traffic(1.0, 0.0, promoted=True)
    return NO_TRAFFIC  # validating, failed, aborted


def _continue_at(steps: tuple[Step, ...], current: Step, index: int) -> int:
    """Where a rollout at `current` (index `index` of the old steps) continues in the new `steps`."""
    if index < len(steps) and steps[index] == current:
        return index
    lower = [i for i, step in enumerate(steps) if step.weight <= current.weight]
    return lower[-1] if lower else 0


def _step_phase(step: Step) -> Phase:
    return "shadowing" if step.kind == "shadow" else "progressing"


def fresh_state(route: str, identity: Identity, settings: RolloutSettings, now: float, reason: str) -> RolloutState:
    """A new rollout: validating when the route validates, else at its first step."""
    first = Transition(now, "", "validating", -1, reason)
    state = RolloutState(
        route, identity, "validating", started_at=now, step_started_at=now, reason=reason, history=(first,)
    )
    if settings.validate is None:
        step = settings.steps[0]
        state = state.moved(_step_phase(step), now, f"no validate block; step 1: {step.describe()}", step=0)
    return state


def resumed(state: RolloutState, now: float) -> RolloutState:
    """A stored state taken up again after a restart: a running step is observed afresh (what the process saw of it
    is gone), at the same step and weight, so traffic never jumps."""
    if state.phase in ("shadowing", "progressing"):
        return state.moved(
            state.phase, now, f"resumed after a restart at step {state.step + 1}, observed afresh",
            step_started_at=now,
        )  # fmt: skip
    return state


class RolloutController:
    def __init__(
        self,
        settings: RolloutSettings,
        state: RolloutState,
        *,
        recorders: RecorderFactory,
        closed: Callable[[Recorder], None] | None = None,
        now: float,
    ) -> None:
        self._settings = settings
        self._state = state
        self._recorders = recorders
        self._closed = closed  # told when a step's recorder is let go (its drop counts are kept by the caller)
        self.recorder: Recorder | None = None
        self.results: tuple[GateResult, ...] = ()  # the latest evaluation's
        self.requests = 0  # the latest evaluation's count towards min_requests
        self.validating = False  # a validation job is running
        self._passed: set[str] = set()  # gates that have passed in the current step
        self._looks = 0  # evaluations of the current observation window
        # Bumped whenever the observation window starts over (a step entered or restarted, a resume, a reload that
        # changes what is judged, a retry): an evaluation or validation that began before belongs to the old one.
        self.epoch = 0
        self._next = now
        self._renew_recorder()

    @property
    def state(self) -> RolloutState:
        return self._state

    @property
    def settings(self) -> RolloutSettings:
        return self._settings

    @property
    def route(self) -> str:
        return self._state.route

    def traffic(self) -> Traffic:
        return traffic_of(self._state, self._settings)

    def due(self, now: float) -> bool:
        return self._state.phase in ("shadowing", "progressing") and now >= self._next

    def postpone(self, now: float) -> None:
        """Look again one interval from now (an evaluation that failed)."""
        self._next = now + self._settings.interval

    # --- evaluation --------------------------------------------------------------------------------------------

    def evaluate(self) -> Evaluation | None:
        """Read the step's observations and judge every gate. Thread-safe against the event loop (the recorder's
        read is); None when no step is being observed."""
        recorder, state = self.recorder, self._state
        if recorder is None or state.phase not in ("shadowing", "progressing"):
            return None
        epoch = self.epoch
        step = self._settings.step(state.step)
        observations = recorder.read()
        results = evaluate(self._settings.gates, step, observations, look=self._looks + 1)
        requests = observations.candidate.requests if step.weight > 0 else observations.shadow.answered
        return Evaluation(epoch, results, requests, observations)

    def apply(self, evaluation: Evaluation, now: float) -> bool:
        """Act on an evaluation; True when the phase or the step changed (the traffic plan must be republished)."""
        state, settings = self._state, self._settings
        self._next = now + settings.interval
        if state.phase not in ("shadowing", "progressing") or evaluation.epoch != self.epoch:
            return False  # the window moved (an admin action, a reload) while the evaluation ran
        self._looks += 1
        results = self._latched(evaluation.results)
        self.results, self.requests = results, evaluation.requests
        step = settings.step(state.step)
        number = f"step {state.step + 1} of {len(settings.steps)} ({step.describe()})"
        failed = [r for r in results if r.verdict == "fail"]
        if failed:
            checks = state.failed_checks + 1
            what = "; ".join(r.describe() for r in failed)
            if checks >= settings.failure_limit:
                return self._finish(
                    "failed", now, f"rolled back at {number}: {checks} failed checks, last: {what}", checks
                )
            self._state = dataclasses.replace(state, failed_checks=checks, reason=f"failed check {checks}: {what}")
            return False
        elapsed = now - state.step_started_at
        waiting = [r for r in results if r.verdict == "inconclusive"]
        ready = not waiting and elapsed >= step.duration and evaluation.requests >= step.min_requests
        if ready:
            if state.step + 1 >= len(settings.steps):
                return self._finish("succeeded", now, f"promoted: every step passed, last {number}")
            return self._enter(state.step + 1, now, f"{number} passed")
        if elapsed >= settings.progress_deadline:
            why = "; ".join(f"{r.name}: {r.detail}" for r in waiting) or (
                f"{evaluation.requests} of {step.min_requests} requests" if evaluation.requests < step.min_requests
                else "duration"
            )  # fmt: skip
            return self._finish("failed", now, f"progress deadline passed at {number}, still waiting on: {why}")
        return False

    def _latched(self, results: tuple[GateResult, ...]) -> tuple[GateResult, ...]:
        out = []
        for result in results:
            if result.verdict == "pass":
                self._passed.add(result.name)
            elif result.verdict == "inconclusive" and result.name in self._passed:
                result = dataclasses.replace(
                    result, verdict="pass", detail=f"{result.detail}; passed earlier in the step"
                )
            out.append(result)
        return tuple(out)

    # --- transitions -------------------------------------------------------------------------------------------

    def validated(
        self, passed: bool, summary: str, report: dict[str, object] | None, now: float, epoch: int | None = None
    ) -> bool:
        """The validation job's outcome. Ignored unless the rollout is still validating the same attempt (`epoch`,
        when given, is the one the job started in: an abort and retry meanwhile starts another attempt)."""
        if epoch is not None and epoch != self.epoch:
            return False
        self.validating = False
        state = self._state
        if state.phase != "validating":
            return False
        state = dataclasses.replace(state, validation=report)
        if not passed:
            self._state = state
            return self._finish("failed", now, summary)
        first = self._settings.steps[0]
        self._state = state
        return self._enter(0, now, f"{summary}; step 1: {first.describe()}")

    def act(self, action: Action, now: float) -> None:
        """An operator's action; ConflictError when the phase does not allow it."""
        state = self._state
        phase = state.phase
        if action == "pause":
            if phase not in ("shadowing", "progressing"):
                raise ConflictError(f"rollout of route '{self.route}' is {phase}; only a running step can be paused")
            self._state = state.moved("paused", now, "paused by an operator", resume_to=phase)
            self._new_window(now, observe=False)  # a paused step judges nothing: its taps and shadow sink go
        elif action == "resume":
            if phase != "paused":
                raise ConflictError(f"rollout of route '{self.route}' is {phase}, not paused")
            resumed = state.resume_to or _step_phase(self._settings.step(state.step))
            self._state = state.moved(
                resumed, now, "resumed by an operator", resume_to=None, manual_weight=None, step_started_at=now
            )
            self._new_window(now)
        elif action == "promote":
            if phase == "succeeded":
                raise ConflictError(f"rollout of route '{self.route}' has already succeeded")
            self._finish("succeeded", now, f"promoted by an operator (was {phase})")
        elif action == "abort":
            if not state.active:
                raise ConflictError(f"rollout of route '{self.route}' is {phase}; nothing to abort")
            self._finish("aborted", now, f"aborted by an operator (was {phase})")
        elif action == "retry":
            if phase not in ("failed", "aborted"):
                raise ConflictError(f"rollout of route '{self.route}' is {phase}; only a failed or aborted one retries")
            self.restart(state.identity, now, "retried by an operator")
        else:  # pragma: no cover - the endpoints check the action
            raise ConflictError(f"unknown action {action!r}")

    def hand_edit(self, weight: float, now: float) -> None:
        """The candidate's weight was edited in the config file mid-rollout: the operator takes over. The rollout
        pauses and the file's weights apply until `resume` hands the weights back to the rollout."""
        state = self._state
        if state.phase in ("shadowing", "progressing"):
            self._state = state.moved(
                "paused", now, f"candidate weight edited by hand to {weight:g}: paused, the file's weights apply",
                resume_to=state.phase, manual_weight=weight,
            )  # fmt: skip
            self._new_window(now, observe=False)
        elif state.phase == "paused":
            self._state = dataclasses.replace(state, manual_weight=weight)

    def restart(self, identity: Identity, now: float, reason: str) -> None:
        """Start over from validation (a retry): the earlier attempts stay in the history."""
        old = self._state
        fresh = fresh_state(self.route, identity, self._settings, now, reason)
        first = dataclasses.replace(fresh.history[0], source=old.phase)
        history = (*old.history, first, *fresh.history[1:])[-MAX_HISTORY:]
        self._state = dataclasses.replace(fresh, history=history)
        self.results, self.requests, self.validating = (), 0, False
        self._new_window(now)

    def update_settings(self, settings: RolloutSettings, now: float) -> bool:
        """A reload changed the steps, gates or timings: continue from the current step. True when the traffic plan
        changed.

        If the steps changed, the rollout continues at the last new step whose weight is at most the current one (the
        same step when it is still there), so a reload does not raise the candidate's traffic past a step it could
        be judged at; when every new step is above the current weight, at the first new step, as the file asks.
        If what the current step is judged on changed (its step or the gates), its observation starts over: a gate
        that passed against the old threshold must pass again against the new one.
        """
        before, old = self.traffic(), self._settings
        self._settings = settings
        state = self._state
        current = old.step(state.step) if state.step >= 0 else None
        if settings.steps != old.steps and state.step >= 0 and current is not None:
            index = _continue_at(settings.steps, current, state.step)
            if index != state.step:
                self._state = dataclasses.replace(state, step=index)
        self._next = min(self._next, now + settings.interval)
        judged_anew = settings.gates != old.gates or (
            state.step >= 0 and current is not None and settings.step(self._state.step) != current
        )
        changed = self.traffic() != before
        if (changed or judged_anew) and self._state.phase in ("shadowing", "progressing"):
            self._state = dataclasses.replace(self._state, step_started_at=now)
            self._new_window(now)
        return changed

    def _enter(self, index: int, now: float, reason: str) -> bool:
        step = self._settings.steps[index]
        self._state = self._state.moved(_step_phase(step), now, reason, step=index, step_started_at=now)
        self.results, self.requests = (), 0
        self._next = now + self._settings.interval
        self._new_window(now)
        return True

    def _new_window(self, now: float, *, observe: bool = True) -> None:
        """Start the observation over: a new epoch, nothing latched, no looks yet, a fresh recorder (or none)."""
        self.epoch += 1
        self._passed.clear()
        self._looks = 0
        if observe:
            self._renew_recorder()
        else:
            self._replace_recorder(None)

    def _finish(self, phase: Phase, now: float, reason: str, failed_checks: int | None = None) -> bool:
        checks = self._state.failed_checks if failed_checks is None else failed_checks
        self._state = self._state.moved(phase, now, reason, failed_checks=checks, resume_to=None, manual_weight=None)
        self._new_window(now, observe=False)
        return True

    def _renew_recorder(self) -> None:
        observing = self._state.phase in ("shadowing", "progressing")
        self._replace_recorder(self._recorders(self, self.traffic()) if observing else None)

    def _replace_recorder(self, recorder: Recorder | None) -> None:
        old, self.recorder = self.recorder, recorder
        if old is not None and self._closed is not None:
            self._closed(old)

    def close(self) -> None:
        """The rollout is dropped (its block removed, or restarted): let its recorder go."""
        self._replace_recorder(None)
