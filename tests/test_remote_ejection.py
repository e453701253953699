"""The outlier-ejection state machine on a fake clock: eject after failures in a row, refuse while ejected, one
half-open probe, back-off on a failed probe, reset on a good one."""

from __future__ import annotations

from gateway.remote.ejection import Ejection
from gateway.remote.settings import EjectionSettings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ejection(failures: int = 3, base: float = 10.0, longest: float = 35.0) -> tuple[Ejection, Clock]:
    clock = Clock()
    return Ejection(EjectionSettings(failures, base, longest), clock), clock


def fail(state: Ejection, times: int) -> list[bool]:
    out = []
    for _ in range(times):
        probe = state.admit()
        assert probe is not None
        out.append(state.failed(probe))
    return out


def test_failures_in_a_row_eject_and_a_success_between_resets_the_count() -> None:
    state, _ = ejection(failures=3)
    assert fail(state, 2) == [False, False]
    state.succeeded(bool(state.admit()))
    assert fail(state, 2) == [False, False] and state.state == "closed" and not state.refusing()
    assert fail(state, 1) == [True]
    assert str(state.state) == "ejected" and state.refusing() and state.admit() is None and state.ejections == 1


def test_half_open_after_the_period_admits_exactly_one_probe() -> None:
    state, clock = ejection()
    fail(state, 3)
    clock.now += 9.999
    assert state.refusing()
    clock.now += 0.001
    assert not state.refusing() and state.state == "half_open"
    assert state.admit() is True  # the probe
    assert state.refusing() and state.admit() is None  # everyone else, while it is out
    state.succeeded(True)
    assert str(state.state) == "closed" and not state.refusing() and state.admit() is False


def test_a_failed_probe_ejects_again_for_twice_as_long_up_to_the_limit_and_a_good_one_resets() -> None:
    state, clock = ejection(base=10.0, longest=35.0)
    fail(state, 3)
    periods = []
    for _ in range(4):
        clock.now = state.until
        assert state.admit() is True
        assert state.failed(True)
        periods.append(state.until - clock.now)
    assert periods == [20.0, 35.0, 35.0, 35.0]
    clock.now = state.until
    state.succeeded(bool(state.admit()))
    fail(state, 3)
    assert state.until - clock.now == 10.0


def test_outcomes_of_requests_admitted_before_the_ejection_do_not_move_it() -> None:
    state, clock = ejection()
    early = [state.admit() for _ in range(4)]  # all in flight while the endpoint is still closed
    assert early == [False] * 4
    assert [state.failed(False) for _ in range(3)] == [False, False, True]
    assert not state.failed(False)  # the fourth fails late: already ejected
    state.succeeded(False)  # nor does a late success close it
    assert state.state == "ejected" and state.refusing()
    clock.now = state.until
    assert state.admit() is True


def test_a_cancelled_probe_hands_its_turn_to_the_next_request() -> None:
    state, clock = ejection()
    fail(state, 3)
    clock.now = state.until
    assert state.admit() is True
    state.released(True)
    assert not state.refusing() and state.admit() is True
