"""Rollout state for Prometheus, read from the manager at scrape time (so the exposition is never behind a decision).

- `gateway_rollout_phase{route,phase}`: 1 on the current phase, 0 on the others (a state set).
- `gateway_rollout_step{route}`: the current step, 1-based (0 while validating).
- `gateway_rollout_failed_checks{route}`, `gateway_rollout_transitions_total{route,to}`.
- `gateway_rollout_gate_value{route,gate}`, `gateway_rollout_gate_threshold{route,gate}` and
  `gateway_rollout_gate_verdict{route,gate,verdict}` (a state set over pass, fail, inconclusive, skipped), from the
  latest evaluation of the current step.
- `gateway_rollout_samples_dropped_total{route}`: gate samples lost to full buffers (the gates still decide on what
  they kept; counted so nothing is lost silently).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.rollout.controller import RolloutController
from gateway.rollout.gates import GATE_VERDICTS
from gateway.rollout.observations import LocalRecorder
from gateway.rollout.state import PHASES


class Rollouts(Protocol):
    """What the collector reads (gateway.rollouts.RolloutManager is one)."""

    @property
    def controllers(self) -> Mapping[str, RolloutController]: ...

    transitions: dict[tuple[str, str], int]
    dropped: dict[str, int]


class RolloutCollector(Collector):
    def __init__(self, manager: Rollouts) -> None:
        self._manager = manager

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        manager = self._manager
        controllers = sorted(manager.controllers.items())
        phase = GaugeMetricFamily(
            "gateway_rollout_phase",
            "1 on each route's current rollout phase, 0 on the others.",
            labels=("route", "phase"),
        )
        step = GaugeMetricFamily(
            "gateway_rollout_step", "Current rollout step, 1-based (0 while validating).", labels=("route",)
        )
        failed = GaugeMetricFamily(
            "gateway_rollout_failed_checks", "Failed gate evaluations so far in the rollout.", labels=("route",)
        )
        value = GaugeMetricFamily(
            "gateway_rollout_gate_value", "Latest figure of each rollout gate.", labels=("route", "gate")
        )
        threshold = GaugeMetricFamily(
            "gateway_rollout_gate_threshold", "Threshold of each rollout gate.", labels=("route", "gate")
        )
        verdict = GaugeMetricFamily(
            "gateway_rollout_gate_verdict",
            "1 on each rollout gate's latest verdict (pass, fail, inconclusive, skipped), 0 on the others.",
            labels=("route", "gate", "verdict"),
        )
        dropped = CounterMetricFamily(
            "gateway_rollout_samples_dropped",
            "Gate samples (tapped requests, shadow results) lost to full buffers.",
            labels=("route",),
        )
        for route, controller in controllers:
            state = controller.state
            for name in PHASES:
                phase.add_metric((route, name), 1.0 if state.phase == name else 0.0)
            step.add_metric((route,), float(state.step + 1))
            failed.add_metric((route,), float(state.failed_checks))
            for result in controller.results:
                if result.value is not None and math.isfinite(result.value):
                    value.add_metric((route, result.name), result.value)
                if result.threshold is not None:
                    threshold.add_metric((route, result.name), result.threshold)
                for outcome in GATE_VERDICTS:
                    verdict.add_metric((route, result.name, outcome), 1.0 if result.verdict == outcome else 0.0)
            lost = manager.dropped.get(route, 0)
            recorder = controller.recorder
            if isinstance(recorder, LocalRecorder):
                lost += recorder.lost
            dropped.add_metric((route,), float(lost))
        transitions = CounterMetricFamily(
            "gateway_rollout_transitions",
            "Rollout phase transitions by route and phase entered.",
            labels=("route", "to"),
        )
        for (route, target), count in sorted(manager.transitions.items()):
            transitions.add_metric((route, target), float(count))
        yield from (phase, step, failed, transitions, value, threshold, verdict, dropped)
