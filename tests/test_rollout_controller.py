"""The rollout state machine on a fake clock: every transition, failure_limit, inconclusive steps and the progress
deadline, operator actions, hand edits, hot-reloaded settings and the state file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest

from gateway.errors import ConflictError
from gateway.rollout.controller import (
    Evaluation,
    RolloutController,
    Traffic,
    fresh_state,
    traffic_of,
)
from gateway.rollout.gates import GateResult, GateVerdict
from gateway.rollout.observations import Arm, DriftVerdict, Recorder, ShadowArm, StepObservations
from gateway.rollout.settings import Gates, RolloutSettings, Step, Validation
from gateway.rollout.state import Identity, load_state, save_state, state_from_json
from gateway.shadow.runner import Sink
from gateway.tap import Tap

IDENTITY = Identity("canary", 2, "10:1", "stable", 1, "10:2")
STEPS = (
    Step(shadow=100, duration=30, min_requests=500),
    Step(weight=5, duration=60, min_requests=500),
    Step(weight=50, duration=60, min_requests=1000),
    Step(weight=100, duration=30),
)
SETTINGS = RolloutSettings(
    candidate="canary", steps=STEPS, validate=Validation(), interval=5, failure_limit=2, progress_deadline=600
)
OBSERVATIONS = StepObservations("classification", Arm(), Arm(), ShadowArm(), DriftVerdict())


class FakeRecorder:
    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic

    @property
    def taps(self) -> dict[str, Tap]:
        return {}

    @property
    def sink(self) -> Sink | None:
        return None

    def read(self) -> StepObservations:
        return OBSERVATIONS


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def recorders(controller: RolloutController, traffic: Traffic) -> Recorder:
    return FakeRecorder(traffic)


def make(settings: RolloutSettings = SETTINGS, clock: Clock | None = None) -> tuple[RolloutController, Clock]:
    clock = clock or Clock()
    state = fresh_state("bc", IDENTITY, settings, clock.now, "new rollout")
    return RolloutController(settings, state, recorders=recorders, now=clock.now), clock


def phase(controller: RolloutController) -> str:
    return controller.state.phase  # a call: mypy must not narrow the phase across transitions


def gates(*verdicts: GateVerdict) -> tuple[GateResult, ...]:
    return tuple(GateResult(f"g{i}", v, 0.0, 1.0, 10, "detail") for i, v in enumerate(verdicts))


def look(controller: RolloutController, clock: Clock, *verdicts: GateVerdict, requests: int = 10_000) -> bool:
    evaluation = Evaluation(controller.epoch, gates(*verdicts), requests, OBSERVATIONS)
    return controller.apply(evaluation, clock.now)


def validated(controller: RolloutController, clock: Clock) -> None:
    assert controller.validated(True, "validation passed", {"checks": []}, clock.now)


def test_a_new_rollout_validates_first_and_gives_the_candidate_no_traffic() -> None:
    controller, _ = make()
    assert phase(controller) == "validating"
    assert controller.traffic() == Traffic(0.0)
    assert controller.recorder is None  # nothing to observe before live traffic


def test_without_a_validate_block_it_starts_at_the_first_step() -> None:
    controller, _ = make(dataclasses.replace(SETTINGS, validate=None))
    assert phase(controller) == "shadowing" and controller.state.step == 0
    assert controller.traffic() == Traffic(0.0, 100.0)
    assert controller.recorder is not None


def test_a_failed_validation_fails_the_rollout_and_keeps_the_candidate_dark() -> None:
    controller, clock = make()
    assert controller.validated(False, "validation failed: accuracy 0.819 < 0.900", {"checks": []}, clock.now)
    assert phase(controller) == "failed"
    assert "accuracy 0.819" in controller.state.reason
    assert controller.state.validation == {"checks": []}
    assert controller.traffic() == Traffic(0.0)


def test_steps_advance_only_when_every_gate_passed_the_duration_elapsed_and_min_requests_served() -> None:
    controller, clock = make()
    validated(controller, clock)
    assert phase(controller) == "shadowing" and controller.traffic() == Traffic(0.0, 100.0)
    clock.now += 29
    assert not look(controller, clock, "pass", "inconclusive")  # a gate still undecided
    assert not look(controller, clock, "pass", "pass")  # duration not reached
    clock.now += 1
    assert not look(controller, clock, "pass", "pass", requests=499)  # too few requests
    assert look(controller, clock, "pass", "skipped", requests=500)
    assert phase(controller) == "progressing" and controller.state.step == 1
    assert controller.traffic() == Traffic(0.05, 0.0)
    assert controller.state.step_started_at == clock.now


def test_a_gate_that_passed_in_the_step_stays_passed_but_a_failure_still_counts() -> None:
    controller, clock = make()
    validated(controller, clock)
    clock.now += 30
    assert not look(controller, clock, "pass", "inconclusive")
    assert not look(controller, clock, "inconclusive", "fail")  # g0 latched; g1's failure counts
    assert controller.state.failed_checks == 1
    assert [r.verdict for r in controller.results] == ["pass", "fail"]
    assert "passed earlier in the step" in controller.results[0].detail
    assert look(controller, clock, "inconclusive", "pass")  # both have passed in this step: on to the next
    assert controller.state.step == 1
    assert not look(controller, clock, "inconclusive", "pass")  # a new step starts with nothing latched
    assert controller.results[0].verdict == "inconclusive"


def test_the_last_step_passing_promotes_the_candidate() -> None:
    controller, clock = make()
    validated(controller, clock)
    for index in range(len(STEPS)):
        clock.now += STEPS[index].duration
        assert look(controller, clock, "pass")
    state = controller.state
    assert state.phase == "succeeded"
    assert controller.traffic() == Traffic(1.0, 0.0, promoted=True)
    assert [t.target for t in state.history] == [
        "validating", "shadowing", "progressing", "progressing", "progressing", "succeeded",
    ]  # fmt: skip
    assert controller.recorder is None


def test_failure_limit_counts_failed_checks_not_in_a_row_then_rolls_back() -> None:
    controller, clock = make()
    validated(controller, clock)
    clock.now += 30
    assert look(controller, clock, "pass")  # into the 5 % step
    assert not look(controller, clock, "fail", "pass")
    assert controller.state.failed_checks == 1 and phase(controller) == "progressing"
    assert not look(controller, clock, "pass", "pass")  # a passing look does not reset the count
    assert controller.state.failed_checks == 1
    assert look(controller, clock, "pass", "fail")
    state = controller.state
    assert state.phase == "failed" and state.failed_checks == 2
    assert "rolled back at step 2 of 4" in state.reason and "2 failed checks" in state.reason
    assert controller.traffic() == Traffic(0.0)  # every sticky user back on the baseline


def test_a_failing_check_blocks_advancing_even_when_the_step_is_otherwise_done() -> None:
    controller, clock = make(dataclasses.replace(SETTINGS, failure_limit=3))
    validated(controller, clock)
    clock.now += 1000
    assert not look(controller, clock, "fail")
    assert controller.state.step == 0 and controller.state.failed_checks == 1


def test_an_inconclusive_step_waits_then_fails_at_the_progress_deadline() -> None:
    controller, clock = make()
    validated(controller, clock)
    clock.now += 599
    assert not look(controller, clock, "pass", "inconclusive")
    clock.now += 1
    assert look(controller, clock, "pass", "inconclusive")
    assert phase(controller) == "failed"
    assert "progress deadline" in controller.state.reason and "g1: detail" in controller.state.reason


def test_too_few_requests_past_the_deadline_fails_and_says_so() -> None:
    controller, clock = make()
    validated(controller, clock)
    clock.now += 600
    assert look(controller, clock, "pass", requests=10)
    assert "10 of 500 requests" in controller.state.reason


def test_an_evaluation_of_a_step_already_left_is_ignored() -> None:
    controller, clock = make()
    validated(controller, clock)
    stale = Evaluation(controller.epoch, gates("fail"), 10_000, OBSERVATIONS)
    clock.now += 30
    assert look(controller, clock, "pass")
    assert not controller.apply(stale, clock.now)
    assert controller.state.failed_checks == 0


def test_due_follows_the_interval() -> None:
    controller, clock = make()
    validated(controller, clock)
    assert not controller.due(clock.now)  # a step is first judged one interval after it begins
    assert controller.due(clock.now + 5)
    look(controller, clock, "inconclusive")
    assert not controller.due(clock.now + 4.9)
    assert controller.due(clock.now + 5)


def test_pause_freezes_the_weights_and_resume_restarts_the_step_window() -> None:
    controller, clock = make()
    validated(controller, clock)
    clock.now += 30
    look(controller, clock, "pass")
    controller.act("pause", clock.now)
    assert phase(controller) == "paused" and controller.traffic() == Traffic(0.05, 0.0)
    assert not controller.due(clock.now + 100)
    with pytest.raises(ConflictError):
        controller.act("pause", clock.now)
    clock.now += 10_000  # far past the deadline: a paused rollout is not judged
    controller.act("resume", clock.now)
    assert phase(controller) == "progressing" and controller.state.step == 1
    assert controller.state.step_started_at == clock.now


def test_promote_and_abort_by_an_operator() -> None:
    controller, clock = make()
    validated(controller, clock)
    controller.act("promote", clock.now)
    assert phase(controller) == "succeeded" and controller.traffic().promoted
    with pytest.raises(ConflictError):
        controller.act("promote", clock.now)
    with pytest.raises(ConflictError):
        controller.act("abort", clock.now)

    controller, clock = make()
    controller.act("abort", clock.now)  # even while validating
    assert phase(controller) == "aborted" and controller.traffic() == Traffic(0.0)
    with pytest.raises(ConflictError):
        controller.act("resume", clock.now)


def test_retry_restarts_a_failed_rollout_from_validation() -> None:
    controller, clock = make()
    controller.validated(False, "validation failed", None, clock.now)
    with pytest.raises(ConflictError):
        make()[0].act("retry", clock.now)  # a running rollout does not retry
    clock.now += 5
    controller.act("retry", clock.now)
    state = controller.state
    assert state.phase == "validating" and state.failed_checks == 0 and state.started_at == clock.now
    assert state.history[-1].reason == "retried by an operator"


def test_a_hand_edited_candidate_weight_pauses_and_the_file_weights_apply_until_resume() -> None:
    controller, clock = make()
    validated(controller, clock)
    clock.now += 30
    look(controller, clock, "pass")
    controller.hand_edit(0.0, clock.now)
    state = controller.state
    assert state.phase == "paused" and state.manual_weight == 0.0
    assert "edited by hand" in state.reason
    assert controller.traffic() == Traffic(None)  # the config's weights as written
    controller.act("resume", clock.now)
    assert controller.state.manual_weight is None and controller.traffic() == Traffic(0.05, 0.0)


def test_new_gates_or_steps_continue_from_the_current_step() -> None:
    controller, clock = make()
    validated(controller, clock)
    for _ in range(3):
        clock.now += 100
        look(controller, clock, "pass")
    assert controller.state.step == 3
    shorter = dataclasses.replace(SETTINGS, steps=STEPS[:2], gates=Gates(max_error_rate=0.02))
    assert controller.update_settings(shorter, clock.now)  # step 4 is gone: now the last step, 5 %
    assert controller.state.step == 1 and controller.traffic() == Traffic(0.05, 0.0)
    assert controller.settings.gates.max_error_rate == 0.02
    before = controller.state
    assert not controller.update_settings(dataclasses.replace(shorter, interval=1), clock.now)
    assert controller.state == before


def test_traffic_of_every_phase() -> None:
    state = fresh_state("bc", IDENTITY, SETTINGS, 0.0, "x")
    assert traffic_of(None, SETTINGS) == Traffic(0.0)
    assert traffic_of(state, SETTINGS) == Traffic(0.0)
    at = dataclasses.replace(state, phase="progressing", step=2)
    assert traffic_of(at, SETTINGS) == Traffic(0.5, 0.0)
    assert traffic_of(dataclasses.replace(at, phase="paused", resume_to="progressing"), SETTINGS) == Traffic(0.5)
    assert traffic_of(dataclasses.replace(at, phase="failed"), SETTINGS) == Traffic(0.0)
    assert traffic_of(dataclasses.replace(at, phase="aborted"), SETTINGS) == Traffic(0.0)
    assert traffic_of(dataclasses.replace(at, phase="succeeded"), SETTINGS).promoted


def test_the_state_file_round_trips_and_is_replaced_atomically(tmp_path: Path) -> None:
    controller, clock = make()
    validated(controller, clock)
    clock.now += 30
    look(controller, clock, "pass")
    path = tmp_path / "state" / "bc.json"
    save_state(path, controller.state)
    assert load_state(path) == controller.state
    assert [p.name for p in path.parent.iterdir()] == ["bc.json"]  # no temporary left behind
    assert orjson.loads(path.read_bytes())["phase"] == "progressing"


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"format": 99}', b'{"format": 1, "phase": "flying"}'])
def test_a_bad_state_file_is_ignored_and_the_rollout_starts_afresh(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bc.json"
    path.write_bytes(content)
    assert load_state(path) is None
    assert load_state(tmp_path / "missing.json") is None


def test_state_from_json_refuses_a_malformed_history() -> None:
    state = fresh_state("bc", IDENTITY, SETTINGS, 0.0, "x").to_json()
    state["history"] = [{"at": 1}]
    with pytest.raises(ValueError, match="missing or malformed"):
        state_from_json(state)


def test_an_evaluation_begun_before_a_pause_and_resume_is_ignored() -> None:
    controller, clock = make()
    validated(controller, clock)
    stale = Evaluation(controller.epoch, gates("pass"), 10_000, OBSERVATIONS)
    controller.act("pause", clock.now)
    assert controller.recorder is None  # a paused step judges nothing: no taps, no shadow sink
    controller.act("resume", clock.now)
    assert controller.recorder is not None
    clock.now += 1000
    assert not controller.apply(stale, clock.now)  # read the old window: its passes must not count in the new one
    assert controller.results == ()


def test_a_validation_of_an_earlier_attempt_is_ignored() -> None:
    controller, clock = make()
    epoch = controller.epoch
    controller.act("abort", clock.now)
    controller.act("retry", clock.now)
    assert not controller.validated(True, "validation passed", None, clock.now, epoch)
    assert phase(controller) == "validating"
    assert controller.validated(True, "validation passed", None, clock.now, controller.epoch)


def test_new_gates_clear_what_had_passed_in_the_step() -> None:
    controller, clock = make()
    validated(controller, clock)
    clock.now += 30
    look(controller, clock, "pass", "inconclusive")
    controller.update_settings(dataclasses.replace(SETTINGS, gates=Gates(max_error_rate=0.001)), clock.now)
    assert controller.state.step_started_at == clock.now  # the step is observed afresh against the new gates
    clock.now += 30
    assert not look(controller, clock, "inconclusive", "pass")  # g0's old pass no longer counts
    assert controller.results[0].verdict == "inconclusive"


def test_new_steps_never_raise_the_weight_without_a_judged_step() -> None:
    controller, clock = make()
    validated(controller, clock)
    clock.now += 30
    look(controller, clock, "pass")
    assert controller.traffic() == Traffic(0.05, 0.0)  # step 2, 5 %
    fewer = dataclasses.replace(SETTINGS, steps=(Step(weight=50, duration=10), Step(weight=100, duration=10)))
    controller.update_settings(fewer, clock.now)  # no new step at 5 % or below: the first one, as the file asks
    assert controller.state.step == 0 and controller.traffic() == Traffic(0.5, 0.0)
    steps = (Step(shadow=100, duration=10), Step(weight=2, duration=10), Step(weight=40, duration=10))
    controller, clock = make()
    validated(controller, clock)
    clock.now += 30
    look(controller, clock, "pass")
    controller.update_settings(dataclasses.replace(SETTINGS, steps=steps), clock.now)
    assert controller.state.step == 1 and controller.traffic() == Traffic(0.02, 0.0)  # the last step at <= 5 %
