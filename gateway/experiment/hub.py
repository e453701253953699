"""Every route's experiment state: its ledger of decisions, each version's quality, the sequential test between the
arms, and the quality alerts. Feedback is judged here, on the event loop (never on the request path); the request
path only offers decisions to a route's ledger through the lanes handed to the snapshot builder."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

import numpy as np

from gateway.errors import ProtocolError
from gateway.experiment.feedback import Feedback, load_feedback, parse_item
from gateway.experiment.ledger import Ledger, LedgerLane, Outputs
from gateway.experiment.quality import Quality, metric_values
from gateway.experiment.scoring import Scores, predictions, score_labels, score_values
from gateway.experiment.sequential import SequentialTest
from gateway.experiment.settings import RouteExperiment
from gateway.webhook import Webhook

logger = logging.getLogger(__name__)

OUTCOMES = ("accepted", "duplicate", "unknown", "expired", "rejected")
SLICE = 200  # feedback items judged between two turns of the event loop (a few milliseconds)
# The validation figure (a version's metadata.json "metrics") is compared with the window every time feedback comes:
# a strict one-sided level keeps the many looks from raising false alarms on a version that is as good as it was.
REFERENCE_ALPHA = 0.001
_Z_REFERENCE = 3.090232306167813  # the standard normal's 1 - REFERENCE_ALPHA quantile


def _significantly_below(value: float, n: int, reference: float, metric: str) -> bool:
    """A proportion (accuracy, conversion) over `n` window samples below the validation figure by more than noise."""
    if metric not in ("accuracy", "conversion") or not 0.0 < reference < 1.0:
        return False
    return (reference - value) / math.sqrt(reference * (1.0 - reference) / n) > _Z_REFERENCE


@dataclass(frozen=True, slots=True)
class Judged:
    """What became of one feedback item."""

    outcome: str  # one of OUTCOMES
    id: str | None
    version: str | None = None
    error: str | None = None


@dataclass
class _Route:
    settings: RouteExperiment
    ledger: Ledger
    quality: dict[str, Quality] = field(default_factory=dict)
    test: SequentialTest = field(default_factory=SequentialTest)
    alerts: dict[str, bool] = field(default_factory=dict)  # version -> firing
    outcomes: Counter[str] = field(default_factory=Counter)
    looks: int = 0
    references: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # version -> its validation figures

    def quality_of(self, version: str) -> Quality:
        quality = self.quality.get(version)
        if quality is None:
            window = self.settings.experiment.window if self.settings.experiment is not None else 1000
            quality = self.quality[version] = Quality(window)
        return quality


class Experiments:
    def __init__(self, webhook: Webhook | None = None, *, clock: Callable[[], float] = monotonic) -> None:
        self._webhook = webhook
        self._clock = clock
        self._routes: dict[str, _Route] = {}

    def configure(
        self,
        settings: Mapping[str, RouteExperiment | None],
        references: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    ) -> None:
        """Follow a new config: a route keeps its ledger while its feedback settings stand, and its quality and test
        while its experiment does; a changed experiment starts over (its arms or metric no longer compare).
        `references`: route -> version -> the figures its metadata states (`"metrics": {"accuracy": 0.97}`)."""
        routes: dict[str, _Route] = {}
        for name, wanted in settings.items():
            if wanted is None:
                continue
            current = self._routes.get(name)
            if current is None or current.settings.feedback != wanted.feedback:
                ledger = Ledger(wanted.feedback.max_records, wanted.feedback.ttl, clock=self._clock)
            else:
                ledger = current.ledger
            if current is not None and current.settings.experiment == wanted.experiment:
                current.settings, current.ledger = wanted, ledger
                routes[name] = current
            else:
                routes[name] = _Route(wanted, ledger, test=self._fresh_test(wanted))
            routes[name].references = (references or {}).get(name, {})
        self._routes = routes

    @staticmethod
    def _fresh_test(settings: RouteExperiment) -> SequentialTest:
        experiment = settings.experiment
        if experiment is None:
            return SequentialTest()
        proportion = experiment.metric in ("accuracy", "conversion")
        return SequentialTest(alpha=experiment.alpha, proportion=proportion, tau=experiment.tau)

    def lane(self, route: str, version: str) -> LedgerLane | None:
        state = self._routes.get(route)
        return None if state is None else state.ledger.lane(version)

    @property
    def routes(self) -> Mapping[str, Any]:
        return self._routes

    # Feedback ------------------------------------------------------------------------------------------------------

    def count_malformed(self, route: str) -> None:
        state = self._routes.get(route)
        if state is not None:
            state.outcomes["malformed"] += 1

    def judge(self, route: str, items: Sequence[Feedback]) -> list[Judged]:
        """Score each item against the decision it names and fold it into its version's quality; then one look of
        the route's test and its alerts."""
        judged = self.judge_some(route, items)
        self.conclude(route, judged)
        return judged

    def require(self, route: str) -> _Route:
        """The route's state; ProtocolError (400) when its config asks for no feedback."""
        state = self._routes.get(route)
        if state is None:
            raise ProtocolError(f"model '{route}' takes no feedback: its route declares no feedback or experiment")
        return state

    async def receive(self, route: str, body: bytes, *, header_version: str | None) -> tuple[list[Judged], bool]:
        """A feedback request's body, checked whole before any item is used (a fault is a ProtocolError naming its
        index, counted as malformed), then judged: both in slices with the event loop free between them, since a
        list of 10,000 is about 200 ms of Python that must not hold up the requests served meanwhile. Returns the
        items' outcomes and whether the body was a list."""
        items: list[Feedback] = []
        try:
            raw, batch = load_feedback(body)
            for start in range(0, len(raw), SLICE):
                part = enumerate(raw[start : start + SLICE], start)
                items += [parse_item(item, index, batch, header_version) for index, item in part]
                await asyncio.sleep(0)
        except ProtocolError:
            self.count_malformed(route)
            raise
        judged: list[Judged] = []
        for start in range(0, len(items), SLICE):
            judged += self.judge_some(route, items[start : start + SLICE])
            await asyncio.sleep(0)
        self.conclude(route, judged)
        return judged, batch

    def judge_some(self, route: str, items: Sequence[Feedback]) -> list[Judged]:
        """`judge` without the look, for a slice of a long list."""
        state = self.require(route)
        judged = [self._one(state, item) for item in items]
        for result in judged:
            state.outcomes[result.outcome] += 1
        return judged

    def conclude(self, route: str, judged: Sequence[Judged]) -> None:
        """One look of the route's test and its alerts, after a request's feedback is judged."""
        state = self._routes.get(route)
        if state is not None and any(result.outcome == "accepted" for result in judged):
            self._look(route, state)

    def _one(self, state: _Route, item: Feedback) -> Judged:
        outputs: Outputs | None = None
        version = item.version
        if item.id is not None:
            found, arm, outputs = state.ledger.find(item.id)
            if found == "found":
                version = arm
            elif found == "duplicate":
                return Judged("duplicate", item.id, arm, f"request '{item.id}' was already judged; counted once")
            elif item.version is None or (item.kind != "reward" and item.prediction is None):
                why = "has expired" if found == "expired" else "was never served here (or not with an id)"
                ttl = f"{state.ledger.ttl:g} s"
                return Judged(found, item.id, arm, f"request '{item.id}' {why}; decisions are kept for {ttl}")
        assert version is not None  # parse_feedback: no id means a version was given
        try:
            self._score(state, version, item, outputs)
        except ProtocolError as exc:
            return Judged("rejected", item.id, version, str(exc))
        except (ValueError, TypeError, OverflowError) as exc:  # an output that cannot be read as this feedback's kind
            return Judged("rejected", item.id, version, f"the prediction cannot be scored: {exc}")
        if outputs is not None and item.id is not None:
            state.ledger.settle(item.id)
        return Judged("accepted", item.id, version)

    def _score(self, state: _Route, version: str, item: Feedback, outputs: Outputs | None) -> None:
        quality = state.quality_of(version)
        if item.kind == "reward":
            for metric, value in metric_values("reward", reward=item.truth[0]):
                quality.add(metric, value)
            return
        if item.prediction is not None and outputs is None:
            predicted = np.asarray(item.prediction)
        else:
            assert outputs is not None
            experiment = state.settings.experiment
            predicted = predictions(outputs, experiment.output if experiment is not None else None)
        scores: Scores
        if item.kind == "label":
            scores = score_labels(predicted, item.truth)
            for correct, label in zip(scores.correct, scores.classes, strict=True):
                quality.add("accuracy", correct)
                quality.add_class(label, correct)
        else:
            scores = score_values(predicted, item.truth)
            for error in scores.errors:
                for metric, value in metric_values("value", error=error):
                    quality.add(metric, value)

    def _look(self, route: str, state: _Route) -> None:
        experiment = state.settings.experiment
        if experiment is None:
            return
        metric = experiment.metric  # for rmse the per-sample values are squared errors: the test compares MSEs
        control, candidate = (state.quality_of(arm).cumulative.get(metric) for arm in experiment.arms[:2])
        if (
            control is not None and candidate is not None
            and min(control.n, candidate.n) >= experiment.min_samples
        ):  # fmt: skip
            state.test = state.test.update(control, candidate)
            state.looks += 1
        if experiment.alert is not None:
            self._alerts(route, state)

    def _alerts(self, route: str, state: _Route) -> None:
        experiment = state.settings.experiment
        assert experiment is not None and experiment.alert is not None
        alert = experiment.alert
        metric = experiment.metric
        for version, quality in state.quality.items():
            n = quality.samples(metric, windowed=True)
            value = quality.value(metric, windowed=True)
            if n < min(experiment.min_samples, experiment.window) or value is None:
                continue
            reasons = []
            if alert.bound is not None and (
                value < alert.bound if experiment.higher_is_better else value > alert.bound
            ):
                reasons.append(
                    f"{'below its floor' if experiment.higher_is_better else 'above its ceiling'} {alert.bound:g}"
                )
            reference = state.references.get(version, {}).get(metric)
            if alert.reference and reference is not None and _significantly_below(value, n, reference, metric):
                reasons.append(f"significantly below its validation figure {reference:.4g} (p < {REFERENCE_ALPHA:g})")
            bad = bool(reasons)
            previous = state.alerts.get(version, False)
            state.alerts[version] = bad  # every judged version has a state (the metric shows 0 as well as 1)
            if bad == previous:
                continue
            if bad:
                logger.warning("%s %s: windowed %s %.4g is %s", route, version, metric, value, "; ".join(reasons))
            else:
                logger.info("%s %s: windowed %s %.4g is back", route, version, metric, value)
            if self._webhook is not None and alert.webhook_url is not None:
                self._webhook.notify(alert.webhook_url, {
                    "kind": "quality", "state": "firing" if bad else "resolved", "model": route, "version": version,
                    "metric": metric, "window": n, "value": value, "bound": alert.bound, "reference": reference,
                    "reasons": reasons,
                })  # fmt: skip

    # Reading -------------------------------------------------------------------------------------------------------

    def verdict(self, route: str, baseline: str, candidate: str) -> tuple[bool, bool | None, str]:
        """The rollout gate: whether the route's experiment compares exactly `baseline` (its control) and
        `candidate`; whether the candidate is not worse than the control by more than the margin (True, False, or
        None while the test has not decided); and a line saying why."""
        state = self._routes.get(route)
        experiment = None if state is None else state.settings.experiment
        if state is None or experiment is None or experiment.arms[:2] != (baseline, candidate):
            return False, None, "no experiment on this route compares candidate and baseline"
        verdict = state.test.not_worse_by(_test_margin(state), higher_is_better=experiment.higher_is_better)
        interval = f"[{state.test.low:.4g}, {state.test.high:.4g}]"
        if state.looks == 0:
            interval = f"not tested yet: {experiment.min_samples} judged predictions per arm needed"
        return (
            True,
            verdict,
            (
                f"{experiment.metric} difference {experiment.arms[1]} - {experiment.arms[0]} in {interval}"
                f" (always valid, alpha {experiment.alpha:g}; margin {experiment.margin:g}; {state.looks} looks)"
            ),
        )

    def report(self) -> dict[str, Any]:
        return {name: self._report(state) for name, state in sorted(self._routes.items())}

    def _report(self, state: _Route) -> dict[str, Any]:
        ledger = state.ledger
        out: dict[str, Any] = {
            "feedback": {outcome: state.outcomes.get(outcome, 0) for outcome in OUTCOMES},
            "record": {
                "held": len(ledger),
                "capacity": ledger.capacity,
                "ttl_seconds": ledger.ttl,
                "recorded": ledger.recorded,
                "evicted": ledger.evicted,
                "expired": ledger.expired,
            },  # fmt: skip
            "versions": {version: _quality_report(q) for version, q in sorted(state.quality.items())},
        }
        experiment = state.settings.experiment
        if experiment is None:
            return out
        test = state.test
        arms = []
        for arm in experiment.arms:
            quality = state.quality.get(arm)
            cumulative = quality.cumulative.get(experiment.metric) if quality is not None else None
            n = cumulative.n if cumulative is not None else 0
            mean = cumulative.mean if cumulative is not None else None
            half = 1.96 * math.sqrt(cumulative.variance / n) if cumulative is not None and n > 1 else None
            interval = None if half is None or mean is None else [mean - half, mean + half]
            if experiment.metric == "rmse" and mean is not None:  # the mean squared error's root, both ends too
                mean = math.sqrt(mean)
                interval = None if interval is None else [math.sqrt(max(0.0, interval[0])), math.sqrt(interval[1])]
            arms.append({"version": arm, "n": n, "mean": mean, "interval_95": interval})
        out["experiment"] = {
            "metric": experiment.metric, "higher_is_better": experiment.higher_is_better, "alpha": experiment.alpha,
            "min_samples": experiment.min_samples, "margin": experiment.margin, "control": experiment.arms[0],
            "candidate": experiment.arms[1], "arms": arms, "looks": state.looks,
            "difference": None if math.isnan(test.estimate) else test.estimate,
            "interval": None if not math.isfinite(test.low) else [test.low, test.high],
            "p_value": test.p_value,
            "decision": test.decision(higher_is_better=experiment.higher_is_better),
            "not_worse_by_margin": test.not_worse_by(_test_margin(state), higher_is_better=experiment.higher_is_better),
            "test_scale": "mean squared error" if experiment.metric == "rmse" else experiment.metric,
            "alerts": {version: firing for version, firing in sorted(state.alerts.items())},
        }  # fmt: skip
        return out


def _test_margin(state: _Route) -> float:
    """The margin on the test's scale. For rmse the test compares mean squared errors, so "the candidate's RMSE at
    most `margin` above the control's" is MSE_c - MSE_a <= (r + margin)^2 - r^2, with r the control's RMSE now."""
    experiment = state.settings.experiment
    assert experiment is not None
    if experiment.metric != "rmse":
        return experiment.margin
    control = state.quality.get(experiment.arms[0])
    rmse = control.value("rmse") if control is not None else None
    return (2.0 * (rmse or 0.0) + experiment.margin) * experiment.margin


def _quality_report(quality: Quality) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for metric in quality.cumulative:
        metrics[metric] = {
            "n": quality.samples(metric), "cumulative": quality.value(metric),
            "window": quality.value(metric, windowed=True), "window_n": quality.samples(metric, windowed=True),
        }  # fmt: skip
    if quality.per_class:
        metrics["accuracy_per_class"] = {
            label: {"n": n, "accuracy": right / n} for label, (n, right) in sorted(quality.per_class.items())
        }
    return metrics
