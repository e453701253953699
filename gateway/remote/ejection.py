"""Outlier ejection for one endpoint: failures in a row take it out of service for a while, then one probe decides.

    closed --(consecutive_failures failures in a row)--> ejected --(its time is up)--> half-open
    half-open --(the next request goes, alone: the probe)--> closed when it succeeds, ejected again when it fails

While ejected, and while the probe is out, `refusing()` is true: the data plane reads it before anything is decoded
and answers at once (503, or the route's baseline where the version falls back), so a dead endpoint costs its
clients no connect attempt and no timeout. Each ejection that follows a failed probe lasts twice the one before,
up to `max_time`; a successful probe resets it to `base_time` (Envoy's outlier detection grows it the same way).

A failure is what says the endpoint is unwell: no connection, a timeout, a dropped connection, a 5xx or an answer
that is not V2. A 4xx is the request's fault and counts as a success. The outcome of a request that was admitted
before the endpoint was ejected does not move the state: only the probe's decides a half-open endpoint.

No timer: the state moves when it is asked, on an injected clock, so tests drive it without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

from gateway.remote.settings import EjectionSettings

State: TypeAlias = Literal["closed", "ejected", "half_open"]


class Ejection:
    __slots__ = (
        "_base", "_clock", "_limit", "_longest", "_probing", "ejections", "failures", "period", "state", "until",
    )  # fmt: skip

    def __init__(self, settings: EjectionSettings, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._limit = settings.consecutive_failures
        self._base = settings.base_time
        self._longest = settings.max_time
        self._probing = False
        self.state: State = "closed"
        self.failures = 0  # consecutive, while closed
        self.until = 0.0  # when the current ejection ends (clock time)
        self.period = settings.base_time  # the length of the current (or next) ejection
        self.ejections = 0  # ejections so far, for the metric

    def refusing(self) -> bool:
        """Whether a new request would be refused now: ejected, or half-open with its probe out."""
        state = self.state
        if state == "closed":
            return False
        if state == "ejected":
            if self._clock() < self.until:
                return True
            self.state = "half_open"
        return self._probing

    def admit(self) -> bool | None:
        """Take a request through: None when refused, True when it is the half-open endpoint's probe, else False."""
        if self.refusing():
            return None
        if self.state == "half_open":
            self._probing = True
            return True
        return False

    def succeeded(self, probe: bool) -> None:
        if probe:
            self._probing = False
            self.state = "closed"
            self.period = self._base
        if self.state == "closed":
            self.failures = 0

    def failed(self, probe: bool) -> bool:
        """Count a failure; True when it ejected the endpoint."""
        if probe:
            self._probing = False
            self.period = min(self.period * 2, self._longest)
            self._eject()
            return True
        if self.state != "closed":
            return False
        self.failures += 1
        if self.failures < self._limit:
            return False
        self._eject()
        return True

    def released(self, probe: bool) -> None:
        """A request that ended with neither outcome (cancelled): a probe's turn passes to the next request."""
        if probe:
            self._probing = False

    def _eject(self) -> None:
        self.state = "ejected"
        self.failures = 0
        self.until = self._clock() + self.period
        self.ejections += 1
