"""A route's `rollout:` and `shadow:` blocks: the documented examples parse, defaults, durations, paths relative to
the config file, and every fault named by its file and exact key path; the JSON Schema agrees."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import gateway.rollout.settings as rollout_module
import gateway.shadow.settings as shadow_module
from gateway.config import load_config, parse_config_bytes
from gateway.errors import ConfigError
from gateway.generation import Features, parse_features
from gateway.paths import ALLOWED_ENV
from gateway.rollout.settings import (
    DEFAULT_STEPS,
    Gates,
    RolloutSettings,
    Step,
    Validation,
    parse_rollout_settings,
)
from gateway.shadow.settings import CompareSettings, ShadowSettings, parse_shadow_settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "config" / "examples"
SCHEMA_PATH = ROOT / "config" / "routing.schema.json"
SOURCE = "config/gateway.yaml"
BASE = Path("/srv/gw/config")
PATH = "routes.fraud.rollout"

# The issue's example, in a file beside config/examples/canary.yaml: the bundled demo models, versions 1 and 2.
ISSUE_EXAMPLE = """
model_repository: ../models
routes:
  breast_cancer:
    versions: {stable: 1, canary: 2}
    split: {weights: {stable: 100}}
    shadow: {to: canary, percent: 100, max_inflight: 64, timeout_ms: 1000}
    rollout:
      candidate: canary
      validate:
        golden_set: ../data/breast_cancer_test.csv
        label_column: target
        group_column: null
        min_metric: {accuracy: 0.90}
        max_metric_drop: 0.02
        min_agreement: 0.90
        max_group_gap: 0.10
        max_p99_latency_ms: 50
        max_latency_ratio: 3.0
      steps:
        - {shadow: 100, duration: 30s, min_requests: 500}
        - {weight: 5, duration: 60s, min_requests: 500}
        - {weight: 25, duration: 60s, min_requests: 1000}
        - {weight: 50, duration: 60s, min_requests: 1000}
        - {weight: 100, duration: 30s}
      interval: 5s
      failure_limit: 2
      progress_deadline: 30m
      gates:
        max_error_rate: 0.01
        max_error_rate_increase: 0.005
        max_p99_latency_ratio: 1.5
        min_shadow_agreement: 0.95
        block_on_drift: true
        max_prediction_shift_js: 0.10
      state_file: state/breast_cancer.rollout.json
"""


def route_text(*, rollout: str | None = None, shadow: str | None = None, route: str = "fraud") -> str:
    """A config whose route has versions stable (the baseline), canary and other, and these blocks (YAML text)."""
    text = (
        "model_repository: ./models\n"
        "routes:\n"
        f"  {route}:\n"
        "    versions: {stable: 1, canary: 2, other: 3}\n"
        "    split: {weights: {stable: 100}}\n"
    )
    for key, block in (("shadow", shadow), ("rollout", rollout)):
        if block is not None:
            text += textwrap.indent(f"{key}: {block}\n", "    ")
    return text


def features(text: str, *, source: str = SOURCE, base_dir: Path = BASE) -> Features:
    return parse_features(parse_config_bytes(text.encode(), source=source, base_dir=base_dir))


def rollout(block: str, *, shadow: str | None = None) -> RolloutSettings:
    settings = features(route_text(rollout=block, shadow=shadow)).rollout["fraud"]
    assert settings is not None
    return settings


def shadow(block: str, *, rollout: str | None = None) -> ShadowSettings:
    settings = features(route_text(shadow=block, rollout=rollout)).shadow["fraud"]
    assert settings is not None
    return settings


def fault(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        features(text)
    return str(info.value)


def docstring_yaml(doc: str | None) -> dict[str, Any]:
    """The ```yaml block of a module docstring, with its `...` elisions dropped."""
    assert doc is not None
    match = re.search(r"```yaml\n(.*?)```", doc, re.DOTALL)
    assert match is not None
    text = match.group(1).replace(", ...", "")
    assert "..." not in text
    data: dict[str, Any] = yaml.safe_load(text)
    return data


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(validator: jsonschema.Draft202012Validator, text: str | dict[str, Any]) -> list[str]:
    data = yaml.safe_load(text) if isinstance(text, str) else text
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]


# --- the documented examples -------------------------------------------------------------------------------------


def test_the_issue_example_parses_against_the_bundled_demo() -> None:
    source = str(EXAMPLES / "progressive.yaml")
    config = parse_config_bytes(ISSUE_EXAMPLE.encode(), source=source, base_dir=EXAMPLES)
    parsed = parse_features(config)

    assert config.model_repository == ROOT / "config" / "models"
    for version in (1, 2):
        assert (config.model_repository / "breast_cancer" / str(version) / "model.onnx").is_file()
    assert parsed.shadow["breast_cancer"] == ShadowSettings(to="canary", percent=100, max_inflight=64, timeout=1.0)
    settings = parsed.rollout["breast_cancer"]
    assert settings == RolloutSettings(
        candidate="canary",
        steps=DEFAULT_STEPS,  # the example spells out the default ladder
        validate=Validation(
            golden_set=ROOT / "config" / "data" / "breast_cancer_test.csv",
            label_column="target",
            group_column=None,
            min_metric={"accuracy": 0.9},
            max_metric_drop=0.02,
            min_agreement=0.9,
            max_group_gap=0.1,  # without a group_column the bias check is skipped, not refused
            max_p99_latency_ms=50,
            max_latency_ratio=3.0,
        ),
        interval=5.0,
        failure_limit=2,
        progress_deadline=1800.0,
        gates=Gates(
            max_error_rate=0.01,
            max_error_rate_increase=0.005,
            max_p99_latency_ratio=1.5,
            min_shadow_agreement=0.95,
            block_on_drift=True,
            max_prediction_shift_js=0.1,
        ),
        state_file=EXAMPLES / "state" / "breast_cancer.rollout.json",
    )
    assert settings is not None and settings.validate is not None and settings.validate.golden_set is not None
    assert settings.validate.golden_set.is_file()


def test_the_rollout_docstring_example_parses() -> None:
    data = docstring_yaml(rollout_module.__doc__)
    settings = parse_rollout_settings(
        data["rollout"], "routes.breast_cancer.rollout", versions=("stable", "canary"), baseline="stable",
        base_dir=BASE, route="breast_cancer",
    )  # fmt: skip
    assert settings is not None
    assert settings.candidate == "canary"
    assert settings.steps == DEFAULT_STEPS[:2]
    assert settings.validate == Validation(
        golden_set=Path("/srv/gw/data/test.csv"), label_column="target", min_metric={"accuracy": 0.9}
    )
    assert (settings.interval, settings.failure_limit, settings.progress_deadline) == (5.0, 2, 1800.0)
    assert settings.gates == Gates(max_error_rate=0.01, max_error_rate_increase=0.005, max_p99_latency_ratio=1.5)
    assert settings.state_file == BASE / "state" / "breast_cancer.rollout.json"
    assert settings.webhook_url is None


def test_the_shadow_docstring_example_parses() -> None:
    data = docstring_yaml(shadow_module.__doc__)
    settings = parse_shadow_settings(
        data["shadow"], "routes.fraud.shadow", versions=("stable", "canary"), baseline="stable", candidate=None
    )
    assert settings == ShadowSettings(
        to="canary",
        percent=100,
        max_inflight=64,
        timeout=1.0,
        compare=CompareSettings(kind="auto", output=None, abs_tol=1e-6, rel_tol=1e-3),
    )


def test_the_examples_pass_the_schema(validator: jsonschema.Draft202012Validator) -> None:
    assert schema_errors(validator, ISSUE_EXAMPLE) == []
    documented: dict[str, Any] = yaml.safe_load(route_text())
    route = documented["routes"]["fraud"]
    route.update(docstring_yaml(rollout_module.__doc__), **docstring_yaml(shadow_module.__doc__))
    assert schema_errors(validator, documented) == []


# --- defaults ----------------------------------------------------------------------------------------------------


def test_absent_or_null_blocks_mean_no_shadow_and_no_rollout() -> None:
    for text in (route_text(), route_text(rollout="null", shadow="null")):
        parsed = features(text)
        assert parsed.rollout == {"fraud": None} and parsed.shadow == {"fraud": None}


def test_rollout_defaults() -> None:
    settings = rollout("{candidate: canary}")
    assert settings == RolloutSettings(
        candidate="canary",
        steps=DEFAULT_STEPS,
        validate=None,
        interval=5.0,
        failure_limit=2,
        progress_deadline=1800.0,
        gates=Gates(),
        state_file=BASE / "state" / "fraud.rollout.json",
        webhook_url=None,
    )
    assert settings.gates == Gates(
        max_error_rate=0.01, max_error_rate_increase=0.005, max_p99_latency_ratio=1.5, min_shadow_agreement=0.95,
        block_on_drift=True, max_prediction_shift_js=0.1, alpha=0.001, min_samples=100,
    )  # fmt: skip
    assert rollout("{candidate: canary, steps: null, gates: null, validate: null}") == settings


def test_empty_sub_blocks_take_their_defaults() -> None:
    settings = rollout("{candidate: canary, gates: {}, validate: {}}")
    assert settings.gates == Gates()
    assert settings.validate == Validation()
    assert settings.validate.check_drift is True
    assert settings.validate.min_metric == {} and settings.validate.max_metric == {}


def test_step_defaults() -> None:
    settings = rollout("{candidate: canary, steps: [{shadow: 50}, {weight: 10}, {weight: 10, shadow: 25}]}")
    assert settings.steps == (
        Step(weight=0, shadow=50, duration=60, min_requests=0),
        Step(weight=10, shadow=0, duration=60, min_requests=0),
        Step(weight=10, shadow=25, duration=60, min_requests=0),
    )
    assert [s.kind for s in settings.steps] == ["shadow", "weight", "weight"]


def test_shadow_defaults() -> None:
    assert shadow("{to: canary}") == ShadowSettings(
        to="canary", percent=100.0, max_inflight=64, timeout=1.0, compare=CompareSettings()
    )
    assert CompareSettings() == CompareSettings(kind="auto", output=None, abs_tol=1e-6, rel_tol=1e-3)
    assert shadow("{to: canary, compare: null}").compare == CompareSettings()


def test_shadow_to_defaults_to_the_rollouts_candidate() -> None:
    for block in ("{}", "{to: null, percent: 50}"):
        settings = shadow(block, rollout="{candidate: canary}")
        assert settings.to is None  # the rollout's candidate: its steps own the percentage


def test_shadow_values() -> None:
    settings = shadow(
        "{to: other, percent: 12.5, max_inflight: 3, timeout_ms: 250, "
        "compare: {kind: classification, output: label, abs_tol: 0, rel_tol: 0.5}}"
    )
    assert settings == ShadowSettings(
        to="other", percent=12.5, max_inflight=3, timeout=0.25,
        compare=CompareSettings(kind="classification", output="label", abs_tol=0.0, rel_tol=0.5),
    )  # fmt: skip
    assert shadow("{to: canary, percent: 0}").percent == 0.0
    assert shadow("{to: canary, max_inflight: 2.0}").max_inflight == 2  # JSON Schema counts 2.0 as an integer


def test_gates_set_to_null_are_switched_off() -> None:
    gates = rollout(
        "{candidate: canary, gates: {max_error_rate: null, max_error_rate_increase: null, max_p99_latency_ratio: null,"
        " min_shadow_agreement: null, max_prediction_shift_js: null, block_on_drift: false}}"
    ).gates
    assert gates == Gates(
        max_error_rate=None, max_error_rate_increase=None, max_p99_latency_ratio=None, min_shadow_agreement=None,
        block_on_drift=False, max_prediction_shift_js=None,
    )  # fmt: skip
    assert (gates.alpha, gates.min_samples) == (0.001, 100)  # the test settings stay


def test_gate_values() -> None:
    gates = rollout(
        "{candidate: canary, gates: {max_error_rate: 0, max_error_rate_increase: 1, max_p99_latency_ratio: 1.01,"
        " min_shadow_agreement: 1, max_prediction_shift_js: 1, alpha: 0.5, min_samples: 1}}"
    ).gates
    assert gates == Gates(
        max_error_rate=0.0, max_error_rate_increase=1.0, max_p99_latency_ratio=1.01, min_shadow_agreement=1.0,
        max_prediction_shift_js=1.0, alpha=0.5, min_samples=1,
    )  # fmt: skip


def test_validation_thresholds_set_to_null_are_off() -> None:
    validate = rollout(
        "{candidate: canary, validate: {golden_set: g.csv, label_column: y, max_metric_drop: null, min_agreement: null,"
        " max_group_gap: null, max_p99_latency_ms: null, max_latency_ratio: null, check_drift: false,"
        " max_metric: {mae: 0.5, rmse: 1}}}"
    ).validate
    assert validate == Validation(
        golden_set=BASE / "g.csv", label_column="y", max_metric={"mae": 0.5, "rmse": 1.0}, check_drift=False
    )


# --- durations ---------------------------------------------------------------------------------------------------

DURATIONS = [
    ("30s", 30.0),
    ("5m", 300.0),
    ("1h", 3600.0),
    ("500ms", 0.5),
    ("1.5m", 90.0),
    ("0.25h", 900.0),
    ("90", 90.0),
    (45, 45.0),
    (2.5, 2.5),
]


@pytest.mark.parametrize(("text", "seconds"), DURATIONS, ids=[str(t) for t, _ in DURATIONS])
def test_durations(text: str | float, seconds: float) -> None:
    value = json.dumps(text)
    steps = f"[{{weight: 5, duration: {value}}}]"
    settings = rollout(f"{{candidate: canary, interval: {value}, progress_deadline: {value}, steps: {steps}}}")
    assert settings.interval == pytest.approx(seconds)
    assert settings.progress_deadline == pytest.approx(seconds)
    assert settings.steps[0].duration == pytest.approx(seconds)


def test_a_step_may_last_zero_seconds() -> None:
    assert rollout("{candidate: canary, steps: [{weight: 5, duration: 0}]}").steps[0].duration == 0.0


BAD_DURATIONS: list[object] = ["soon", "5 min", "1d", "-5s", "", "1e3", "30S", True, None, [30]]


@pytest.mark.parametrize("value", BAD_DURATIONS, ids=[repr(v) for v in BAD_DURATIONS])
@pytest.mark.parametrize("where", ["interval", "progress_deadline", "steps[1].duration"])
def test_bad_durations_name_their_key(value: object, where: str) -> None:
    text = json.dumps(value)
    if where.startswith("steps"):
        block = f"{{candidate: canary, steps: [{{shadow: 100}}, {{weight: 5, duration: {text}}}]}}"
    else:
        block = f"{{candidate: canary, {where}: {text}}}"
    message = fault(route_text(rollout=block))
    assert message.startswith(f"{SOURCE}: {PATH}.{where}: must be a duration such as 30s, 5m or 1h (or seconds), got")


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("{candidate: canary, interval: 5ms}", f"{PATH}.interval: must be at least 0.01s, got '5ms'"),
        ("{candidate: canary, interval: 0}", f"{PATH}.interval: must be at least 0.01s, got 0"),
        ("{candidate: canary, progress_deadline: 0.001}", f"{PATH}.progress_deadline: must be at least 0.01s"),
        ("{candidate: canary, steps: [{weight: 5, duration: -1}]}", f"{PATH}.steps[0].duration: must be at least 0s"),
    ],
)
def test_durations_below_their_floor(block: str, expected: str) -> None:
    assert fault(route_text(rollout=block)).startswith(f"{SOURCE}: {expected}")


# --- paths -------------------------------------------------------------------------------------------------------


def test_paths_resolve_against_the_config_files_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOWED_ENV, str(tmp_path / "data"))  # ../data is outside the config's folder (gateway.paths)
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "gateway.yaml"
    path.write_text(route_text(rollout="{candidate: canary, validate: {golden_set: ../data/golden.csv}}"))
    config = load_config(path)
    assert config.base_dir == folder

    settings = parse_features(config).rollout["fraud"]

    assert settings is not None and settings.validate is not None
    assert settings.validate.golden_set == tmp_path / "data" / "golden.csv"  # normalised, no ".." left
    assert settings.state_file == folder / "state" / "fraud.rollout.json"  # the default: state/<route>.rollout.json


@pytest.mark.parametrize(
    ("state_file", "expected"),
    [
        ("run/fraud.json", BASE / "run" / "fraud.json"),
        ("../state/fraud.json", Path("/srv/gw/state/fraud.json")),
        ("/var/lib/gateway/fraud.json", Path("/var/lib/gateway/fraud.json")),
        ("null", None),  # no state file: the rollout's state lives in memory only
    ],
)
def test_state_file(state_file: str, expected: Path | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOWED_ENV, "/srv/gw/state:/var/lib/gateway")  # outside the config's folder: allowed here
    assert rollout(f"{{candidate: canary, state_file: {state_file}}}").state_file == expected


def test_paths_under_home_are_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(ALLOWED_ENV, str(tmp_path))
    settings = rollout("{candidate: canary, state_file: ~/fraud.json, validate: {golden_set: ~/golden.csv}}")
    assert settings.state_file == tmp_path / "fraud.json"
    assert settings.validate is not None and settings.validate.golden_set == tmp_path / "golden.csv"


def test_without_a_base_dir_paths_resolve_against_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = parse_rollout_settings(
        {"candidate": "canary"}, PATH, versions=("stable", "canary"), baseline="stable", base_dir=None, route="fraud"
    )
    assert settings is not None and settings.state_file == tmp_path / "state" / "fraud.rollout.json"


# --- faults: each names the file and the exact key ---------------------------------------------------------------

S = "routes.fraud.shadow"

# (name, rollout block, shadow block, the message after "<file>: ")
BAD: list[tuple[str, str | None, str | None, str]] = [
    ("rollout not a mapping", "[canary]", None, f"{PATH}: must be a mapping, not a list"),  # config.py's check
    (
        "rollout unknown key",
        "{candidate: canary, colour: blue}",
        None,
        f"{PATH}.colour: unknown key; allowed: candidate",
    ),
    ("rollout without candidate", "{interval: 5s}", None, f"{PATH}.candidate: is required"),
    ("candidate not a string", "{candidate: 2}", None, f"{PATH}.candidate: must be a non-empty string, got 2"),
    ("unknown candidate", "{candidate: cnary}", None, f"{PATH}.candidate: unknown version 'cnary' (versions: stable, "),
    ("candidate is the baseline", "{candidate: stable}", None, f"{PATH}.candidate: 'stable' is the route's baseline"),
    ("steps empty", "{candidate: canary, steps: []}", None, f"{PATH}.steps: must be a non-empty list of steps"),
    ("steps a mapping", "{candidate: canary, steps: {weight: 5}}", None, f"{PATH}.steps: must be a non-empty list"),
    ("step not a mapping", "{candidate: canary, steps: [5]}", None, f"{PATH}.steps[0]: must be a mapping, got int"),
    (
        "step unknown key",
        "{candidate: canary, steps: [{shadow: 100}, {wieght: 5}]}",
        None,
        f"{PATH}.steps[1].wieght: unknown key; allowed: weight, shadow, duration, min_requests",
    ),
    (
        "weight falls between steps",
        "{candidate: canary, steps: [{weight: 5}, {weight: 25}, {weight: 10}]}",
        None,
        f"{PATH}.steps[2].weight: 10 is below the previous step's 25; weights only rise",
    ),
    (
        "a shadow step after a weight step",
        "{candidate: canary, steps: [{weight: 5}, {shadow: 100}]}",
        None,
        f"{PATH}.steps[1].weight: 0 is below the previous step's 5",
    ),
    (
        "step with neither weight nor shadow",
        "{candidate: canary, steps: [{shadow: 100}, {duration: 30s}]}",
        None,
        f"{PATH}.steps[1]: give a weight (percent of traffic) or a shadow (percent copied)",
    ),
    (
        "step with weight 0 and shadow 0",
        "{candidate: canary, steps: [{weight: 0, shadow: 0}]}",
        None,
        f"{PATH}.steps[0]: a step with weight 0 must shadow some traffic (shadow > 0)",
    ),
    (
        "step weight over 100",
        "{candidate: canary, steps: [{weight: 120}]}",
        None,
        f"{PATH}.steps[0].weight: must be in",
    ),
    ("step shadow negative", "{candidate: canary, steps: [{shadow: -1}]}", None, f"{PATH}.steps[0].shadow: must be in"),
    ("step weight a string", "{candidate: canary, steps: [{weight: '5'}]}", None, f"{PATH}.steps[0].weight: must be a"),
    (
        "step min_requests negative",
        "{candidate: canary, steps: [{weight: 5, min_requests: -1}]}",
        None,
        f"{PATH}.steps[0].min_requests: must be at least 0, got -1",
    ),
    (
        "step min_requests fractional",
        "{candidate: canary, steps: [{weight: 5, min_requests: 1.5}]}",
        None,
        f"{PATH}.steps[0].min_requests: must be an integer, got 1.5",
    ),
    ("failure_limit 0", "{candidate: canary, failure_limit: 0}", None, f"{PATH}.failure_limit: must be between 1 and"),
    ("gates not a mapping", "{candidate: canary, gates: [1]}", None, f"{PATH}.gates: must be a mapping, got a list"),
    (
        "gates unknown key",
        "{candidate: canary, gates: {max_errors: 0.1}}",
        None,
        f"{PATH}.gates.max_errors: unknown key",
    ),
    (
        "gate error rate over 1",
        "{candidate: canary, gates: {max_error_rate: 1.5}}",
        None,
        f"{PATH}.gates.max_error_rate: must be in [0, 1], got 1.5",
    ),
    (
        "gate latency ratio at 1",
        "{candidate: canary, gates: {max_p99_latency_ratio: 1}}",
        None,
        f"{PATH}.gates.max_p99_latency_ratio: must be in (1.0, 1000.0], got 1",
    ),
    (
        "gate agreement 0",
        "{candidate: canary, gates: {min_shadow_agreement: 0}}",
        None,
        f"{PATH}.gates.min_shadow_agreement: must be in (0, 1]",
    ),
    ("gate alpha 0", "{candidate: canary, gates: {alpha: 0}}", None, f"{PATH}.gates.alpha: must be in (0.0, 0.5]"),
    ("gate alpha null", "{candidate: canary, gates: {alpha: null}}", None, f"{PATH}.gates.alpha: must be a number"),
    ("gate min_samples 0", "{candidate: canary, gates: {min_samples: 0}}", None, f"{PATH}.gates.min_samples: must be"),
    (
        "gate block_on_drift a string",
        "{candidate: canary, gates: {block_on_drift: 'yes'}}",
        None,
        f"{PATH}.gates.block_on_drift: must be true or false, got 'yes'",
    ),
    (
        "validate unknown key",
        "{candidate: canary, validate: {golden: g.csv}}",
        None,
        f"{PATH}.validate.golden: unknown key; allowed: golden_set,",
    ),
    (
        "min_metric with an unknown metric",
        "{candidate: canary, validate: {golden_set: g.csv, label_column: y, min_metric: {precision: 0.9}}}",
        None,
        f"{PATH}.validate.min_metric.precision: unknown key; allowed: accuracy, roc_auc, f1",
    ),
    (
        "max_metric with a higher-is-better metric",
        "{candidate: canary, validate: {golden_set: g.csv, label_column: y, max_metric: {accuracy: 0.9}}}",
        None,
        f"{PATH}.validate.max_metric.accuracy: unknown key; allowed: mae, rmse",
    ),
    (
        "min_metric not a number",
        "{candidate: canary, validate: {golden_set: g.csv, label_column: y, min_metric: {f1: high}}}",
        None,
        f"{PATH}.validate.min_metric.f1: must be a number, got 'high'",
    ),
    (
        "min_metric without label_column",
        "{candidate: canary, validate: {golden_set: g.csv, min_metric: {accuracy: 0.9}}}",
        None,
        f"{PATH}.validate.min_metric: needs label_column",
    ),
    (
        "max_metric without label_column",
        "{candidate: canary, validate: {golden_set: g.csv, max_metric: {rmse: 2}}}",
        None,
        f"{PATH}.validate.max_metric: needs label_column",
    ),
    (
        "max_metric_drop without label_column",
        "{candidate: canary, validate: {golden_set: g.csv, max_metric_drop: 0.02}}",
        None,
        f"{PATH}.validate.max_metric_drop: needs label_column",
    ),
    (
        "max_group_gap without label_column",
        "{candidate: canary, validate: {golden_set: g.csv, max_group_gap: 0.1}}",
        None,
        f"{PATH}.validate.max_group_gap: needs label_column",
    ),
    (
        "group_column without label_column",
        "{candidate: canary, validate: {golden_set: g.csv, group_column: sex}}",
        None,
        f"{PATH}.validate.group_column: needs label_column",
    ),
    (
        "label_column without golden_set",
        "{candidate: canary, validate: {label_column: y}}",
        None,
        f"{PATH}.validate.golden_set: is required for the quality, agreement and bias gates",
    ),
    (
        "min_agreement without golden_set",
        "{candidate: canary, validate: {min_agreement: 0.9}}",
        None,
        f"{PATH}.validate.golden_set: is required",
    ),
    (
        "min_agreement over 1",
        "{candidate: canary, validate: {golden_set: g.csv, min_agreement: 1.5}}",
        None,
        f"{PATH}.validate.min_agreement: must be in [0.0, 1.0], got 1.5",
    ),
    (
        "max_latency_ratio below 1",
        "{candidate: canary, validate: {max_latency_ratio: 0.5}}",
        None,
        f"{PATH}.validate.max_latency_ratio: must be in [1.0, ",
    ),
    (
        "check_drift a string",
        "{candidate: canary, validate: {check_drift: 'no'}}",
        None,
        f"{PATH}.validate.check_drift: must be true or false",
    ),
    (
        "golden_set empty",
        "{candidate: canary, validate: {golden_set: ''}}",
        None,
        f"{PATH}.validate.golden_set: must be a non-empty string",
    ),
    ("state_file empty", "{candidate: canary, state_file: ''}", None, f"{PATH}.state_file: must be a non-empty string"),
    (
        "webhook_url not http",
        "{candidate: canary, webhook_url: 'ftp://hooks/rollout'}",
        None,
        f"{PATH}.webhook_url: must be an http(s) URL, got 'ftp://hooks/rollout'",
    ),
    ("shadow not a mapping", None, "canary", f"{S}: must be a mapping, not a string"),  # config.py's check
    ("shadow unknown key", None, "{to: canary, percentage: 5}", f"{S}.percentage: unknown key; allowed: to, percent,"),
    ("shadow.to unknown", None, "{to: cnary}", f"{S}.to: unknown version 'cnary' (versions: stable, canary, other)"),
    ("shadow.to the baseline", None, "{to: stable}", f"{S}.to: 'stable' is the route's baseline"),
    (
        "shadow.to the baseline under a rollout",
        "{candidate: canary}",
        "{to: stable}",
        f"{S}.to: 'stable' is the route's baseline",
    ),
    ("shadow.to missing without a rollout", None, "{percent: 10}", f"{S}.to: is required (the route has no rollout"),
    ("shadow.to null without a rollout", None, "{to: null}", f"{S}.to: is required"),
    ("shadow.to not a string", None, "{to: 2}", f"{S}.to: must be a non-empty string, got 2"),
    ("shadow percent over 100", None, "{to: canary, percent: 101}", f"{S}.percent: must be in [0.0, 100.0], got 101"),
    ("shadow percent a bool", None, "{to: canary, percent: true}", f"{S}.percent: must be a number, got True"),
    ("shadow max_inflight 0", None, "{to: canary, max_inflight: 0}", f"{S}.max_inflight: must be between 1 and 100000"),
    ("shadow timeout_ms 0", None, "{to: canary, timeout_ms: 0}", f"{S}.timeout_ms: must be between 1 and 600000"),
    ("shadow timeout_ms a duration", None, "{to: canary, timeout_ms: 1s}", f"{S}.timeout_ms: must be an integer"),
    ("shadow compare not a mapping", None, "{to: canary, compare: exact}", f"{S}.compare: must be a mapping"),
    ("shadow compare unknown key", None, "{to: canary, compare: {tol: 1}}", f"{S}.compare.tol: unknown key"),
    (
        "shadow compare kind unknown",
        None,
        "{to: canary, compare: {kind: ranking}}",
        f"{S}.compare.kind: must be one of auto, classification, regression, got 'ranking'",
    ),
    ("shadow compare abs_tol negative", None, "{to: canary, compare: {abs_tol: -1}}", f"{S}.compare.abs_tol: must be"),
    ("shadow compare rel_tol a string", None, "{to: canary, compare: {rel_tol: x}}", f"{S}.compare.rel_tol: must be"),
    ("shadow compare output empty", None, "{to: canary, compare: {output: ''}}", f"{S}.compare.output: must be a"),
]


@pytest.mark.parametrize(
    ("rollout_block", "shadow_block", "expected"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_faults_name_the_file_and_the_exact_key(
    rollout_block: str | None, shadow_block: str | None, expected: str
) -> None:
    message = fault(route_text(rollout=rollout_block, shadow=shadow_block))
    assert message.startswith(f"{SOURCE}: {expected}"), message
    assert "\n" not in message


def test_a_fault_names_the_route_it_is_in() -> None:
    text = route_text(rollout="{candidate: canary}") + textwrap.indent(
        "second:\n  model: fraud\n  versions: {a: 1, b: 2}\n  split: {weights: {a: 100}}\n"
        "  rollout: {candidate: b, steps: [{weight: 50}, {weight: 5}]}\n",
        "  ",
    )
    message = fault(text)
    assert message.startswith(f"{SOURCE}: routes.second.rollout.steps[1].weight: 5 is below"), message


def test_the_file_name_is_the_config_files_path(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(route_text(rollout="{candidate: canary, steps: [{weight: 5}, {weight: 25}, {weight: 10}]}"))
    with pytest.raises(ConfigError) as info:
        parse_features(load_config(path))
    assert str(info.value).startswith(f"{path}: {PATH}.steps[2].weight: ")


# --- the JSON Schema agrees --------------------------------------------------------------------------------------

# Faults a JSON Schema cannot express: references to the route's versions and baseline, the order of the steps, a
# duration string's value.
PARSER_ONLY = {
    "unknown candidate",
    "candidate is the baseline",
    "weight falls between steps",
    "a shadow step after a weight step",
    "shadow.to unknown",
    "shadow.to the baseline",
    "shadow.to the baseline under a rollout",
}


@pytest.mark.parametrize(
    ("name", "rollout_block", "shadow_block"),
    [case[:3] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_the_schema_rejects_what_the_parser_rejects(
    name: str, rollout_block: str | None, shadow_block: str | None, validator: jsonschema.Draft202012Validator
) -> None:
    data = yaml.safe_load(route_text(rollout=rollout_block, shadow=shadow_block))
    if name in PARSER_ONLY:
        assert validator.is_valid(data), "the schema now catches this: move it out of PARSER_ONLY"
    else:
        assert not validator.is_valid(data)


@pytest.mark.parametrize("value", BAD_DURATIONS, ids=[repr(v) for v in BAD_DURATIONS])
def test_the_schema_rejects_bad_durations(value: object, validator: jsonschema.Draft202012Validator) -> None:
    text = route_text(rollout=f"{{candidate: canary, interval: {json.dumps(value)}}}")
    assert not validator.is_valid(yaml.safe_load(text))


GOOD = [
    route_text(shadow="{to: canary}"),
    route_text(shadow="{}", rollout="{candidate: canary}"),
    route_text(shadow="{to: null}", rollout="{candidate: canary}"),
    route_text(shadow="{to: other, percent: 0, compare: null}", rollout="{candidate: canary, webhook_url: null}"),
    route_text(rollout="{candidate: canary, steps: null, gates: null, validate: null, state_file: null}"),
    route_text(rollout="{candidate: canary, steps: [{shadow: 100, weight: 0}, {weight: 10, duration: 0}]}"),
    route_text(rollout="{candidate: canary, interval: 0.5, progress_deadline: 2h, webhook_url: 'https://hooks/x'}"),
    route_text(
        rollout="{candidate: canary, gates: {max_error_rate: null, alpha: 0.01, pass_alpha: 0.1, min_samples: 20}}"
    ),
    route_text(
        rollout="{candidate: canary, validate: {golden_set: g.csv, group_column: null, max_metric_drop: 0.1,"
        " label_column: y, max_group_gap: 0.2, check_drift: false}}"
    ),
    route_text(rollout="{candidate: canary, validate: {golden_set: g.npz, min_agreement: 0.9, max_p99_latency_ms: 5}}"),
    route_text(rollout="{candidate: canary, validate: {max_latency_ratio: 2, max_p99_latency_ms: null}}"),
]


@pytest.mark.parametrize("text", GOOD)
def test_the_schema_and_the_parser_accept_good_blocks(text: str, validator: jsonschema.Draft202012Validator) -> None:
    assert schema_errors(validator, text) == []
    features(text)


def test_a_step_at_weight_100_cannot_shadow() -> None:
    with pytest.raises(ConfigError, match=r"steps\[0\]\.shadow: at weight 100 no other version serves traffic"):
        rollout("{candidate: canary, steps: [{weight: 100, shadow: 50}]}")
