"""The live gates: one step's observations -> a verdict per gate, candidate against baseline.

Every noisy figure is judged by an always-valid test (gateway/rollout/statistics.py), so the controller may look
every few seconds without inflating its error rates. A gate FAILS only on evidence at level `alpha` that its
threshold is broken (a good candidate is rolled back by a gate with probability at most alpha, however long it is
watched) and PASSES only on evidence at level `pass_alpha` that it holds (a candidate sitting exactly on the
threshold passes a step with probability at most pass_alpha; a worse one, less, and it must pass every step); in
between it is INCONCLUSIVE and the step waits for more traffic (up to the progress deadline). The two levels differ
on purpose: a false failure throws a good release away, a false pass only lets a candidate on to the next step,
where it is judged again on more traffic. A gate that cannot apply to the step is SKIPPED.

In a shadow step the candidate's figures come from the shadow copies (its failures and timeouts; the latency the
request would have had on it, i.e. the primary's request with the primary's model time swapped for the candidate's;
its answers against the primary's on the same requests); once the candidate serves live traffic they come from what
it served, against what the baseline served in the same step. So a latency gate means request latency throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import special

from gateway.drift.statistics import js_distance
from gateway.prediction import Task
from gateway.rollout.observations import StepObservations
from gateway.rollout.settings import Gates, Step
from gateway.rollout.statistics import (
    LATENCY_EDGES,
    Side,
    count_above,
    histogram_quantile,
    log_evidence,
    proportion_bound,
    proportion_bounds,
)

GateVerdict = Literal["pass", "fail", "inconclusive", "skipped"]
GATE_VERDICTS: tuple[GateVerdict, ...] = ("pass", "fail", "inconclusive", "skipped")
GATES = (
    "error_rate", "error_rate_increase", "p99_latency_ratio", "shadow_agreement", "drift", "prediction_shift",
    "feedback",
)  # fmt: skip
QUANTILE = 0.99
REGRESSION_BINS = 10


@dataclass(frozen=True, slots=True)
class GateResult:
    name: str
    verdict: GateVerdict
    value: float | None = None
    threshold: float | None = None
    samples: int = 0
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "gate": self.name,
            "verdict": self.verdict,
            "value": _finite(self.value),
            "threshold": self.threshold,
            "samples": self.samples,
            "detail": self.detail,
        }

    def describe(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        return f"{self.name} {value} ({self.detail})" if self.detail else f"{self.name} {value}"


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def evaluate(gates: Gates, step: Step, observations: StepObservations, *, look: int = 1) -> tuple[GateResult, ...]:
    """Every gate's verdict on the step so far, in a fixed order. `look` counts the evaluations of this step's
    window (1 for the first): the one gate that is not always-valid spends its alpha over the looks."""
    live = step.weight > 0
    if step.weight >= 100:
        # The baseline serves nothing here: the comparisons were made on the steps before; this step soaks the
        # candidate at full traffic on its absolute gates (errors, drift).
        alone = "the baseline serves no traffic in this step"
        return (
            _error_rate(gates, observations, live),
            GateResult("error_rate_increase", "skipped", detail=alone),
            GateResult("p99_latency_ratio", "skipped", detail=alone),
            _agreement(gates, observations, step),
            _drift(gates, observations),
            GateResult("prediction_shift", "skipped", detail=alone),
            _feedback(gates, observations, live),
        )
    return (
        _error_rate(gates, observations, live),
        _error_rate_increase(gates, observations, live),
        _latency_ratio(gates, observations, live),
        _agreement(gates, observations, step),
        _drift(gates, observations),
        _prediction_shift(gates, observations, live, look),
        _feedback(gates, observations, live),
    )


def _feedback(gates: Gates, observations: StepObservations, live: bool) -> GateResult:
    """The route's experiment: its always-valid test on feedback, over the whole experiment so far (a decision
    holds at every look, so the steps may share it)."""
    name = "feedback"
    verdict = observations.feedback
    if not gates.block_on_feedback:
        return GateResult(name, "skipped", detail="off")
    if not verdict.declared:
        return GateResult(name, "skipped", detail="no experiment on the route compares candidate and baseline")
    if not live:
        return GateResult(name, "skipped", detail="a shadow step serves no predictions to judge")
    if verdict.not_worse is None:
        return GateResult(name, "inconclusive", detail=verdict.detail)
    if verdict.not_worse:
        return GateResult(name, "pass", 1.0, 1.0, detail=verdict.detail)
    return GateResult(name, "fail", 0.0, 1.0, detail=verdict.detail)


def _candidate_errors(observations: StepObservations, live: bool) -> tuple[int, int]:
    if live:
        return observations.candidate.errors, observations.candidate.requests
    shadow = observations.shadow
    return shadow.failed + shadow.timed_out, shadow.answered


def _too_few(name: str, threshold: float, n: int, minimum: int, what: str) -> GateResult | None:
    if n < minimum:
        return GateResult(name, "inconclusive", None, threshold, n, f"{n} of {minimum} {what} needed")
    return None


def _error_rate(gates: Gates, observations: StepObservations, live: bool) -> GateResult:
    name, limit = "error_rate", gates.max_error_rate
    if limit is None:
        return GateResult(name, "skipped", detail="off")
    errors, n = _candidate_errors(observations, live)
    early = _too_few(name, limit, n, gates.min_samples, "candidate requests")
    if early is not None:
        return early
    rate = errors / n
    low, high = proportion_bounds(errors, n, min(0.5, 2 * gates.alpha))
    detail = f"{errors} of {n}, confidence [{low:.4f}, {high:.4f}]"
    if limit <= 0.0:
        verdict: GateVerdict = "fail" if errors else "pass"
        return GateResult(name, verdict, rate, limit, n, detail)
    if limit >= 1.0:
        return GateResult(name, "pass", rate, limit, n, detail)
    return GateResult(name, _judge(gates, errors, n, limit, fail_when="above"), rate, limit, n, detail)


def _judge(gates: Gates, successes: int, n: int, p0: float, *, fail_when: Side) -> GateVerdict:
    """Fail on evidence at `alpha` that the rate is on the `fail_when` side of p0; pass on evidence at `pass_alpha`
    that it is on the other side."""
    pass_side: Side = "below" if fail_when == "above" else "above"
    if log_evidence(successes, n, p0, fail_when) >= -math.log(gates.alpha):
        return "fail"
    if log_evidence(successes, n, p0, pass_side) >= -math.log(gates.pass_alpha):
        return "pass"
    return "inconclusive"


def _error_rate_increase(gates: Gates, observations: StepObservations, live: bool) -> GateResult:
    """Candidate rate <= baseline rate + margin. The baseline's own rate is a confidence interval (its edges set the
    two thresholds), and the candidate is tested against the edge that makes each verdict safe: fail only if it is
    above even the baseline's upper bound plus the margin, pass only if below the lower one; each level is split in
    half between the baseline's interval and the candidate's test."""
    name, margin = "error_rate_increase", gates.max_error_rate_increase
    if margin is None:
        return GateResult(name, "skipped", detail="off")
    errors, n = _candidate_errors(observations, live)
    base_errors, base_n = observations.baseline.errors, observations.baseline.requests
    early = _too_few(name, margin, min(n, base_n), gates.min_samples, "requests per version")
    if early is not None:
        return early
    base_high = proportion_bound(base_errors, base_n, gates.alpha / 2, "upper")
    base_low = proportion_bound(base_errors, base_n, gates.pass_alpha / 2, "lower")
    value = errors / n - base_errors / base_n
    detail = f"candidate {errors}/{n}, baseline {base_errors}/{base_n} (confidence [{base_low:.4f}, {base_high:.4f}])"
    fail_at = base_high + margin
    pass_at = base_low + margin
    # A bound of exactly 0 or 1 is no rate to test against: nothing can be shown above 1, or below 0 (a margin of 0
    # against a baseline with no errors can never pass, only fail).
    if 0.0 < fail_at < 1.0 and log_evidence(errors, n, fail_at, "above") >= -math.log(gates.alpha / 2):
        return GateResult(name, "fail", value, margin, n, detail)
    if pass_at >= 1.0 or (
        pass_at > 0.0 and log_evidence(errors, n, pass_at, "below") >= -math.log(gates.pass_alpha / 2)
    ):
        return GateResult(name, "pass", value, margin, n, detail)
    return GateResult(name, "inconclusive", value, margin, n, detail)


def _latency_ratio(gates: Gates, observations: StepObservations, live: bool) -> GateResult:
    """p99(candidate) <= ratio * p99(baseline), as a proportion: "p99(candidate) > x" is "more than 1 % of the
    candidate's requests are slower than x", tested always-valid, counting bins conservatively each way.

    To fail, x is ratio times the upper edge of the baseline's p99 bracket (order statistics, at alpha / 2; the test
    takes the other alpha / 2): a failure holds whatever the baseline's true p99. To pass, x is ratio times the
    baseline's p99 estimate, not the lower edge of its bracket: a latency tail is heavy and slow to pin down (a
    p99 needs tens of thousands of requests to bracket tightly), and a pass only moves the candidate on to the next
    step, where it is judged again on more traffic; a slow candidate still meets the failing side there."""
    name, ratio = "p99_latency_ratio", gates.max_p99_latency_ratio
    if ratio is None:
        return GateResult(name, "skipped", detail="off")
    if live:
        candidate, baseline = observations.candidate.latency, observations.baseline.latency
        edges = observations.candidate.latency_edges
        if not np.array_equal(edges, observations.baseline.latency_edges):
            raise ValueError("the candidate's and the baseline's latency histograms have different bins")
        what = "request latency"
    else:
        candidate, baseline = observations.shadow.shadow_latency, observations.shadow.primary_latency
        edges = LATENCY_EDGES
        what = "request latency, the candidate's estimated from paired shadow copies"
    n, base_n = int(candidate.sum()), int(baseline.sum())
    if not live and n == 0 and observations.shadow.completed >= gates.min_samples:
        # No copy could be paired with its request (a batched primary reports no model time of its own; a fleet
        # source has no pairs at all): the gate has nothing to judge in a shadow step, and judges the candidate's
        # served latency in the weight steps.
        return GateResult(name, "skipped", None, ratio, 0, f"no paired latency: {observations.shadow.unpaired}")
    early = _too_few(name, ratio, min(n, base_n), gates.min_samples, f"samples per version ({what})")
    if early is not None:
        return early
    tail = 1.0 - QUANTILE
    # histogram_quantile's level is two-sided: each edge of the bracket holds at half of it, as the test does.
    base_p99, _, base_high = histogram_quantile(baseline, edges, QUANTILE, gates.alpha)
    cand_p99, _, _ = histogram_quantile(candidate, edges, QUANTILE, gates.alpha)
    value = cand_p99 / base_p99 if base_p99 > 0 else math.inf
    detail = f"p99 {cand_p99 * 1e3:.3g} ms vs {base_p99 * 1e3:.3g} ms ({what}; {n} and {base_n} samples)"
    if math.isfinite(base_high):
        slower = count_above(candidate, edges, ratio * base_high, "low")
        if log_evidence(slower, n, tail, "above") >= -math.log(gates.alpha / 2):
            return GateResult(name, "fail", value, ratio, n, detail)
    if 0 < base_p99 < math.inf:  # a p99 in the open top bucket bounds nothing (coarse buckets end at 10 s)
        slower = count_above(candidate, edges, ratio * base_p99, "high")
        if log_evidence(slower, n, tail, "below") >= -math.log(gates.pass_alpha):
            return GateResult(name, "pass", value, ratio, n, detail)
    return GateResult(name, "inconclusive", value, ratio, n, detail)


def _agreement(gates: Gates, observations: StepObservations, step: Step) -> GateResult:
    name, floor = "shadow_agreement", gates.min_shadow_agreement
    if floor is None:
        return GateResult(name, "skipped", detail="off")
    if step.shadow <= 0:
        return GateResult(name, "skipped", None, floor, detail="no shadow copies in this step")
    shadow = observations.shadow
    early = _too_few(name, floor, shadow.rows, gates.min_samples, "compared rows")
    if early is not None:
        return early
    value = shadow.agreed / shadow.rows
    detail = f"{shadow.agreed} of {shadow.rows} rows agree"
    if floor >= 1.0:
        return GateResult(name, "pass" if shadow.agreed == shadow.rows else "fail", value, floor, shadow.rows, detail)
    verdict = _judge(gates, shadow.agreed, shadow.rows, floor, fail_when="below")
    return GateResult(name, verdict, value, floor, shadow.rows, detail)


def _drift(gates: Gates, observations: StepObservations) -> GateResult:
    name = "drift"
    if not gates.block_on_drift:
        return GateResult(name, "skipped", detail="off")
    drift = observations.drift
    if not drift.monitored:
        return GateResult(name, "skipped", detail="drift monitoring is off for the candidate (no drift: or profile)")
    if drift.windows == 0:
        # Only windows closed in this step count: a verdict from before (an earlier attempt, a step since passed)
        # says nothing about the traffic being judged now.
        return GateResult(
            name, "inconclusive", None, 0.0, 0, "no drift window has closed for the candidate in this step"
        )
    if drift.drifting:
        features = ", ".join(drift.drifted_features) or "see /admin/drift"
        return GateResult(name, "fail", 1.0, 0.0, drift.windows, f"the candidate is drifting ({features})")
    return GateResult(name, "pass", 0.0, 0.0, drift.windows, f"not drifting after {drift.windows} window(s) this step")


def _prediction_shift(gates: Gates, observations: StepObservations, live: bool, look: int) -> GateResult:
    """JS distance between the candidate's and the baseline's prediction distributions (labels, or values in
    deciles of both). Fails when the distance is over the limit AND a G-test of homogeneity says it is no noise;
    passes when the distance is within the limit.

    The G-test is a fixed-sample test, so looked at every interval it would fail a good candidate far more often
    than alpha. It spends alpha over the looks instead: look k tests at alpha * 6 / (pi^2 k^2), whose sum over
    every k is alpha (a union bound, valid however long the step lasts)."""
    name, limit = "prediction_shift", gates.max_prediction_shift_js
    if limit is None:
        return GateResult(name, "skipped", detail="off")
    if live:
        mine, theirs = observations.candidate.predictions, observations.baseline.predictions
    else:
        mine, theirs = observations.shadow.shadow_predictions, observations.shadow.primary_predictions
    n, base_n = int(mine.shape[0]), int(theirs.shape[0])
    early = _too_few(name, limit, min(n, base_n), gates.min_samples, "predictions per version")
    if early is not None:
        return early
    counts, base_counts = _histograms(observations.task, mine, theirs)
    distance = js_distance(base_counts, counts)
    p = _g_test(counts, base_counts)
    detail = f"JS distance over {len(counts)} bins, G-test p = {p:.2g} ({n} and {base_n} predictions)"
    if distance > limit and p < gates.alpha * 6.0 / (math.pi**2 * look**2):
        return GateResult(name, "fail", distance, limit, n, detail)
    if distance <= limit:
        return GateResult(name, "pass", distance, limit, n, detail)
    return GateResult(name, "inconclusive", distance, limit, n, detail)


def _histograms(
    task: Task, mine: npt.NDArray[Any], theirs: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    if task == "classification":
        labels = np.union1d(mine, theirs)
        return _label_counts(mine, labels), _label_counts(theirs, labels)
    a = np.asarray(mine, dtype=np.float64).reshape(mine.shape[0], -1)[:, 0]
    b = np.asarray(theirs, dtype=np.float64).reshape(theirs.shape[0], -1)[:, 0]
    edges = np.unique(np.quantile(np.concatenate((a, b)), np.linspace(0, 1, REGRESSION_BINS + 1)[1:-1]))
    return (
        np.bincount(np.searchsorted(edges, a, side="right"), minlength=len(edges) + 1).astype(np.int64),
        np.bincount(np.searchsorted(edges, b, side="right"), minlength=len(edges) + 1).astype(np.int64),
    )


def _label_counts(values: npt.NDArray[Any], labels: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    return np.bincount(np.searchsorted(labels, values), minlength=len(labels)).astype(np.int64)


def _g_test(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> float:
    """p-value of the G-test of homogeneity of two count vectors over the same bins."""
    table = np.vstack((a, b)).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(table > 0, table * np.log(table / expected), 0.0)
    statistic = 2.0 * float(terms.sum())
    return float(special.chdtrc(table.shape[1] - 1, statistic))
