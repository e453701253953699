"""A route's `experiment:` and `feedback:` blocks, parsed and frozen (config.py only checks they are mappings).

    experiment:
      arms: [stable, canary]        # default: the baseline, then every version with weight > 0; the first is control
      metric: accuracy              # accuracy | reward | conversion | mae | rmse
      alpha: 0.05
      min_samples: 200              # per arm, before any decision (and before a quality alert)
      margin: 0.0                   # non-inferiority margin for the rollout gate, in the metric's units
      tau: 0.05                     # the test's mixing spread, in pooled standard deviations
      output: null                  # the output a label or value is scored against (default: the first)
      window: 1000                  # windowed quality: each version's last N scored feedbacks
      alert: {floor: 0.9, webhook_url: "http://..."}   # or ceiling: for mae / rmse
    feedback: {max_records: 100000, ttl: 1h}

Either block turns the decision record on for the route; `feedback` alone gives quality metrics without a test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway import fields
from gateway.errors import ConfigError

Metric = Literal["accuracy", "reward", "conversion", "mae", "rmse"]
METRICS: tuple[Metric, ...] = ("accuracy", "reward", "conversion", "mae", "rmse")
LOWER_IS_BETTER = frozenset({"mae", "rmse"})
_EXPERIMENT_KEYS = ("arms", "metric", "alpha", "min_samples", "margin", "tau", "output", "window", "alert")
_FEEDBACK_KEYS = ("max_records", "ttl")
_ALERT_KEYS = ("floor", "ceiling", "reference", "webhook_url")


@dataclass(frozen=True, slots=True)
class FeedbackSettings:
    max_records: int = 100_000  # decisions kept for joining feedback; the oldest go first (counted)
    ttl: float = 3600.0  # seconds a decision can still be judged


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """Fires when a version's windowed quality is worse than the bound (below `floor` for accuracy, reward and
    conversion; above `ceiling` for mae and rmse), or, with `reference`, significantly below the figure its
    metadata.json states (`"metrics": {"accuracy": ...}`: its validation figure); clears when it is back."""

    bound: float | None = None
    reference: bool = True
    webhook_url: str | None = None


@dataclass(frozen=True, slots=True)
class ExperimentSettings:
    arms: tuple[str, ...]  # the first is the control
    metric: Metric = "accuracy"
    alpha: float = 0.05
    min_samples: int = 200
    margin: float = 0.0
    tau: float = 0.05
    output: str | None = None
    window: int = 1000
    alert: AlertSettings | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER


@dataclass(frozen=True, slots=True)
class RouteExperiment:
    """What a route asks of this module: the record for feedback, and the experiment (None: quality only)."""

    feedback: FeedbackSettings
    experiment: ExperimentSettings | None


def parse_experiment_settings(
    experiment: Mapping[str, Any] | None,
    feedback: Mapping[str, Any] | None,
    path: str,
    *,
    versions: Sequence[str],
    baseline: str,
    weights: Mapping[str, float],
    candidate: str | None = None,
) -> RouteExperiment | None:
    """None when the route has neither block. `path` is the route's key path, e.g. `routes.fraud`; `candidate` is
    the route's rollout candidate, the default second arm (its weight in the file is usually 0)."""
    if experiment is None and feedback is None:
        return None
    record = FeedbackSettings()
    if feedback is not None:
        where = f"{path}.feedback"
        data = fields.block(feedback, where, _FEEDBACK_KEYS)
        record = FeedbackSettings(
            max_records=fields.integer(data, "max_records", record.max_records, where, low=1, high=10_000_000),
            ttl=fields.duration(data, "ttl", record.ttl, where, low=1.0),
        )
    if experiment is None:
        return RouteExperiment(record, None)
    where = f"{path}.experiment"
    data = fields.block(experiment, where, _EXPERIMENT_KEYS)
    arms = _arms(data.get("arms"), f"{where}.arms", versions, baseline, weights, candidate)
    metric: Metric = fields.choice(data, "metric", "accuracy", where, METRICS)  # type: ignore[assignment]
    alert = None
    if data.get("alert") is not None:
        alert = _alert(data["alert"], f"{where}.alert", metric)
    settings = ExperimentSettings(
        arms=arms,
        metric=metric,
        alpha=fields.number(data, "alpha", 0.05, where, low=0.0, high=0.5, open_low=True),
        min_samples=fields.integer(data, "min_samples", 200, where, low=2),
        margin=fields.number(data, "margin", 0.0, where, low=0.0, high=1e9),
        tau=fields.number(data, "tau", 0.05, where, low=0.0, high=10.0, open_low=True),
        output=fields.string(data, "output", where),
        window=fields.integer(data, "window", 1000, where, low=10, high=1_000_000),
        alert=alert,
    )
    return RouteExperiment(record, settings)


def _arms(
    value: object,
    path: str,
    versions: Sequence[str],
    baseline: str,
    weights: Mapping[str, float],
    candidate: str | None,
) -> tuple[str, ...]:
    if value is None:
        others = [v for v in versions if v not in (baseline, candidate) and weights.get(v, 0.0) > 0]
        arms = (baseline, *([candidate] if candidate is not None and candidate != baseline else []), *others)
        if len(arms) < 2:
            raise ConfigError(f"{path}: the route sends traffic to one version only; name two or more arms")
        return arms
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):  # config.py freezes lists
        raise ConfigError(f"{path}: must be a list of the route's version names, got {value!r}")
    if len(value) < 2 or len(set(value)) != len(value):
        raise ConfigError(f"{path}: must name two or more different versions, got {list(value)!r}")
    for name in value:
        if name not in versions:
            raise ConfigError(f"{path}: {name!r} is not a version of this route (versions: {', '.join(versions)})")
    return tuple(value)


def _alert(value: object, path: str, metric: Metric) -> AlertSettings:
    data = fields.block(value, path, _ALERT_KEYS)
    key, other = ("ceiling", "floor") if metric in LOWER_IS_BETTER else ("floor", "ceiling")
    if other in data:
        raise ConfigError(f"{path}.{other}: {metric} is {'an error' if key == 'ceiling' else 'a score'}; use {key}")
    return AlertSettings(
        bound=fields.optional_number(data, key, None, path, low=-1e12, high=1e12),
        reference=fields.boolean(data, "reference", True, path),
        webhook_url=fields.http_url(data, "webhook_url", path),
    )
