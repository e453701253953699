"""The live gates against known data: error rate and its increase, the p99 latency ratio, shadow agreement, the drift
verdict and the prediction shift; each fails only on evidence, passes only on evidence, else waits."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.rollout.gates import GateResult, evaluate
from gateway.rollout.observations import Arm, DriftVerdict, FeedbackVerdict, ShadowArm, StepObservations
from gateway.rollout.settings import Gates, Step
from gateway.rollout.statistics import latency_counts

SHADOW = Step(shadow=100, duration=30)
LIVE = Step(weight=25, duration=60)
RNG_SEED = 20261129


def lognormal(n: int, median_ms: float, seed: int) -> npt.NDArray[np.int64]:
    rng = np.random.default_rng(seed)
    return latency_counts(median_ms / 1e3 * np.exp(rng.normal(0.0, 0.3, n)))


def labels(n: int, share: float, seed: int) -> npt.NDArray[np.int64]:
    return (np.random.default_rng(seed).random(n) < share).astype(np.int64)


def observe(
    *,
    candidate: Arm | None = None,
    baseline: Arm | None = None,
    shadow: ShadowArm | None = None,
    drift: DriftVerdict | None = None,
    task: Any = "classification",
) -> StepObservations:
    return StepObservations(task, candidate or Arm(), baseline or Arm(), shadow or ShadowArm(), drift or DriftVerdict())


def gate(name: str, gates: Gates, step: Step, observations: StepObservations) -> GateResult:
    return next(r for r in evaluate(gates, step, observations) if r.name == name)


def gate_at(name: str, gates: Gates, observations: StepObservations, look: int) -> GateResult:
    return next(r for r in evaluate(gates, LIVE, observations, look=look) if r.name == name)


def test_every_gate_is_reported_in_a_fixed_order() -> None:
    names = [r.name for r in evaluate(Gates(), LIVE, observe())]
    assert names == [
        "error_rate",
        "error_rate_increase",
        "p99_latency_ratio",
        "shadow_agreement",
        "drift",
        "prediction_shift",
        "feedback",
    ]


@pytest.mark.parametrize(
    ("verdict", "step", "gates", "expected"),
    [
        (FeedbackVerdict(), LIVE, Gates(), "skipped"),  # no experiment compares these two
        (FeedbackVerdict(True, None, "waiting"), LIVE, Gates(), "inconclusive"),  # the step holds
        (FeedbackVerdict(True, True, "not worse"), LIVE, Gates(), "pass"),
        (FeedbackVerdict(True, False, "worse"), LIVE, Gates(), "fail"),
        (FeedbackVerdict(True, False, "worse"), LIVE, Gates(block_on_feedback=False), "skipped"),
        (FeedbackVerdict(True, False, "worse"), Step(shadow=100.0), Gates(), "skipped"),  # nothing served to judge
    ],
)
def test_the_feedback_gate_follows_the_experiment(
    verdict: FeedbackVerdict, step: Step, gates: Gates, expected: str
) -> None:
    observations = dataclasses.replace(observe(), feedback=verdict)
    assert gate("feedback", gates, step, observations).verdict == expected


@pytest.mark.parametrize(
    ("errors", "n", "verdict"),
    [(0, 50, "inconclusive"), (0, 2000, "pass"), (8, 2000, "pass"), (15, 2000, "inconclusive"), (60, 2000, "fail")],
)
def test_error_rate(errors: int, n: int, verdict: str) -> None:
    result = gate("error_rate", Gates(max_error_rate=0.01), LIVE, observe(candidate=Arm(n, errors)))
    assert result.verdict == verdict
    if n >= 100:
        assert result.value == pytest.approx(errors / n) and result.samples == n


def test_error_rate_in_a_shadow_step_counts_failed_and_timed_out_copies() -> None:
    shadow = ShadowArm(completed=1900, failed=70, timed_out=30, dropped=500)
    result = gate("error_rate", Gates(max_error_rate=0.01), SHADOW, observe(shadow=shadow))
    assert result.verdict == "fail"
    assert result.value == pytest.approx(100 / 2000) and result.samples == 2000  # dropped copies are not its fault


def test_error_rate_increase_compares_with_the_baseline_in_the_same_step() -> None:
    gates = Gates(max_error_rate_increase=0.005)
    same = observe(candidate=Arm(4000, 20), baseline=Arm(40_000, 200))
    assert gate("error_rate_increase", gates, LIVE, same).verdict == "inconclusive"  # equal, but too few to tell
    same = observe(candidate=Arm(12_000, 60), baseline=Arm(120_000, 600))
    assert gate("error_rate_increase", gates, LIVE, same).verdict == "pass"
    worse = observe(candidate=Arm(4000, 100), baseline=Arm(40_000, 200))  # +2 points
    result = gate("error_rate_increase", gates, LIVE, worse)
    assert result.verdict == "fail" and result.value == pytest.approx(0.025 - 0.005)
    close = observe(candidate=Arm(4000, 36), baseline=Arm(40_000, 200))  # +0.4 points: cannot tell yet
    assert gate("error_rate_increase", gates, LIVE, close).verdict == "inconclusive"
    few = observe(candidate=Arm(4000, 20), baseline=Arm(50, 0))
    assert gate("error_rate_increase", gates, LIVE, few).verdict == "inconclusive"


def test_latency_ratio_on_served_requests() -> None:
    gates = Gates(max_p99_latency_ratio=1.25)
    base = Arm(20_000, 0, lognormal(20_000, 5.0, 1))
    same = observe(candidate=Arm(20_000, 0, lognormal(20_000, 5.0, 2)), baseline=base)
    result = gate("p99_latency_ratio", gates, LIVE, same)
    assert result.verdict == "pass" and result.value == pytest.approx(1.0, abs=0.2)
    slow = observe(candidate=Arm(20_000, 0, lognormal(20_000, 7.5, 3)), baseline=base)
    result = gate("p99_latency_ratio", gates, LIVE, slow)
    assert result.verdict == "fail" and result.value == pytest.approx(1.5, abs=0.25)
    few = observe(candidate=Arm(300, 0, lognormal(300, 5.0, 4)), baseline=base)
    assert gate("p99_latency_ratio", gates, LIVE, few).verdict == "inconclusive"


def test_latency_ratio_in_a_shadow_step_pairs_model_times() -> None:
    shadow = ShadowArm(
        completed=20_000, primary_latency=lognormal(20_000, 1.0, 5), shadow_latency=lognormal(20_000, 3.0, 6)
    )
    result = gate("p99_latency_ratio", Gates(max_p99_latency_ratio=1.5), SHADOW, observe(shadow=shadow))
    assert result.verdict == "fail" and "paired" in result.detail


def test_shadow_agreement() -> None:
    gates = Gates(min_shadow_agreement=0.95)
    assert gate("shadow_agreement", gates, SHADOW, observe(shadow=ShadowArm(rows=1000, agreed=990))).verdict == "pass"
    assert gate("shadow_agreement", gates, SHADOW, observe(shadow=ShadowArm(rows=1000, agreed=820))).verdict == "fail"
    assert gate("shadow_agreement", gates, SHADOW, observe(shadow=ShadowArm(rows=1000, agreed=950))).verdict == (
        "inconclusive"
    )
    assert gate("shadow_agreement", gates, LIVE, observe()).verdict == "skipped"  # no copies in a 25 % step


def test_drift_verdict() -> None:
    gates = Gates(block_on_drift=True)
    assert gate("drift", gates, LIVE, observe()).verdict == "skipped"  # not monitored
    assert gate("drift", gates, LIVE, observe(drift=DriftVerdict(True, 0, False))).verdict == "inconclusive"
    assert gate("drift", gates, LIVE, observe(drift=DriftVerdict(True, 3, False))).verdict == "pass"
    result = gate("drift", gates, LIVE, observe(drift=DriftVerdict(True, 3, True, ("worst area",))))
    assert result.verdict == "fail" and "worst area" in result.detail
    assert gate("drift", Gates(block_on_drift=False), LIVE, observe(drift=DriftVerdict(True, 3, True))).verdict == (
        "skipped"
    )


def test_prediction_shift_on_labels() -> None:
    gates = Gates(max_prediction_shift_js=0.1)
    same = observe(candidate=Arm(predictions=labels(3000, 0.63, 1)), baseline=Arm(predictions=labels(3000, 0.63, 2)))
    result = gate("prediction_shift", gates, LIVE, same)
    assert result.verdict == "pass" and result.value is not None and result.value < 0.05
    moved = observe(candidate=Arm(predictions=labels(3000, 0.30, 3)), baseline=Arm(predictions=labels(3000, 0.63, 4)))
    result = gate("prediction_shift", gates, LIVE, moved)
    assert result.verdict == "fail" and result.value is not None and result.value > 0.2


def test_prediction_shift_on_regression_values_in_a_shadow_step() -> None:
    rng = np.random.default_rng(RNG_SEED)
    primary = rng.normal(0, 1, (2000, 1))
    shadow = ShadowArm(primary_predictions=primary, shadow_predictions=primary * 2 + 1)
    result = gate(
        "prediction_shift", Gates(max_prediction_shift_js=0.1), SHADOW, observe(shadow=shadow, task="regression")
    )
    assert result.verdict == "fail"
    close = ShadowArm(primary_predictions=primary, shadow_predictions=primary + rng.normal(0, 1e-3, (2000, 1)))
    result = gate(
        "prediction_shift", Gates(max_prediction_shift_js=0.1), SHADOW, observe(shadow=close, task="regression")
    )
    assert result.verdict == "pass"


def test_gates_switched_off_are_skipped() -> None:
    off = Gates(
        max_error_rate=None, max_error_rate_increase=None, max_p99_latency_ratio=None, min_shadow_agreement=None,
        block_on_drift=False, max_prediction_shift_js=None,
    )  # fmt: skip
    assert {r.verdict for r in evaluate(off, LIVE, observe())} == {"skipped"}


def test_a_margin_of_zero_against_a_baseline_without_errors_never_crashes() -> None:
    gates = Gates(max_error_rate_increase=0.0)
    clean = observe(candidate=Arm(5000, 0), baseline=Arm(50_000, 0))
    assert gate("error_rate_increase", gates, LIVE, clean).verdict == "inconclusive"  # nothing is below 0
    worse = observe(candidate=Arm(5000, 50), baseline=Arm(50_000, 0))
    assert gate("error_rate_increase", gates, LIVE, worse).verdict == "fail"


def test_at_weight_100_the_comparisons_are_skipped() -> None:
    results = {r.name: r for r in evaluate(Gates(), Step(weight=100), observe(candidate=Arm(5000, 0)))}
    assert results["error_rate"].verdict == "pass"
    for name in ("error_rate_increase", "p99_latency_ratio", "prediction_shift"):
        assert results[name].verdict == "skipped" and "baseline serves no traffic" in results[name].detail


def test_latency_is_skipped_in_a_shadow_step_when_no_copy_could_be_paired() -> None:
    shadow = ShadowArm(completed=500)  # a batched primary: no model time of its own, so no pairs
    result = gate("p99_latency_ratio", Gates(), SHADOW, observe(shadow=shadow))
    assert result.verdict == "skipped" and "no paired latency" in result.detail


def test_the_prediction_shift_spends_its_alpha_over_the_looks() -> None:
    # A shift over the limit whose G-test p sits between alpha/look^2-ish and alpha: failed at the first look,
    # not at the hundredth, where the same evidence is one of many chances.
    moved = observe(candidate=Arm(predictions=labels(400, 0.45, 5)), baseline=Arm(predictions=labels(400, 0.63, 6)))
    gates = Gates(max_prediction_shift_js=0.1, alpha=0.01)
    first = gate_at("prediction_shift", gates, moved, 1)
    late = gate_at("prediction_shift", gates, moved, 100)
    assert first.verdict == "fail", first.detail
    assert late.verdict == "inconclusive", late.detail
