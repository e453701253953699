"""Prometheus export of drift: a custom collector that reads the monitor's latest immutable snapshot at scrape time.

Nothing is updated per evaluation and a retired version's series disappear with its snapshot entry. Labels are
only `model`, `version` (from the routing config) and `feature` (from the profile, capped per version by
`max_exported_features`); raw request values never become labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gateway.drift.monitor import DriftMonitor, VersionSnapshot
    from gateway.webhook import Webhook

VERSION_LABELS = ("model", "version")
FEATURE_LABELS = ("model", "version", "feature")
# Per-feature series: (metric, help, the FeatureResult field it shows).
FEATURE_SERIES = (
    ("gateway_drift_psi", "Population stability index, latest window.", "psi"),
    (
        "gateway_drift_js_distance",
        "Jensen-Shannon distance (base 2) above the noise expected at this size, latest window.",
        "js_distance",
    ),
    ("gateway_drift_pvalue", "The feature's combined test p-value (before BH).", "pvalue"),
    ("gateway_drift_location_pvalue", "Normal-scores location test p-value (numeric features).", "location_pvalue"),
    ("gateway_drift_scale_pvalue", "Normal-scores scale test p-value (numeric features).", "scale_pvalue"),
    ("gateway_drift_ks_pvalue", "Binned Kolmogorov-Smirnov p-value (numeric features).", "ks_pvalue"),
    ("gateway_drift_chi2_pvalue", "Chi-square homogeneity p-value.", "chi2_pvalue"),
    ("gateway_drift_novelty_pvalue", "Novelty test p-value.", "novel_pvalue"),
    (
        "gateway_drift_novel_ratio",
        "Share of values beyond the reference range, unseen or missing, above what the reference foretells.",
        "novel_share",
    ),
    ("gateway_drift_missing_ratio", "Share of missing values, latest window.", "missing_ratio"),
    ("gateway_drift_feature_drifted", "1 if the feature was significant and past the effect gate.", "drifted"),
)


class DriftCollector(Collector):
    def __init__(self, monitor: DriftMonitor, webhook: Webhook | None = None) -> None:
        self._monitor = monitor
        self._webhook = webhook

    def describe(self) -> Iterable[Metric]:
        # Empty families: lets the registry catch a name clash at register time without collecting.
        return list(self._families((), live=False))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._monitor.snapshot().values(), live=True))

    def _families(self, snapshots: Iterable[VersionSnapshot], *, live: bool) -> Iterator[Metric]:
        g, c = GaugeMetricFamily, CounterMetricFamily
        detected = g(
            "gateway_drift_detected",
            "1 while k of the last m windows drifted (the version's verdict).",
            labels=VERSION_LABELS,
        )
        window_drifted = g(
            "gateway_drift_window_drifted", "1 if the latest full window drifted.", labels=VERSION_LABELS
        )
        window_samples = g("gateway_drift_window_samples", "Rows in the latest full window.", labels=VERSION_LABELS)
        filling = g("gateway_drift_window_filling_samples", "Rows in the window being filled.", labels=VERSION_LABELS)
        evaluated = g(
            "gateway_drift_last_evaluation_timestamp_seconds",
            "When the latest window was evaluated.",
            labels=VERSION_LABELS,
        )
        features_drifted = g(
            "gateway_drift_features_drifted", "Features that drifted in the latest window.", labels=VERSION_LABELS
        )
        taken = c(
            "gateway_drift_samples_taken", "Rows selected by the sampler (enqueued or dropped).", labels=VERSION_LABELS
        )
        dropped = c(
            "gateway_drift_samples_dropped",
            "Sampled rows lost because the drift buffer was full.",
            labels=VERSION_LABELS,
        )
        processed = c("gateway_drift_samples_processed", "Sampled rows binned into windows.", labels=VERSION_LABELS)
        windows = c("gateway_drift_windows", "Windows evaluated.", labels=VERSION_LABELS)
        windows_drifted = c("gateway_drift_windows_drifted", "Windows that drifted.", labels=VERSION_LABELS)
        per_feature = [(g(name, text, labels=FEATURE_LABELS), field) for name, text, field in FEATURE_SERIES]
        depth = g("gateway_drift_queue_depth", "Samples waiting in the drift buffer.")
        sampler = self._monitor.sampler
        if live:
            depth.add_metric([], sampler.depth)
        for s in snapshots:
            labels = [s.key.model, s.key.version]
            detected.add_metric(labels, 1.0 if s.drifting else 0.0)
            filling.add_metric(labels, s.filling)
            processed.add_metric(labels, s.processed)
            windows.add_metric(labels, s.windows_total)
            windows_drifted.add_metric(labels, s.windows_drifted_total)
            counts = sampler.counts(s.key)
            if counts is not None:
                taken.add_metric(labels, counts.taken)
                dropped.add_metric(labels, counts.dropped)
            window = s.window
            if window is None:
                continue
            window_drifted.add_metric(labels, 1.0 if window.drifted else 0.0)
            window_samples.add_metric(labels, window.samples)
            evaluated.add_metric(labels, window.evaluated_at)
            features_drifted.add_metric(labels, sum(f.drifted for f in window.features))
            # Outputs first: they are few and usually the most telling; then inputs up to the cap.
            ordered = sorted(window.features, key=lambda f: f.source != "output")
            for f in ordered[: s.settings.max_exported_features]:
                fl = [*labels, f.name]
                for gauge, field in per_feature:
                    value = getattr(f, field)
                    if value is not None and value == value:  # None or NaN: the feature has no such figure
                        gauge.add_metric(fl, float(value))
        yield from (detected, window_drifted, window_samples, filling, evaluated, features_drifted)
        yield from (taken, dropped, processed, windows, windows_drifted, depth)
        yield from (gauge for gauge, _ in per_feature)
        # Samples lost outside any version's counters: offers that failed, or samples of a version retired while
        # they waited, or that could not be binned.
        lost = CounterMetricFamily(
            "gateway_drift_samples_lost", "Drift samples lost outside the per-version counters, by cause.",
            labels=("cause",),
        )  # fmt: skip
        if live:
            lost.add_metric(["offer_failed"], sampler.failures)
            lost.add_metric(["discarded"], self._monitor.discarded)
        yield lost
        if self._webhook is not None:
            yield _webhook_family(self._webhook, live=live)


def _webhook_family(webhook: Webhook, *, live: bool) -> Metric:
    family = CounterMetricFamily(
        "gateway_drift_webhook_deliveries", "Drift webhook notifications by outcome.", labels=("outcome",)
    )
    if live:
        family.add_metric(["sent"], webhook.sent)
        family.add_metric(["failed"], webhook.failed)
        family.add_metric(["dropped"], webhook.dropped)
    return family
