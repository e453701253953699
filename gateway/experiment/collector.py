"""Prometheus series for feedback, quality and experiments, read from the hub at scrape time (nothing is computed on
the request path or kept twice)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.experiment.hub import OUTCOMES, Experiments

_METRICS = ("accuracy", "reward", "conversion", "mae", "rmse")


class ExperimentCollector(Collector):
    def __init__(self, experiments: Experiments) -> None:
        self._experiments = experiments

    def collect(self) -> Iterator[Metric]:
        feedback = CounterMetricFamily(
            "gateway_feedback", "Feedback items by outcome (malformed: the body was refused whole).",
            labels=("model", "outcome"),
        )  # fmt: skip
        held = GaugeMetricFamily("gateway_feedback_records", "Decisions held for joining feedback.", labels=("model",))
        lost = CounterMetricFamily(
            "gateway_feedback_records_dropped",
            "Decisions that fell out of the record: evicted by its bound before their time, or expired.",
            labels=("model", "reason"),
        )  # fmt: skip
        quality = GaugeMetricFamily(
            "gateway_quality", "Live quality from feedback, per version: cumulative, and over the last window.",
            labels=("model", "version", "metric", "window"),
        )  # fmt: skip
        samples = GaugeMetricFamily(
            "gateway_quality_samples",
            "Feedback behind gateway_quality.",
            labels=("model", "version", "metric", "window"),
        )
        alert = GaugeMetricFamily(
            "gateway_quality_alert", "1 while a version's windowed quality is worse than its bound.",
            labels=("model", "version", "metric"),
        )  # fmt: skip
        p_value = GaugeMetricFamily(
            "gateway_experiment_p_value", "The experiment's always-valid p-value (candidate against control).",
            labels=("model", "control", "candidate", "metric"),
        )  # fmt: skip
        interval = GaugeMetricFamily(
            "gateway_experiment_difference", "The always-valid interval of candidate - control, and its estimate.",
            labels=("model", "control", "candidate", "metric", "bound"),
        )  # fmt: skip
        decision = GaugeMetricFamily(
            "gateway_experiment_decision", "1 for the experiment's current decision.",
            labels=("model", "control", "candidate", "metric", "decision"),
        )  # fmt: skip
        for route, state in sorted(self._experiments.routes.items()):
            for outcome in (*OUTCOMES, "malformed"):
                feedback.add_metric([route, outcome], state.outcomes.get(outcome, 0))
            held.add_metric([route], len(state.ledger))
            lost.add_metric([route, "evicted"], state.ledger.evicted)
            lost.add_metric([route, "expired"], state.ledger.expired)
            for version, measured in sorted(state.quality.items()):
                for metric in _METRICS:
                    for windowed in (False, True):
                        value = measured.value(metric, windowed=windowed)
                        if value is None:
                            continue
                        labels = [route, version, metric, "window" if windowed else "cumulative"]
                        quality.add_metric(labels, value)
                        samples.add_metric(labels, measured.samples(metric, windowed=windowed))
            experiment = state.settings.experiment
            if experiment is None:
                continue
            for version, firing in sorted(state.alerts.items()):
                alert.add_metric([route, version, experiment.metric], 1.0 if firing else 0.0)
            control, candidate = experiment.arms[0], experiment.arms[1]
            base = [route, control, candidate, experiment.metric]
            test = state.test
            p_value.add_metric(base, test.p_value)
            if state.looks:
                interval.add_metric([*base, "low"], test.low)
                interval.add_metric([*base, "high"], test.high)
                interval.add_metric([*base, "estimate"], test.estimate)
            current = test.decision(higher_is_better=experiment.higher_is_better)
            for name in ("candidate better", "candidate worse", "no decision yet"):
                decision.add_metric([*base, name.replace(" ", "_")], 1.0 if name == current else 0.0)
        yield from (feedback, held, lost, quality, samples, alert, p_value, interval, decision)
