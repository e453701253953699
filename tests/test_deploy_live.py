"""Every PromQL expression we ship, run against a real Prometheus scraping a real gateway under a short load.

The gateway serves three routes on a copy of the demo repository: a sticky 80/20 split with drift monitors and an
experiment that gets feedback; a rollout of the bad version (3) that is rolled back at its shadow step; and a route
naming a version whose model file is corrupt (a load failure, and 503s for requests pinned to it). The load mixes
good requests with malformed ones and unknown models. Prometheus (Debian's `prometheus`) scrapes the admin port every
second with the rule files loaded, as deploy/kubernetes runs it, and the tests then ask its HTTP API:

- every recording and alerting rule evaluates with health "ok", and every recording rule has series;
- every alert expression evaluates, and each of its vector selectors and each side of a comparison with a number
  returns series (so a misspelt metric, label or label value fails, where the whole alert would only be empty);
- every query of the Grafana dashboard, and every variable's selector, returns series (the variable's label too).

Every wait polls with a deadline; the module takes about 20 s.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import promql_parser
import pytest
import yaml
from prometheus_server import poll, prometheus, query
from server import Server, free_port, gateway

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RULE_FILES = (DEPLOY / "prometheus" / "slo.rules.yml", DEPLOY / "prometheus" / "alerts.rules.yml")
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gateway.json"
ROWS = ROOT / "config" / "data" / "breast_cancer_train.csv"
COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}

CONFIG = """
model_repository: ./models
routes:
  breast_cancer:
    versions: {stable: 1, canary: 2}
    split:
      weights: {stable: 70, canary: 30}
      baseline: stable
      sticky: {key: [header:x-user-id], salt: deploy-test}
    drift: {sample_rate: 1.0, window_size: 50}
    experiment: {arms: [stable, canary], metric: accuracy, min_samples: 5, output: label, window: 20,
                 alert: {floor: 0.5}}
    feedback: {max_records: 10000, ttl: 1h}
  breast_cancer_rollout:
    model: breast_cancer
    versions: {stable: 1, bad: 3}
    split: {weights: {stable: 100}, baseline: stable, sticky: {key: [header:x-user-id], salt: deploy-test}}
    shadow: {to: bad, percent: 0, max_inflight: 64, timeout_ms: 1000}
    rollout:
      candidate: bad
      steps:
        - {shadow: 100, duration: 1s, min_requests: 30}
        - {weight: 50, duration: 1s}
      interval: 0.2s
      failure_limit: 1
      progress_deadline: 60s
      gates: {min_shadow_agreement: 0.95, min_samples: 30}
      state_file: state/rollout.json
  breast_cancer_broken:
    model: breast_cancer
    versions: {stable: 1, broken: 9}
    split: {weights: {stable: 100}, baseline: stable}
"""


@dataclass(frozen=True)
class Stack:
    gateway: Server
    prometheus: str  # base URL of its HTTP API

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant query's result; a parse or evaluation error fails the calling test with Prometheus' reason."""
        return query(self.prometheus, expr)


def drive(server: Server, admin: str) -> None:
    """Good traffic on two routes (with ids, then feedback), errors of several kinds, until the rollout fails."""
    with ROWS.open() as f:
        rows = [[float(v) for v in row] for row in list(csv.reader(f))[1:]]
    rng = random.Random(13)
    with httpx.Client(base_url=server.url, timeout=10.0) as client:

        def infer(route: str, row: list[float], **extra: Any) -> httpx.Response:
            body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row[:30]}], **extra}
            user = {"x-user-id": f"u{rng.randrange(10**6)}"}
            return client.post(f"/v2/models/{route}/infer", content=orjson.dumps(body), headers=user)

        for i in range(300):
            row = rows[i % len(rows)]
            assert infer("breast_cancer", row, id=f"r{i}").status_code == 200
            feedback = orjson.dumps({"id": f"r{i}", "label": int(row[30])})
            assert client.post("/v2/models/breast_cancer/feedback", content=feedback).status_code == 200
        for _ in range(5):  # client faults and server-side failures
            assert client.post("/v2/models/breast_cancer/infer", content=b"{").status_code == 400
            assert client.post("/v2/models/no_such_model/infer", content=b"{}").status_code == 404
            pinned = "/v2/models/breast_cancer_broken/versions/broken/infer"
            assert client.post(pinned, content=orjson.dumps({"inputs": []})).status_code == 503

        def rolled_back() -> bool:
            for _ in range(100):
                assert infer("breast_cancer_rollout", rng.choice(rows)).status_code == 200
            status = httpx.get(f"{admin}/admin/rollouts/breast_cancer_rollout", timeout=10.0).json()
            return bool(status["phase"] == "failed")

        poll("the bad candidate's rollback", rolled_back)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("deploy-live")
    shutil.copytree(ROOT / "config" / "models", tmp / "models")
    broken = tmp / "models" / "breast_cancer" / "9" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not an onnx model")
    (tmp / "gateway.yaml").write_text(CONFIG)
    admin = free_port()
    args = ["--config", str(tmp / "gateway.yaml"), "--admin-port", str(admin), "--reload-interval", "0.2"]
    with (
        gateway(args, tmp / "gateway.log", cwd=tmp) as server,
        prometheus(tmp, [f"127.0.0.1:{admin}"], labels={"namespace": "deploy-test"}, rule_files=RULE_FILES) as url,
    ):
        drive(server, f"http://127.0.0.1:{admin}")
        stack = Stack(server, url)
        # A scrape after the load, with the rollback and every drift window in it, then a rule evaluation after
        # that scrape: the recording rules' series carry the rollback's route too.
        poll(
            "the rollback scraped and recorded",
            lambda: (
                bool(stack.query('gateway_rollout_phase{phase="failed"} == 1'))
                and bool(stack.query("route_version:gateway_route_requests:share_rate5m"))
                and len(stack.query("count by (version) (gateway_drift_pvalue)")) >= 2
            ),
        )
        yield stack


def rules() -> list[dict[str, Any]]:
    return [
        rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]


def parts(expr: str) -> tuple[list[str], list[str]]:
    """The vector selectors of `expr`, and the vector sides of its comparisons with a number (the part that must have
    series for the comparison to mean anything), as PromQL text."""
    selectors: list[str] = []
    operands: list[str] = []

    def number(node: Any) -> bool:
        if isinstance(node, promql_parser.NumberLiteral):
            return True
        if isinstance(node, promql_parser.ParenExpr):
            return number(node.expr)
        return isinstance(node, promql_parser.BinaryExpr) and number(node.lhs) and number(node.rhs)

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(str(node))
        if isinstance(node, promql_parser.BinaryExpr) and str(node.op) in COMPARISONS:
            for side, other in ((node.lhs, node.rhs), (node.rhs, node.lhs)):
                if number(other) and not number(side):
                    operands.append(str(side))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return selectors, operands


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every target, the dashboard's variables replaced as Grafana would with "All"."""
    document = json.loads(DASHBOARD.read_text())
    substitutions = {"$__rate_interval": "1m", "$namespace": ".*", "$job": ".*", "$model": ".*", "$route": ".*"}
    queries = []
    for panel in document["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in substitutions.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: a variable the test does not know: {expr}"
            queries.append((panel["title"], expr))
    return queries


def test_every_rule_evaluates_healthy(stack: Stack) -> None:
    def evaluated() -> bool:
        groups = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10.0).json()["data"]["groups"]
        return all(r["health"] != "unknown" for g in groups for r in g["rules"])

    poll("every rule evaluated once", evaluated)
    groups = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10.0).json()["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert loaded == {rule.get("record") or rule["alert"] for rule in rules()}
    broken = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert not broken


def test_every_recording_rule_has_series(stack: Stack) -> None:
    empty = [rule["record"] for rule in rules() if "record" in rule and not stack.query(rule["record"])]
    assert not empty, f"recording rules without series: {empty}"


def test_every_alert_expression_runs_on_real_series(stack: Stack) -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    assert len(alerts) >= 10
    for rule in alerts:
        stack.query(rule["expr"])  # parses and evaluates (a firing alert or none, both fine)
        selectors, operands = parts(rule["expr"])
        assert selectors and operands, rule["alert"]
        for expr in selectors + operands:
            assert stack.query(expr), f"{rule['alert']}: no series for {expr}"


def test_every_dashboard_query_returns_series(stack: Stack) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 30
    empty = [(title, expr) for title, expr in queries if not stack.query(expr)]
    assert not empty, "dashboard queries without series:\n" + "\n".join(f"{t}: {e}" for t, e in empty)


def test_every_dashboard_variable_finds_its_label(stack: Stack) -> None:
    document = json.loads(DASHBOARD.read_text())
    variables = [v for v in document["templating"]["list"] if v["type"] == "query"]
    assert {v["name"] for v in variables} == {"namespace", "job", "model", "route"}
    for variable in variables:
        definition = variable["definition"].replace("$namespace", ".*").replace("$job", ".*")
        inner = definition.removeprefix("label_values(").removesuffix(")")
        selector, label = (part.strip() for part in inner.rsplit(",", 1))
        series = stack.query(selector)
        assert any(label in s["metric"] for s in series), f"{variable['name']}: no {label} on {selector}"


def test_the_load_shows_in_the_slis(stack: Stack) -> None:
    """The load's failures and client faults land where the SLO rules put them."""
    failed = stack.query('sum(gateway_requests_total{outcome="unavailable"})')
    assert float(failed[0]["value"][1]) == 5
    share = stack.query('route_version:gateway_route_requests:share_rate5m{route="breast_cancer"}')
    assert {s["metric"]["version"] for s in share} == {"stable", "canary"}
    availability = stack.query('model_version:gateway_requests_availability:ratio_rate5m{model="breast_cancer"}')
    assert availability and all(float(s["value"][1]) == 1.0 for s in availability if s["value"][1] != "NaN")
