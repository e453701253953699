"""An always-valid test for the difference of two arms' means: the mixture sequential probability ratio test.

A fixed-sample test read again after every new sample is not a test: each look is another chance for noise to cross
the line, and an A/A experiment watched 200 times declares a difference about a third of the time at a nominal 5 %.
The mixture SPRT (Robbins 1970; Johari, Pekelis and Walsh, "Always valid inference: continuous monitoring of A/B
tests", 2017/2022, the statistics behind Optimizely's engine) gives a p-value and an interval that hold at every look
at once: under no difference, the chance that the running p-value *ever* falls below alpha is at most alpha.

For arms A (control) and B with means a, b and variances sa, sb over na and nb samples, the difference d = b - a is
estimated with variance V = sa/na + sb/nb. Against a normal mixture N(0, tau^2) over the true difference, the
likelihood ratio of "some difference" to "none" is

    L = sqrt(V / (V + tau^2)) * exp(tau^2 * d^2 / (2 V (V + tau^2)))

a nonnegative martingale under no difference, so by Ville's inequality P(sup L >= 1/alpha) <= alpha. The always-valid
p-value is the running minimum of 1/L; the interval {x : L(d - x) < 1/alpha} is d +/- the half-width below, and the
running intersection of those intervals holds the true difference at every look with probability 1 - alpha. The
variances are plug-in estimates (valid as the samples grow: hence `min_samples` before any decision).

`tau` sets where the test is most powerful: a mixing spread near the effect one cares about. It is given relative to
the arms' pooled standard deviation, so one default serves conversion rates and regression errors alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Decision = Literal["candidate better", "candidate worse", "no decision yet"]


@dataclass(frozen=True, slots=True)
class Arm:
    """One arm's running sums: enough for its mean and variance."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, value: float) -> Arm:
        return Arm(self.n + 1, self.total + value, self.squares + value * value)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """The sample variance (n - 1 denominator); 0 below two samples."""
        if self.n < 2:
            return 0.0
        return max(0.0, (self.squares - self.total * self.total / self.n) / (self.n - 1))


@dataclass(frozen=True, slots=True)
class Look:
    """The test at one look: the difference (candidate - control), its always-valid interval and p-value."""

    difference: float
    low: float
    high: float
    p_value: float


def likelihood_ratio(difference: float, variance: float, tau2: float) -> float:
    """The mixture likelihood ratio L above (inf for a nonzero difference known exactly)."""
    if variance <= 0.0:
        return 1.0 if difference == 0.0 else math.inf
    exponent = tau2 * difference * difference / (2.0 * variance * (variance + tau2))
    return math.sqrt(variance / (variance + tau2)) * math.exp(min(exponent, 700.0))


def half_width(variance: float, tau2: float, alpha: float) -> float:
    """Half the always-valid (1 - alpha) interval's width around the estimated difference."""
    if variance <= 0.0:
        return 0.0
    return math.sqrt(
        variance * (variance + tau2) / tau2 * (math.log((variance + tau2) / variance) - 2 * math.log(alpha))
    )


@dataclass(frozen=True, slots=True)
class SequentialTest:
    """The running state of one comparison: fold in each look with `update`; what it concluded never un-happens
    (the p-value only falls and the interval only narrows)."""

    alpha: float = 0.05
    proportion: bool = False  # 0/1 outcomes (accuracy, conversion): variances from smoothed rates, never 0
    tau: float = 0.05  # the mixing spread, in pooled standard deviations (a small effect: +2 points on 50 % is 0.04)
    p_value: float = 1.0
    low: float = -math.inf
    high: float = math.inf
    estimate: float = math.nan  # the latest look's difference (candidate - control)

    def update(self, control: Arm, candidate: Arm) -> SequentialTest:
        look = self.look(control, candidate)
        if look is None:
            return self
        low, high = max(self.low, look.low), min(self.high, look.high)
        if low > high:
            # The intervals no longer meet, which under the test's model happens with probability under alpha: the
            # data are not what the model assumes (they changed over time). Trust the latest look, not an empty set.
            low, high = look.low, look.high
        return SequentialTest(
            self.alpha, self.proportion, self.tau, min(self.p_value, look.p_value), low, high, look.difference
        )

    def look(self, control: Arm, candidate: Arm) -> Look | None:
        """This look's own figures; None before each arm has two samples, or while neither arm varies (a constant
        says nothing of its noise: a zero-width interval would hold forever once intersected)."""
        if control.n < 2 or candidate.n < 2:
            return None
        difference = candidate.mean - control.mean
        control_variance, candidate_variance = self._variance(control), self._variance(candidate)
        variance = control_variance / control.n + candidate_variance / candidate.n
        if not variance > 0.0 or not math.isfinite(variance) or not math.isfinite(difference):
            return None
        pooled = 0.5 * (control_variance + candidate_variance)
        tau2 = self.tau * self.tau * pooled if pooled > 0 else self.tau * self.tau
        ratio = likelihood_ratio(difference, variance, tau2)
        width = half_width(variance, tau2, self.alpha)
        return Look(difference, difference - width, difference + width, min(1.0, 1.0 / ratio) if ratio > 0 else 1.0)

    def _variance(self, arm: Arm) -> float:
        if self.proportion:
            # Laplace's rule: an arm that was right every time so far is not known to be right always.
            rate = (arm.total + 1.0) / (arm.n + 2.0)
            return rate * (1.0 - rate)
        return arm.variance

    def decision(self, *, higher_is_better: bool) -> Decision:
        if self.low > 0.0:
            return "candidate better" if higher_is_better else "candidate worse"
        if self.high < 0.0:
            return "candidate worse" if higher_is_better else "candidate better"
        return "no decision yet"

    def not_worse_by(self, margin: float, *, higher_is_better: bool) -> bool | None:
        """Non-inferiority: True once the candidate is surely not worse than the control by more than `margin`
        (in the metric's units), False once it surely is, None while the interval straddles the line."""
        if higher_is_better:
            if self.low > -margin:
                return True
            if self.high < -margin:
                return False
            return None
        if self.high < margin:
            return True
        if self.low > margin:
            return False
        return None
