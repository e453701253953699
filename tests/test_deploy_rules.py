"""deploy/prometheus: promtool accepts the rules and passes their unit tests, every alert has a case where it fires
and one where it stays silent, the generated files are current, and the README's runbook covers every alert."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULE_FILES = (PROMETHEUS / "slo.rules.yml", PROMETHEUS / "alerts.rules.yml")
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.test.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool not found: install the Debian package 'prometheus' (.ci/run does)")
    return subprocess.run([tool, *args], capture_output=True, text=True, cwd=PROMETHEUS)


def alerts() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def variant(labels: dict[str, Any]) -> str:
    """One rule of an alert name: the burn-rate alerts have one per window pair, the others one."""
    return str(labels.get("long_window", ""))


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert TEST_FILES
    result = promtool("test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    """For each alert rule (each window pair of a burn-rate alert): a unit test expects it firing, and an evaluation
    of its alert name expects it absent."""
    rules = {(rule["alert"], variant(rule.get("labels", {}))) for rule in alerts()}
    fired: set[tuple[str, str]] = set()
    silent: set[tuple[str, str]] = set()
    for path in TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                name = case["alertname"]
                expected = {variant(alert["exp_labels"]) for alert in case.get("exp_alerts") or []}
                fired |= {(name, v) for v in expected}
                silent |= {(n, v) for n, v in rules if n == name and v not in expected}
    assert rules - fired == set(), "alerts never seen firing"
    assert rules - silent == set(), "alerts never seen silent"


def test_every_alert_is_labelled_and_explained() -> None:
    for rule in alerts():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_the_readme_runbook_covers_every_alert() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Run it in production") : readme.index("## Benchmarks")]
    missing = {rule["alert"] for rule in alerts() if f"`{rule['alert']}`" not in section}
    assert not missing, f"alerts without a runbook row: {sorted(missing)}"


def test_generated_files_are_current() -> None:
    """The PrometheusRule and the dashboard are rendered from the rule files and deploy/render.py."""
    result = subprocess.run([sys.executable, str(ROOT / "deploy" / "render.py"), "--check"], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


def test_the_prometheus_rule_carries_the_rule_files(tmp_path: Path) -> None:
    """What the Prometheus Operator loads is what promtool checked: its spec, extracted, is a valid rule file with the
    same groups."""
    path = ROOT / "deploy" / "kubernetes" / "components" / "prometheus-operator" / "prometheusrule.yaml"
    document = yaml.safe_load(path.read_text())
    assert (document["apiVersion"], document["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    groups = [group for rule_file in RULE_FILES for group in yaml.safe_load(rule_file.read_text())["groups"]]
    assert document["spec"]["groups"] == groups
    extracted = tmp_path / "spec.rules.yml"
    extracted.write_text(yaml.safe_dump(document["spec"]))
    result = promtool("check", "rules", str(extracted))
    assert result.returncode == 0, result.stdout + result.stderr
