"""The always-valid sequential test: calibrated under continuous monitoring where a repeated z-test is not, and its
interval and decisions behave as the mixture SPRT says."""

from __future__ import annotations

import math

import numpy as np

from gateway.experiment.sequential import Arm, SequentialTest, half_width, likelihood_ratio

EXPERIMENTS = 1_000
STEP = 100  # a look after every 100 samples per arm
MAX_N = 20_000  # per arm: 200 looks
ALPHA = 0.05
# With 1,000 experiments the share that ever rejects is binomial; under a true rate at alpha (the most the mSPRT
# allows; it is conservative, about 1-2 % here) P(X >= 73) = 6e-4 (normal approximation with continuity), so the
# bound below fails a correct implementation well under once in a thousand seeds.
MAX_FALSE_ALARMS = 72


def _arms(successes: np.ndarray, k: int) -> Arm:
    n = (k + 1) * STEP
    total = float(successes[k])
    return Arm(n, total, total)  # 0/1 data: the sum of squares is the sum


def _simulate(p_control: float, p_candidate: float, seed: int) -> tuple[int, int]:
    """(experiments the mSPRT ever called, experiments a z-test at 5 % ever called), same data, same looks."""
    rng = np.random.default_rng(seed)
    looks = MAX_N // STEP
    control = rng.binomial(STEP, p_control, size=(EXPERIMENTS, looks)).cumsum(axis=1)
    candidate = rng.binomial(STEP, p_candidate, size=(EXPERIMENTS, looks)).cumsum(axis=1)
    sequential = naive = 0
    for i in range(EXPERIMENTS):
        test = SequentialTest(alpha=ALPHA, proportion=True)
        called = z_called = False
        for k in range(looks):
            a, b = _arms(control[i], k), _arms(candidate[i], k)
            if not called:
                test = test.update(a, b)
                called = test.decision(higher_is_better=True) != "no decision yet"
            if not z_called:
                se = math.sqrt(a.variance / a.n + b.variance / b.n)
                z_called = se > 0 and abs(b.mean - a.mean) / se > 1.959964
            if called and z_called:
                break
        sequential += called
        naive += z_called
    return sequential, naive


def test_a_a_experiments_watched_200_times_stay_within_alpha_where_a_repeated_z_test_does_not() -> None:
    sequential, naive = _simulate(0.5, 0.5, seed=20261129)
    assert sequential <= MAX_FALSE_ALARMS, f"{sequential} of {EXPERIMENTS} A/A experiments declared a difference"
    # The contrast (documented in the README): the same looks with a fixed-sample z-test call a third or more.
    assert naive >= 250, naive


def test_a_real_difference_is_found_and_its_sign_is_right() -> None:
    rng = np.random.default_rng(7)
    a = rng.binomial(1, 0.50, 20_000).astype(float)
    b = rng.binomial(1, 0.55, 20_000).astype(float)
    test = SequentialTest(proportion=True)
    for n in range(STEP, 20_001, STEP):
        test = test.update(Arm(n, a[:n].sum(), a[:n].sum()), Arm(n, b[:n].sum(), b[:n].sum()))
    assert test.decision(higher_is_better=True) == "candidate better"
    assert test.decision(higher_is_better=False) == "candidate worse"  # an error metric reads the same data so
    assert test.low < 0.05 < test.high and test.p_value < ALPHA
    assert test.not_worse_by(0.0, higher_is_better=True) is True


def test_what_a_test_concluded_never_unhappens() -> None:
    test = SequentialTest()
    lows, highs, ps = [], [], []
    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 1.0, 5_000)
    b = rng.normal(1.0, 1.0, 5_000)
    for n in range(50, 5_001, 50):
        test = test.update(
            Arm(n, a[:n].sum(), float((a[:n] ** 2).sum())), Arm(n, b[:n].sum(), float((b[:n] ** 2).sum()))
        )
        lows.append(test.low)
        highs.append(test.high)
        ps.append(test.p_value)
    assert lows == sorted(lows) and highs == sorted(highs, reverse=True) and ps == sorted(ps, reverse=True)


def test_the_formulas() -> None:
    # No difference: the ratio is below 1 and shrinks as the variance does (more data, same nothing).
    assert likelihood_ratio(0.0, 0.01, 0.01) < 1.0
    assert likelihood_ratio(0.0, 0.001, 0.01) < likelihood_ratio(0.0, 0.01, 0.01)
    # The interval's edge is exactly where the ratio of the shifted difference reaches 1/alpha.
    variance, tau2 = 0.004, 0.01
    edge = half_width(variance, tau2, ALPHA)
    assert math.isclose(likelihood_ratio(edge, variance, tau2), 1 / ALPHA, rel_tol=1e-9)
    assert Arm().add(1.0).add(3.0).variance == 2.0
    assert SequentialTest().update(Arm(1, 1.0, 1.0), Arm(5, 2.0, 2.0)) == SequentialTest()  # under two samples: no look
