"""Config parsing: defaults, every validation fault with its exact path, and agreement with the JSON Schema."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.config import (
    DEFAULT_MAX_BODY_BYTES,
    BatchingConfig,
    GatewayConfig,
    InvalidConfigError,
    LocalVersion,
    StickyKey,
    load_config,
    parse_config,
    parse_config_bytes,
)
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "config" / "routing.schema.json"
SOURCE = "config/gateway.yaml"
BASE = Path("/srv/gw")


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def parse(text: str) -> GatewayConfig:
    return parse_config_bytes(text.encode(), source=SOURCE, base_dir=BASE)


def fault_lines(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return str(info.value).splitlines()


MINIMAL = """
model_repository: ./models
routes:
  fraud:
    versions: {stable: 1, canary: 2}
    split: {weights: {stable: 90, canary: 10}}
"""

FULL = """
model_repository: ../models
server: {max_body_bytes: 1024}
prediction_log: {path: /var/log/predictions.jsonl, sample_rate: 0.5}
drift_webhook: {url: "http://hooks/drift", headers: {x-token: abc}}
routes:
  fraud:
    model: fraud_model
    versions: {stable: 1, canary: {version: 2}, shadow: 3}
    split:
      weights: {canary: 10, stable: 90}
      baseline: stable
      sticky:
        key: [header:X-User-Id, cookie:UID]
        salt: fraud-exp-7
        on_missing: reject
      overrides:
        - {header: {X-Canary: "1"}, to: canary}
        - {header: {x-team: qa, x-env: staging}, to: shadow}
    batching: {max_batch_size: 32, max_queue_delay_us: 500, max_queue_size: 256}
    drift: {enabled: true, sample_rate: 0.1, window: 2000, min_effect: {psi: 0.1}, features: [a, b]}
  iris:
    versions: {v1: 1}
"""


def split_with(extra: str) -> str:
    """MINIMAL with `extra` (e.g. "baseline: x, ") added at the start of the fraud route's split mapping."""
    return MINIMAL.replace("split: {", "split: {" + extra)


# --- parsing and defaults --------------------------------------------------------------------------------------------


def test_parse_full_config_keeps_every_field() -> None:
    config = parse(FULL)
    assert config.source == SOURCE
    assert config.model_repository == Path("/srv/models")
    assert config.server.max_body_bytes == 1024
    assert config.prediction_log == {"path": "/var/log/predictions.jsonl", "sample_rate": 0.5}
    assert config.drift_webhook is not None and config.drift_webhook["headers"] == {"x-token": "abc"}
    fraud = config.routes["fraud"]
    assert fraud.model == "fraud_model"
    assert dict(fraud.versions) == {"stable": LocalVersion(1), "canary": LocalVersion(2), "shadow": LocalVersion(3)}
    # weights list every version in declaration order; the unnamed one is dark
    assert list(fraud.split.weights.items()) == [("stable", 90), ("canary", 10), ("shadow", 0)]
    assert fraud.split.baseline == "stable"
    sticky = fraud.split.sticky
    assert sticky is not None
    assert sticky.keys == (StickyKey("header", "x-user-id"), StickyKey("cookie", "UID"))  # cookie names keep case
    assert (sticky.salt, sticky.on_missing) == ("fraud-exp-7", "reject")
    assert [dict(o.headers) for o in fraud.split.overrides] == [{"x-canary": "1"}, {"x-team": "qa", "x-env": "staging"}]
    assert [o.to for o in fraud.split.overrides] == ["canary", "shadow"]
    assert fraud.batching == BatchingConfig(max_batch_size=32, max_queue_delay_us=500, max_queue_size=256)
    assert fraud.drift is not None and fraud.drift["min_effect"] == {"psi": 0.1}
    assert fraud.drift["features"] == ("a", "b")


def test_defaults_fill_optional_keys() -> None:
    config = parse(MINIMAL)
    assert config.model_repository == BASE / "models"
    assert config.server.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert config.prediction_log is None and config.drift_webhook is None
    route = config.routes["fraud"]
    assert route.model == "fraud"  # default: the route name
    assert route.split.baseline == "stable"  # default: the first version named in weights
    assert route.split.sticky is None and route.split.overrides == ()
    assert route.batching is None and route.drift is None


def test_baseline_defaults_to_first_version_named_in_weights_not_in_versions() -> None:
    config = parse(MINIMAL.replace("{stable: 90, canary: 10}", "{canary: 10, stable: 90}"))
    assert config.routes["fraud"].split.baseline == "canary"


def test_sticky_salt_defaults_to_route_name_and_on_missing_to_random() -> None:
    config = parse(split_with("sticky: {key: header:x-user-id}, "))
    sticky = config.routes["fraud"].split.sticky
    assert sticky is not None
    assert (sticky.salt, sticky.on_missing, sticky.keys) == ("fraud", "random", (StickyKey("header", "x-user-id"),))


def test_single_version_route_needs_no_split() -> None:
    config = parse("model_repository: m\nroutes: {iris: {versions: {v1: 4}}}\n")
    split = config.routes["iris"].split
    assert (dict(split.weights), split.baseline) == ({"v1": 1}, "v1")


def test_null_optional_sections_mean_absent() -> None:
    config = parse(MINIMAL + "    batching:\n    drift:\nserver:\nprediction_log:\n")
    assert config.server.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert config.routes["fraud"].batching is None and config.prediction_log is None


def test_batching_queue_defaults_to_at_least_the_batch_size() -> None:
    config = parse(MINIMAL + "    batching: {max_batch_size: 4096}\n")
    assert config.routes["fraud"].batching == BatchingConfig(
        max_batch_size=4096, max_queue_delay_us=0, max_queue_size=4096
    )


def test_integral_floats_count_as_integers_like_json_schema() -> None:
    config = parse(MINIMAL.replace("canary: 2}", "canary: 2.0}"))
    assert config.routes["fraud"].versions["canary"] == LocalVersion(2)


def test_absolute_and_home_repository_paths() -> None:
    assert parse(MINIMAL.replace("./models", "/abs/models")).model_repository == Path("/abs/models")
    assert parse(MINIMAL.replace("./models", "~/models")).model_repository == Path("~/models").expanduser()


def test_parsed_values_are_frozen() -> None:
    config = parse(FULL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes["fraud"].split.baseline = "canary"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.routes["fraud"].split.weights["canary"] = 50  # type: ignore[index]
    with pytest.raises(TypeError):
        config.routes["fraud"].drift["enabled"] = False  # type: ignore[index]


def test_same_text_parses_to_equal_configs() -> None:
    assert parse(FULL) == parse(FULL)


def test_load_config_resolves_against_the_file_folder(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "gateway.yaml"
    path.parent.mkdir()
    path.write_text(MINIMAL)
    config = load_config(path)
    assert config.source == str(path)
    assert config.model_repository == tmp_path / "conf" / "models"


def test_load_config_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_parse_config_accepts_already_decoded_data() -> None:
    data = yaml.safe_load(MINIMAL)
    assert parse_config(data, source="x", base_dir=BASE) == parse_config_bytes(
        MINIMAL.encode(), source="x", base_dir=BASE
    )


# --- faults: each names the file and the exact path ---------------------------------------------------------------

# (description, YAML, exact "path: message" of one expected fault line)
BAD: list[tuple[str, str, str]] = [
    ("unknown top-level key", MINIMAL + "rotues: {}\n", "rotues: unknown key (allowed: "),
    ("unknown split key", split_with("stikcy: 1, "), "routes.fraud.split.stikcy: unknown key"),
    ("negative weight", MINIMAL.replace("canary: 10", "canary: -1"), "routes.fraud.split.weights.canary: must be >= 0"),
    (
        "all-zero weights",
        MINIMAL.replace("{stable: 90, canary: 10}", "{stable: 0, canary: 0}"),
        "routes.fraud.split.weights: at least one weight must be > 0",
    ),
    (
        "weight not a number",
        MINIMAL.replace("canary: 10", "canary: lots"),
        "routes.fraud.split.weights.canary: must be a number >= 0, not a string",
    ),
    (
        "weight is a boolean",
        MINIMAL.replace("canary: 10", "canary: true"),
        "routes.fraud.split.weights.canary: must be a number >= 0, not a boolean",
    ),
    (
        "unknown version in weights",
        MINIMAL.replace("canary: 10", "cnary: 10"),
        "routes.fraud.split.weights.cnary: unknown version 'cnary' (versions: stable, canary)",
    ),
    (
        "unknown version in overrides",
        split_with("overrides: [{header: {x-c: '1'}, to: cnary}], "),
        "routes.fraud.split.overrides[0].to: unknown version 'cnary' (versions: stable, canary)",
    ),
    (
        "unknown baseline",
        split_with("baseline: stabel, "),
        "routes.fraud.split.baseline: unknown version 'stabel' (versions: stable, canary)",
    ),
    (
        "bad sticky key form",
        split_with("sticky: {key: [header:x-u, 'query:uid']}, "),
        "routes.fraud.split.sticky.key[1]: 'query:uid' must have the form header:NAME or cookie:NAME",
    ),
    (
        "sticky key without a name",
        split_with("sticky: {key: 'header:'}, "),
        "routes.fraud.split.sticky.key: 'header:' must have the form header:NAME or cookie:NAME",
    ),
    (
        "empty sticky key list",
        split_with("sticky: {key: []}, "),
        "routes.fraud.split.sticky.key: must be a key such as header:x-user-id or a non-empty list of them",
    ),
    (
        "bad on_missing",
        split_with("sticky: {key: header:x, on_missing: drop}, "),
        "routes.fraud.split.sticky.on_missing: must be one of random, baseline, reject, not 'drop'",
    ),
    ("version number zero", MINIMAL.replace("canary: 2", "canary: 0"), "routes.fraud.versions.canary: must be >= 1"),
    (
        "version number a string",
        MINIMAL.replace("canary: 2", "canary: 'two'"),
        "routes.fraud.versions.canary: must be a repository version number (integer >= 1), {version: N} or a remote"
        " version {endpoint: URL, model: NAME}, not a string",
    ),
    (
        "version number fractional",
        MINIMAL.replace("canary: 2", "canary: 2.5"),
        "routes.fraud.versions.canary: must be an integer >= 1, not a number",
    ),
    (
        "remote version by url",
        MINIMAL.replace("canary: 2", "canary: {url: 'http://triton:8000'}"),
        "routes.fraud.versions.canary.url: a remote version names its server with `endpoint` (and `model`), not `url`",
    ),
    (
        "unknown key in long version form",
        MINIMAL.replace("canary: 2", "canary: {version: 2, tag: x}"),
        "routes.fraud.versions.canary.tag: unknown key (allowed: version)",
    ),
    (
        "two names for one version",
        MINIMAL.replace("canary: 2", "canary: 1"),
        "routes.fraud.versions.canary: repository version 1 is already named 'stable'",
    ),
    (
        "version name starting with a digit",
        MINIMAL.replace("canary: 2", "2b: 2").replace("canary: 10", "2b: 10"),
        "routes.fraud.versions.2b: version name '2b' must start with a letter",
    ),
    ("missing routes", "model_repository: ./models\n", "routes: is required"),
    ("empty routes", "model_repository: ./models\nroutes: {}\n", "routes: must name at least one route"),
    ("missing model_repository", MINIMAL.replace("model_repository: ./models", ""), "model_repository: is required"),
    ("routes is a list", "model_repository: m\nroutes: [fraud]\n", "routes: must be a mapping, not a list"),
    (
        "versions is a list",
        MINIMAL.replace("{stable: 1, canary: 2}", "[1, 2]"),
        "routes.fraud.versions: must be a mapping, not a list",
    ),
    (
        "weights is a number",
        MINIMAL.replace("{stable: 90, canary: 10}", "90"),
        "routes.fraud.split.weights: must be a mapping, not a number",
    ),
    (
        "split missing with two versions",
        MINIMAL.replace("    split: {weights: {stable: 90, canary: 10}}\n", ""),
        "routes.fraud.split: is required when a route has more than one version",
    ),
    (
        "override header value not a string",
        split_with("overrides: [{header: {x-c: 1}, to: canary}], "),
        'routes.fraud.split.overrides[0].header.x-c: must be a string (quote it, e.g. "1"), not a number',
    ),
    (
        "override without to",
        split_with("overrides: [{header: {x-c: '1'}}], "),
        "routes.fraud.split.overrides[0].to: is required",
    ),
    (
        "override with empty header map",
        split_with("overrides: [{header: {}, to: canary}], "),
        "routes.fraud.split.overrides[0].header: must name at least one header",
    ),
    (
        "overrides not a list",
        split_with("overrides: {to: canary}, "),
        "routes.fraud.split.overrides: must be a list, not a mapping",
    ),
    (
        "batching size zero",
        MINIMAL + "    batching: {max_batch_size: 0}\n",
        "routes.fraud.batching.max_batch_size: must be >= 1",
    ),
    (
        "batching unknown key",
        MINIMAL + "    batching: {max_batch_size: 8, max_delay: 5}\n",
        "routes.fraud.batching.max_delay: unknown key (allowed: max_batch_size, max_queue_delay_us, max_queue_size)",
    ),
    (
        "batching queue smaller than batch",
        MINIMAL + "    batching: {max_batch_size: 8, max_queue_size: 4}\n",
        "routes.fraud.batching.max_queue_size: must be >= max_batch_size (8)",
    ),
    ("drift not a mapping", MINIMAL + "    drift: on\n", "routes.fraud.drift: must be a mapping, not a boolean"),
    (
        "server max_body_bytes wrong type",
        MINIMAL + "server: {max_body_bytes: big}\n",
        "server.max_body_bytes: must be an integer >= 1, not a string",
    ),
    (
        "route name with a slash",
        MINIMAL.replace("  fraud:", "  'fr/aud':"),
        "routes['fr/aud']: route name 'fr/aud' must match",
    ),
    (
        "route name with a dot is quoted in the path",
        MINIMAL.replace("  fraud:", "  fraud.v2:").replace("canary: 10", "canary: -5"),
        "routes['fraud.v2'].split.weights.canary: must be >= 0",
    ),
    (
        "infinite weight",
        MINIMAL.replace("canary: 10", "canary: .inf"),
        "routes.fraud.split.weights.canary: must be a finite number",
    ),
    (
        "header names repeated ignoring case",
        MINIMAL.replace("split: {", "split: {overrides: [{header: {x-c: '1', X-C: '2'}, to: canary}], "),
        "routes.fraud.split.overrides[0].header.X-C: header 'x-c' is named twice (header names ignore case)",
    ),
    ("empty file", "", "<root>: the file is empty"),
    ("top level is a list", "- 1\n", "<root>: must be a mapping, not a list"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(text, expected) for _, text, expected in BAD], ids=[name for name, _, _ in BAD]
)
def test_bad_config_names_file_and_exact_path(text: str, expected: str) -> None:
    lines = fault_lines(text)
    assert any(line.startswith(f"{SOURCE}: {expected}") for line in lines), lines


def test_every_fault_is_reported_at_once() -> None:
    text = """
model_repository: ./models
routes:
  fraud:
    versions: {stable: 1, canary: 0}
    split:
      weights: {stable: -1, cnary: 5}
      sticky: {key: body:x}
      overrides: [{header: {x-c: "1"}, to: nope}]
    batching: {max_batch_size: 0}
  ok:
    versions: {v1: 1}
    colour: blue
"""
    with pytest.raises(InvalidConfigError) as info:
        parse(text)
    # cross-references to versions (cnary, nope) are skipped while the versions themselves are invalid
    assert [fault.path for fault in info.value.faults] == [
        "routes.fraud.versions.canary",
        "routes.fraud.split.weights.stable",
        "routes.fraud.split.sticky.key",
        "routes.fraud.batching.max_batch_size",
        "routes.ok.colour",
    ]
    assert all(line.startswith(f"{SOURCE}: ") for line in str(info.value).splitlines())


def test_cross_references_are_checked_when_versions_are_valid() -> None:
    text = MINIMAL.replace(
        "{stable: 90, canary: 10}", "{stable: 90, cnary: 10}, baseline: x, overrides: [{header: {x-c: '1'}, to: y}]"
    )
    lines = fault_lines(text)
    assert [line.split(": ")[1] for line in lines] == [
        "routes.fraud.split.weights.cnary",
        "routes.fraud.split.baseline",
        "routes.fraud.split.overrides[0].to",
    ]


def test_yaml_syntax_error_names_file_and_line() -> None:
    text = "model_repository: ./models\nroutes:\n  fraud:\n    versions: {stable: 1, canary: 2\n    split: x\n"
    with pytest.raises(ConfigError) as info:
        parse(text)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: line 5, column ")
    assert "YAML syntax error" in message


def test_yaml_bad_indentation_names_line() -> None:
    text = "model_repository: ./models\nroutes:\n  fraud:\n    versions: {v1: 1}\n   split: {}\n"
    with pytest.raises(ConfigError, match=rf"^{SOURCE}: line 5, column \d+: YAML syntax error"):
        parse(text)


def test_duplicate_yaml_key_is_an_error_with_its_line() -> None:
    text = MINIMAL.replace(
        "split: {weights: {stable: 90, canary: 10}}",
        "split:\n      weights:\n        stable: 90\n        canary: 10\n        canary: 20",
    )
    with pytest.raises(ConfigError, match=rf"^{SOURCE}: line 10, column 9: YAML syntax error: duplicate key 'canary'"):
        parse(text)


def test_yaml_merge_keys_may_be_overridden() -> None:
    text = """
model_repository: ./models
x-defaults: &defaults {stable: 90, canary: 10}
routes: {}
"""
    # merge keys themselves are fine YAML; the unknown top-level key is still reported
    lines = fault_lines(text)
    assert any("x-defaults: unknown key" in line for line in lines)
    merged = MINIMAL.replace("{stable: 90, canary: 10}", "{<<: {stable: 50, canary: 50}, stable: 90}")
    assert dict(parse(merged).routes["fraud"].split.weights) == {"stable": 90, "canary": 50}


def test_non_utf8_bytes_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=rf"^{SOURCE}: not UTF-8"):
        parse_config_bytes(b"model_repository: \xff\n", source=SOURCE, base_dir=BASE)


def test_yaml_tags_for_python_objects_are_refused() -> None:
    with pytest.raises(ConfigError, match="YAML syntax error"):
        parse("model_repository: !!python/object/apply:os.system ['true']\nroutes: {}\n")


# --- the JSON Schema agrees with the parser ----------------------------------------------------------------------


def config_files() -> list[Path]:
    return sorted((ROOT / "config").glob("*.yaml")) + sorted((ROOT / "config" / "examples").glob("*.yaml"))


def test_the_example_config_exists() -> None:
    assert (ROOT / "config" / "examples" / "canary.yaml") in config_files()


@pytest.mark.parametrize("path", config_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_config_files_pass_schema_and_parser(path: Path, validator: jsonschema.Draft202012Validator) -> None:
    data = yaml.safe_load(path.read_text())
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]
    assert errors == []
    load_config(path)


GOOD = [
    MINIMAL,
    FULL,
    "model_repository: m\nroutes: {iris: {versions: {v1: 1}}}\n",
    split_with("sticky: {key: cookie:uid, on_missing: baseline}, "),
    MINIMAL.replace("canary: 2}", "canary: 2.0}"),
    MINIMAL.replace("{stable: 90, canary: 10}", "{stable: 0.5, canary: 0}"),
]

# Faults a JSON Schema cannot express (cross-references, uniqueness across keys, ordering of two fields, inf).
PARSER_ONLY = {
    "unknown version in weights",
    "unknown version in overrides",
    "unknown baseline",
    "two names for one version",
    "batching queue smaller than batch",
    "infinite weight",
    "header names repeated ignoring case",
}


@pytest.mark.parametrize("text", GOOD)
def test_schema_and_parser_accept_good_configs(text: str, validator: jsonschema.Draft202012Validator) -> None:
    data = yaml.safe_load(text)
    assert list(validator.iter_errors(data)) == []
    parse(text)


@pytest.mark.parametrize(("name", "text"), [(name, text) for name, text, _ in BAD], ids=[name for name, _, _ in BAD])
def test_schema_rejects_what_the_parser_rejects(
    name: str, text: str, validator: jsonschema.Draft202012Validator
) -> None:
    data: Any = yaml.safe_load(text)
    if name in PARSER_ONLY:
        assert validator.is_valid(data), "schema now catches this: move it out of PARSER_ONLY"
    else:
        assert not validator.is_valid(data)
