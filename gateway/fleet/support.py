"""Which of a rollout's gates a fleet controller can judge from Prometheus, and a clear refusal of the others.

The fleet controller sees only what the replicas export, summed over them (gateway.fleet.queries has the PromQL):

| gate | from | fleet |
|---|---|---|
| `error_rate`, `error_rate_increase` | `gateway_requests_total`; shadow steps `gateway_shadow_requests_total` | yes |
| `p99_latency_ratio` | `gateway_request_duration_seconds` buckets | weight steps only, at the buckets' resolution |
| `shadow_agreement` | `gateway_shadow_rows_total` by result | yes |
| `drift` | `gateway_drift_windows_total`, `gateway_drift_detected`, `gateway_drift_feature_drifted` | yes |
| `prediction_shift` | needs every answer's prediction per version; no series counts them | refused |
| `feedback` | needs the experiment's sums pooled over replicas; each exports only its own decision | refused |

A shadow step's latency gate compares each copy with its own request (the paired latency); Prometheus holds the two
histograms apart, never the pairs, so the gate skips there and judges the candidate's served latency in the weight
steps, as it does in process behind a batched primary. Pre-traffic validation needs the models themselves, which the
controller does not load: `gateway validate` runs the same checks, in the pipeline before the rollout.

A refused gate is a config error naming its key, never a gate quietly skipped: an operator who asked for it would
otherwise believe it watched.
"""

from __future__ import annotations

from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.generation import Features, route_path


def check_supported(config: GatewayConfig, features: Features) -> None:
    """ConfigError naming the first rollout key of `config` a fleet controller cannot carry out."""
    for name, settings in features.rollout.items():
        if settings is None:
            continue
        where = f"{config.source}: {route_path(name)}.rollout"
        if settings.validate is not None:
            raise ConfigError(
                f"{where}.validate: the fleet controller loads no models, so it cannot run the golden-set checks;"
                f" run `gateway validate` on this file in the pipeline before the rollout, and drop the block here"
            )
        gates = settings.gates
        if gates.max_prediction_shift_js is not None:
            raise ConfigError(
                f"{where}.gates.max_prediction_shift_js: the fleet controller cannot judge this gate (no series"
                " counts each version's predictions, so Prometheus cannot compare their distributions); set it to"
                " null (shadow_agreement judges the candidate's answers in the shadow steps)"
            )
        route = features.experiment.get(name)
        experiment = None if route is None else route.experiment
        compared = experiment is not None and experiment.arms[:2] == (
            config.routes[name].split.baseline,
            settings.candidate,
        )
        if gates.block_on_feedback and compared:
            raise ConfigError(
                f"{where}.gates.block_on_feedback: the fleet controller cannot judge this gate (each replica's"
                " experiment tests only the feedback it joined, and exports its decision, not the sums a pooled"
                " always-valid test needs); set it to false and watch gateway_experiment_decision per replica"
            )
