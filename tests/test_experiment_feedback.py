"""Feedback bodies, the decision ledger (bound, time limit, duplicates) and scoring, without HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.errors import ConfigError, ProtocolError
from gateway.experiment.feedback import parse_feedback, route_header_version
from gateway.experiment.ledger import Ledger
from gateway.experiment.scoring import predictions, score_labels, score_values
from gateway.experiment.settings import parse_experiment_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_ledger_stays_within_its_bound_under_a_million_requests_and_counts_what_falls_out() -> None:
    clock = Clock()
    ledger = Ledger(1_000, ttl=60.0, clock=clock)
    lane = ledger.lane("canary")
    outputs = {"Y": np.zeros((1, 2), np.float32)}
    peak = 0
    for i in range(1_000_000):
        lane.offer(str(i), outputs)
        if i % 50_000 == 0:
            clock.now += 1.0
            peak = max(peak, len(ledger))
    assert len(ledger) == 1_000 and peak <= 1_000
    assert ledger.recorded == 1_000_000 and ledger.evicted + ledger.expired == 999_000
    lane.offer(None, outputs)  # no id: nothing to join feedback to, nothing kept
    assert ledger.recorded == 1_000_000
    assert ledger.find("999999")[0] == "found" and ledger.find("0")[0] == "unknown"


def test_a_decision_is_judged_once_and_expires_after_its_ttl() -> None:
    clock = Clock()
    ledger = Ledger(10, ttl=60.0, clock=clock)
    ledger.lane("stable").offer("a", {"Y": np.ones(1)})
    ledger.lane("stable").offer("b", {"Y": np.ones(1)})
    found, arm, outputs = ledger.find("a")
    assert (found, arm) == ("found", "stable") and outputs is not None
    assert ledger.find("a")[0] == "found"  # found is not judged: a feedback that cannot be scored may come again
    ledger.settle("a")
    assert ledger.find("a")[0] == "duplicate"
    clock.now += 61.0
    assert ledger.find("b")[:2] == ("expired", "stable") and ledger.expired == 1
    assert ledger.find("b")[0] == "unknown"  # an expired decision is gone


def test_feedback_bodies() -> None:
    items, batch = parse_feedback(b'{"id": "r1", "label": 3}')
    assert not batch and items[0].kind == "label" and items[0].truth == (3,)
    items, batch = parse_feedback(b'[{"id": "r1", "value": [1.5, 2]}, {"id": "r2", "reward": 1}]')
    assert batch and items[0].truth == (1.5, 2) and items[1].truth == (1.0,)
    stateless = parse_feedback(b'{"id": "r9", "reward": 0}', header_version="canary")[0][0]
    assert stateless.version == "canary"
    for body, fault in [
        (b"not json", "not valid JSON"),
        (b"[]", "empty"),
        (b'{"id": "r1"}', "exactly one of label, value or reward"),
        (b'{"id": "r1", "label": 1, "reward": 1}', "exactly one"),
        (b'{"id": 5, "label": 1}', "feedback.id: must be a non-empty string"),
        (b'{"id": "r1", "value": "high"}', "finite numbers"),
        (b'{"id": "r1", "reward": NaN}', "not valid JSON"),
        (b'{"id": "r1", "label": 1, "colour": 2}', "feedback.colour: unknown field"),
        (b'[{"id": "r1", "label": 1}, 7]', r"feedback\[1\]: must be an object"),
        (b'{"label": 1}', "feedback.id: is required"),
        (b'{"version": "canary", "label": 1}', "needs the prediction it judges"),
    ]:
        with pytest.raises(ProtocolError, match=fault):
            parse_feedback(body)
    assert route_header_version("fraud/canary;version=2;reason=weighted") == "canary"
    assert route_header_version("garbage") is None and route_header_version(None) is None


def test_scoring_reads_classes_and_values() -> None:
    scores = {"probabilities": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)}
    predicted = predictions(scores, None)
    assert predicted.tolist() == [1, 0]
    assert score_labels(predicted, [1, 1]).correct == (1.0, 0.0)
    labels = {"label": np.array([b"cat"], dtype=object)}
    assert score_labels(predictions(labels, None), ["cat"]).correct == (1.0,)
    values = predictions({"Y": np.array([[2.5]], np.float32)}, None)
    assert score_values(values, [2.0]).errors == (0.5,)
    with pytest.raises(ProtocolError, match="2 labels for a prediction of 1 rows"):
        score_labels(values, [1, 2])
    with pytest.raises(ProtocolError, match="no output 'nope'"):
        predictions(scores, "nope")


def test_settings() -> None:
    versions, weights = ("stable", "canary", "dark"), {"stable": 90.0, "canary": 10.0, "dark": 0.0}
    parsed = parse_experiment_settings(
        {"metric": "mae", "alert": {"ceiling": 0.5}}, {"ttl": "10m"}, "routes.r", versions=versions,
        baseline="stable", weights=weights,
    )  # fmt: skip
    assert parsed is not None and parsed.experiment is not None
    assert parsed.experiment.arms == ("stable", "canary") and parsed.feedback.ttl == 600.0
    assert not parsed.experiment.higher_is_better and parsed.experiment.alert is not None
    nothing = parse_experiment_settings(None, None, "routes.r", versions=versions, baseline="stable", weights=weights)
    assert nothing is None
    cases: list[tuple[dict[str, object], str]] = [
        ({"arms": ["stable", "nope"]}, "routes.r.experiment.arms: 'nope' is not a version"),
        ({"metric": "auc"}, "routes.r.experiment.metric: must be one of"),
        ({"metric": "accuracy", "alert": {"ceiling": 0.1}}, "alert.ceiling: accuracy is a score; use floor"),
        ({"alpha": 0}, "routes.r.experiment.alpha: must be in"),
        ({"colour": 1}, "routes.r.experiment.colour: unknown key"),
    ]
    for experiment, fault in cases:
        with pytest.raises(ConfigError, match=fault):
            parse_experiment_settings(
                experiment, None, "routes.r", versions=versions, baseline="stable", weights=weights
            )


def test_the_alert_fires_below_the_validation_figure_and_clears_when_quality_is_back() -> None:
    from gateway.experiment.feedback import Feedback
    from gateway.experiment.hub import Experiments

    settings = parse_experiment_settings(
        {"min_samples": 50, "window": 100, "alert": {}}, None, "routes.r", versions=("a", "b"), baseline="a",
        weights={"a": 50.0, "b": 50.0},
    )  # fmt: skip
    hub = Experiments()
    hub.configure({"r": settings}, {"r": {"b": {"accuracy": 0.95}}})  # b's metadata: 95 % on its validation set

    def labels(version: str, right: int, wrong: int) -> list[Feedback]:
        rows = [(1, 1)] * right + [(1, 0)] * wrong  # (prediction, label)
        return [Feedback(None, "label", (t,), version, (p,)) for p, t in rows]

    hub.judge("r", labels("b", 88, 12))  # 0.88 on 100: 3.2 standard errors under 0.95
    assert hub.report()["r"]["experiment"]["alerts"] == {"b": True}
    hub.judge("r", labels("b", 100, 0))  # the window (the last 100) is perfect again
    assert hub.report()["r"]["experiment"]["alerts"] == {"b": False}
    hub.judge("r", labels("a", 60, 40))  # a has no validation figure and no floor: nothing to fire on
    assert hub.report()["r"]["experiment"]["alerts"]["a"] is False


def test_the_rollout_reads_the_experiment_as_its_feedback_gate() -> None:
    """The rollout manager's recorder asks the hub; the verdict holds (None) until the test decides, and only an
    experiment whose control and candidate are the rollout's baseline and candidate counts."""
    import random

    from gateway.experiment.feedback import Feedback
    from gateway.experiment.hub import Experiments
    from gateway.rollouts import RolloutManager, validate_job

    settings = parse_experiment_settings(
        {"min_samples": 50, "margin": 0.05}, None, "routes.r", versions=("stable", "canary"), baseline="stable",
        weights={"stable": 100.0}, candidate="canary",
    )  # fmt: skip
    assert settings is not None and settings.experiment is not None
    assert settings.experiment.arms == ("stable", "canary")  # the rollout's candidate is an arm by default
    hub = Experiments()
    hub.configure({"r": settings})
    manager = RolloutManager(validator=validate_job, random=random.Random(0).random, experiments=hub)
    read = manager._feedback_verdict("r", "stable", "canary")
    assert read is not None and read().declared and read().not_worse is None
    assert not manager._feedback_verdict("r", "canary", "stable")().declared  # type: ignore[misc]
    rows = [Feedback(None, "label", (1,), version, (1 if i % 10 else 0,)) for version in ("stable", "canary")
            for i in range(3000)]  # fmt: skip
    hub.judge("r", rows)  # both 90 % right: the candidate is surely not 5 points worse
    verdict = read()
    assert verdict.not_worse is True and "accuracy difference canary - stable" in verdict.detail


def test_review_findings_stay_fixed() -> None:
    """Each case a review found: constant arms, rmse's margin, outputs that cannot be scored, non-finite values, a
    window smaller than min_samples, a reused request id, a float class against a text label."""
    from gateway.experiment.feedback import Feedback
    from gateway.experiment.hub import Experiments
    from gateway.experiment.sequential import Arm, SequentialTest

    # Constant arms say nothing of their noise: no look (no zero-width interval that would hold forever) ...
    assert SequentialTest().update(Arm(50, 50.0, 50.0), Arm(50, 50.0, 50.0)) == SequentialTest()
    # ... except 0/1 outcomes, whose smoothed rates always vary: 40 right against 40 wrong is decided.
    assert SequentialTest(proportion=True).update(Arm(40, 40.0, 40.0), Arm(40, 0.0, 0.0)).high < 0

    def hub_for(experiment: dict[str, object]) -> Experiments:
        settings = parse_experiment_settings(
            experiment, None, "routes.r", versions=("a", "b"), baseline="a", weights={"a": 1.0, "b": 1.0}
        )
        hub = Experiments()
        hub.configure({"r": settings})
        return hub

    # rmse: the test compares mean squared errors, the margin is in rmse units (3.0 against 3.3 is within 0.5).
    rng = np.random.default_rng(11)
    hub = hub_for({"metric": "rmse", "margin": 0.5, "min_samples": 100})
    for version, sd in (("a", 3.0), ("b", 3.3)):
        errors = rng.normal(0.0, sd, 8_000)
        hub.judge("r", [Feedback(None, "value", (0.0,), version, (float(e),)) for e in errors])
    report = hub.report()["r"]["experiment"]
    assert report["not_worse_by_margin"] is True and report["test_scale"] == "mean squared error"
    assert 2.9 < report["arms"][0]["mean"] < 3.1  # reported as rmse, not its square

    # Outputs that cannot be read, and non-finite values: rejected (400 when alone), never a 500, nothing counted.
    hub = hub_for({"min_samples": 2})
    lane = hub.lane("r", "a")
    assert lane is not None
    lane.offer("empty", {"Y": np.zeros((0, 4), np.float32)})
    lane.offer("words", {"Y": np.array([["x", "y"]], dtype=object)})
    lane.offer("none", {"Y": np.array([None], dtype=object)})
    items = [
        Feedback("empty", "label", (0,)), Feedback("words", "label", ("x",)), Feedback("none", "value", (1.0,)),
        Feedback(None, "value", (1.0,), "a", (float("nan"),)),
    ]  # fmt: skip
    judged = hub.judge("r", items)
    assert [j.outcome for j in judged] == ["rejected"] * 4, judged
    assert "a" not in hub.report()["r"]["versions"] or not hub.report()["r"]["versions"]["a"]

    # A window smaller than min_samples still lets the alert fire (on a full window).
    hub = hub_for({"min_samples": 200, "window": 50, "alert": {"floor": 0.9}})
    hub.judge("r", [Feedback(None, "label", (1,), "b", (0,)) for _ in range(60)])
    assert hub.report()["r"]["experiment"]["alerts"] == {"b": True}

    # A reused id replaces its record in the newest place and evicts nothing.
    ledger = Ledger(3, ttl=60.0)
    for request_id in ("a", "b", "c", "b"):
        ledger.lane("v").offer(request_id, {"Y": np.ones(1)})
    assert ledger.evicted == 0 and len(ledger) == 3
    ledger.lane("v").offer("d", {"Y": np.ones(1)})
    assert ledger.find("a")[0] == "unknown" and ledger.find("b")[0] == "found"  # a was the oldest, not b

    # A float class output against a text label: 3.0 is the class "3".
    assert score_labels(np.array([3.0]), ["3"]).correct == (1.0,)
