"""The fleet controller's PromQL: its shape, its escaping, and every selector against a real gateway's exposition.

A gateway serving the demo route with a shadow to the candidate and drift monitors on both versions, after some
traffic and a closed drift window, exports every series the gates read; each query the controller builds for that
route must parse, and each of its selectors must name a metric the gateway exports, with labels it carries and
label values it uses. (tests/test_fleet_live.py runs the queries on a real Prometheus.)
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import promql_parser
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gateway.app import Settings, create_app
from gateway.fleet.queries import FleetQueries, Window, selector, step_increase

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
model_repository: {models}
routes:
  breast_cancer:
    versions: {{stable: 1, canary: 2}}
    split: {{weights: {{stable: 80, canary: 20}}, baseline: stable}}
    shadow: {{to: canary, percent: 100}}
    drift: {{sample_rate: 1.0, window_size: 50}}
"""
WINDOW = Window(1_800_000_000.0, 1_800_000_012.5)


def test_a_step_count_is_the_exact_increase_since_the_start_with_restarts_counted_from_zero() -> None:
    series = selector("gateway_requests_total", {"job": "gateway", "model": "m"})
    assert step_increase(series, WINDOW, ("outcome",)) == (
        'sum by (outcome) (((gateway_requests_total{job="gateway",model="m"}'
        ' - gateway_requests_total{job="gateway",model="m"} @ 1800000000.000)'
        ' unless resets(gateway_requests_total{job="gateway",model="m"}[12500ms]) > 0)'
        ' or gateway_requests_total{job="gateway",model="m"})'
    )


def test_label_values_are_escaped_and_alternatives_are_literal() -> None:
    assert selector("m", {"a": 'x"y\\z'}, regex={"b": ("p.q", "r")}) == 'm{a="x\\"y\\\\z",b=~"p\\\\.q|r"}'
    [(_, labels)] = _selectors(selector("m", {"a": 'x"y\\z'}, regex={"b": ("p.q", "r")}))
    assert labels == {"a": {'x"y\\z'}, "b": {"p\\.q", "r"}}  # as Prometheus reads them back


def test_every_selector_carries_the_fleet_scope() -> None:
    queries = FleetQueries({"job": "gateway", "namespace": "ml"})
    for expr in _queries(queries):
        for name, labels in _selectors(expr):
            assert labels.get("job") == {"gateway"} and labels.get("namespace") == {"ml"}, (name, expr)


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fleet-queries")
    (tmp / "gateway.yaml").write_text(CONFIG.format(models=ROOT / "config" / "models"))
    with ROOT.joinpath("config", "data", "breast_cancer_train.csv").open() as f:
        rows = [[float(v) for v in row[:30]] for row in list(csv.reader(f))[1:]]
    app = create_app(Settings(config_path=tmp / "gateway.yaml", drift_interval=0.01), registry=CollectorRegistry())
    with TestClient(app) as client:
        for row in rows[:120]:
            body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]}
            assert client.post("/v2/models/breast_cancer/infer", content=orjson.dumps(body)).status_code == 200
        end = time.monotonic() + 30
        text = client.get("/metrics").text
        while "gateway_drift_feature_drifted{" not in text or 'result="agreed"' not in text:
            assert time.monotonic() < end, "no drift window or shadow result within 30 s"
            time.sleep(0.05)  # poll interval, bounded by the deadline above
            text = client.get("/metrics").text
        yield text


def test_every_query_names_series_labels_and_values_the_gateway_exports(exposition: str) -> None:
    exported: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = exported.setdefault(sample.name, {})
            for name, value in sample.labels.items():
                labels.setdefault(name, set()).add(value)
    queries = _queries(FleetQueries({}))
    assert len(queries) == 9
    for expr in queries:
        for metric, matchers in _selectors(expr):
            assert metric in exported, f"{metric} is not exported (query: {expr})"
            for label, values in matchers.items():
                assert label in exported[metric], f"{metric} has no label {label} (query: {expr})"
                missing = values - exported[metric][label]
                assert not missing, f"{metric}{{{label}}} never takes {sorted(missing)} (query: {expr})"


def _queries(q: FleetQueries) -> list[str]:
    return [
        q.requests("breast_cancer", "2", WINDOW),
        q.latency("breast_cancer", "2", WINDOW),
        q.shadow_requests("breast_cancer", "canary", WINDOW),
        q.shadow_rows("breast_cancer", "canary", WINDOW),
        q.shadowing("breast_cancer", "canary"),
        q.drift_windows("breast_cancer", "2", WINDOW),
        q.drift_detected("breast_cancer", "2"),
        q.drifted_features("breast_cancer", "2"),
        q.weights("breast_cancer"),
    ]


def _selectors(expr: str) -> list[tuple[str, dict[str, set[str]]]]:
    """(metric, label -> the values its matchers require) for every vector selector of `expr`; a regex matcher's
    alternatives are each a value."""
    found: list[tuple[str, dict[str, set[str]]]] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels: dict[str, set[str]] = {}
            for m in node.matchers.matchers:
                values = m.value.split("|") if str(m.op) == "MatchOp.Re" else [m.value]
                labels.setdefault(m.name, set()).update(values)
            found.append((str(node.name), labels))

    promql_parser.walk(promql_parser.parse(expr), visit)
    assert found, expr
    return found
