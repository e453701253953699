"""The drift monitor end to end: sampler -> windows -> verdicts -> snapshot, Prometheus collector and webhook."""

from __future__ import annotations

import random
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gateway.drift.monitor import DriftMonitor
from gateway.drift.profile import Profile, build_profile
from gateway.drift.sampler import DriftKey, DriftSampler
from gateway.drift.settings import DriftSettings
from gateway.signature import Signature, TensorSpec
from gateway.webhook import Webhook

SIGNATURE = Signature(
    (TensorSpec("input", "FP32", (-1, 3)),),
    (TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 2))),
)
KEY = DriftKey("cancer", "1")
SETTINGS = DriftSettings(sample_rate=1.0, window_size=500, webhook_url="http://hooks.test/drift")


def _batch(rng: np.random.Generator, rows: int, shift: float = 0.0) -> tuple[dict[str, Any], dict[str, Any]]:
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    x[:, 0] += shift
    score = 1.0 / (1.0 + np.exp(-x[:, 0]))
    probabilities = np.stack([1 - score, score], axis=1).astype(np.float32)
    return {"input": x}, {"label": (score > 0.5).astype(np.int64), "probabilities": probabilities}


def _profile() -> Profile:
    inputs, outputs = _batch(np.random.default_rng(0), 5_000)
    return build_profile(SIGNATURE, inputs, outputs, dataset_sha256="abc")


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _monitor(webhook: Webhook | None = None) -> tuple[DriftMonitor, DriftSampler, CollectorRegistry]:
    registry = CollectorRegistry()
    sampler = DriftSampler(100_000, rng=random.Random(1))
    monitor = DriftMonitor(sampler, registry, clock=_Clock(), webhook=webhook, versions={KEY: (_profile(), SETTINGS)})
    return monitor, sampler, registry


def _feed(sampler: DriftSampler, rng: np.random.Generator, rows: int, per_request: int = 7, shift: float = 0.0) -> None:
    while rows > 0:
        size = min(per_request, rows)
        sampler.offer(KEY, *_batch(rng, size, shift))
        rows -= size


def _labels(feature: str | None = None) -> dict[str, str]:
    labels = {"model": "cancer", "version": "1"}
    if feature is not None:
        labels["feature"] = feature
    return labels


def test_windows_close_at_exactly_window_size_across_split_samples() -> None:
    monitor, sampler, registry = _monitor()
    rng = np.random.default_rng(2)
    _feed(sampler, rng, 1_234)  # 7-row requests: windows close inside a sample
    assert monitor.process_pending() == 1_234
    snap = monitor.snapshot()[KEY]
    assert snap.windows_total == 2 and snap.filling == 234
    assert snap.window is not None and snap.window.samples == 500 and snap.window.index == 1
    assert not snap.drifting
    assert registry.get_sample_value("gateway_drift_samples_processed_total", _labels()) == 1_234
    assert registry.get_sample_value("gateway_drift_samples_taken_total", _labels()) == 1_234
    assert registry.get_sample_value("gateway_drift_samples_dropped_total", _labels()) == 0
    assert registry.get_sample_value("gateway_drift_windows_total", _labels()) == 2
    assert registry.get_sample_value("gateway_drift_window_samples", _labels()) == 500
    assert registry.get_sample_value("gateway_drift_detected", _labels()) == 0
    assert registry.get_sample_value("gateway_drift_queue_depth") == 0
    assert registry.get_sample_value("gateway_drift_location_pvalue", _labels("input[0]")) is not None
    assert registry.get_sample_value("gateway_drift_pvalue", _labels("input[0]")) is not None
    assert registry.get_sample_value("gateway_drift_js_distance", _labels("label")) is not None
    assert registry.get_sample_value("gateway_drift_location_pvalue", _labels("label")) is None  # categorical


def test_process_pending_respects_its_limit() -> None:
    monitor, sampler, _ = _monitor()
    _feed(sampler, np.random.default_rng(3), 100, per_request=1)
    assert monitor.process_pending(limit=30) == 30
    assert sampler.depth == 70


@pytest.mark.anyio
async def test_drift_turns_on_after_k_of_m_windows_then_off_with_webhooks() -> None:
    posted: list[dict[str, Any]] = []

    def receive(request: httpx.Request) -> httpx.Response:
        import orjson

        posted.append(orjson.loads(request.content))
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(receive)) as client:
        webhook = Webhook(client)
        monitor, sampler, registry = _monitor(webhook)
        rng = np.random.default_rng(4)
        # A 1-sigma shift of input[0] (and so of both outputs) is flagged in every window of 500 rows.
        _feed(sampler, rng, 500, shift=1.0)
        monitor.process_pending()
        assert not monitor.snapshot()[KEY].drifting  # 1 of 3: persistence holds it back
        assert registry.get_sample_value("gateway_drift_window_drifted", _labels()) == 1
        _feed(sampler, rng, 500, shift=1.0)
        monitor.process_pending()
        assert monitor.snapshot()[KEY].drifting
        assert registry.get_sample_value("gateway_drift_detected", _labels()) == 1
        assert registry.get_sample_value("gateway_drift_feature_drifted", _labels("input[0]")) == 1
        assert await webhook.send_pending() == 1
        assert posted[0]["event"] == "drift_started" and posted[0]["model"] == "cancer"
        assert "input[0]" in posted[0]["drifted_features"]
        _feed(sampler, rng, 1_000)  # two clean windows: only 1 of the last 3 drifted
        monitor.process_pending()
        assert not monitor.snapshot()[KEY].drifting
        assert await webhook.send_pending() == 1
        assert posted[1]["event"] == "drift_stopped" and posted[1]["recent_windows"] == [True, False, False]
        assert registry.get_sample_value("gateway_drift_webhook_deliveries_total", {"outcome": "sent"}) == 2


def test_snapshot_json_lists_the_latest_window_per_version() -> None:
    monitor, sampler, _ = _monitor()
    other = DriftKey("cancer", "2")
    monitor.register(other, _profile(), SETTINGS)
    _feed(sampler, np.random.default_rng(5), 600)
    monitor.process_pending()
    body = monitor.snapshot_json()
    assert [(v["model"], v["version"]) for v in body["versions"]] == [("cancer", "1"), ("cancer", "2")]
    first, second = body["versions"]
    assert first["window"]["samples"] == 500 and first["filling"] == 100
    assert {f["name"] for f in first["window"]["features"]} >= {"input[0]", "label", "probabilities[1]"}
    assert second["window"] is None and second["drifting"] is False
    assert body["queue"] == {"depth": 0, "capacity": 100_000}


def test_unregister_drops_series_and_discards_queued_samples() -> None:
    monitor, sampler, registry = _monitor()
    rng = np.random.default_rng(6)
    _feed(sampler, rng, 500)
    monitor.process_pending()
    sampler.offer(KEY, *_batch(rng, 5))
    monitor.unregister(KEY)
    assert monitor.process_pending() == 0
    assert monitor.discarded == 1
    assert registry.get_sample_value("gateway_drift_detected", _labels()) is None
    assert monitor.snapshot_json()["versions"] == []


def test_disabled_settings_unregister() -> None:
    monitor, sampler, _ = _monitor()
    monitor.register(KEY, _profile(), DriftSettings(enabled=False))
    assert KEY not in monitor.snapshot() and sampler.rate(KEY) is None


def test_exported_features_are_capped_outputs_first() -> None:
    registry = CollectorRegistry()
    sampler = DriftSampler(10_000, rng=random.Random(1))
    capped = DriftSettings(sample_rate=1.0, window_size=200, max_exported_features=2)
    monitor = DriftMonitor(sampler, registry, versions={KEY: (_profile(), capped)})
    _feed(sampler, np.random.default_rng(7), 200)
    monitor.process_pending()
    exported = {s.labels["feature"] for m in registry.collect() if m.name == "gateway_drift_psi" for s in m.samples}
    assert exported == {"label", "probabilities[0]"}


def test_a_sample_missing_an_output_still_counts_its_inputs() -> None:
    monitor, sampler, _ = _monitor()
    rng = np.random.default_rng(8)
    for _ in range(500):
        inputs, outputs = _batch(rng, 1)
        sampler.offer(KEY, inputs, {"label": outputs["label"]})  # the client asked for `label` only
    monitor.process_pending()
    window = monitor.snapshot()[KEY].window
    assert window is not None and window.samples == 500
    probabilities = next(f for f in window.features if f.name == "probabilities[0]")
    assert probabilities.psi == 0.0 and not probabilities.drifted


@pytest.mark.anyio
async def test_run_loop_processes_in_the_background_until_cancelled() -> None:
    import anyio

    monitor, sampler, _ = _monitor()
    _feed(sampler, np.random.default_rng(9), 600)
    async with anyio.create_task_group() as group:
        group.start_soon(monitor.run, 0.01)
        with anyio.fail_after(10):  # a deadline, not a fixed sleep
            while monitor.snapshot()[KEY].processed < 600:
                await anyio.sleep(0.01)
        group.cancel_scope.cancel()
    assert monitor.snapshot()[KEY].windows_total == 1


def test_a_quiet_version_gets_a_verdict_when_its_window_times_out() -> None:
    now = [1000.0]
    settings = DriftSettings(sample_rate=1.0, window_size=2_000, max_window_seconds=60.0, min_window_size=100)
    sampler = DriftSampler(100_000, rng=random.Random(1))
    monitor = DriftMonitor(sampler, CollectorRegistry(), clock=lambda: now[0], versions={KEY: (_profile(), settings)})
    rng = np.random.default_rng(5)
    _feed(sampler, rng, 60)
    assert monitor.process_pending() == 60  # the window opens now, with its first rows
    now[0] += 120.0
    assert monitor.process_pending() == 0
    snap = monitor.snapshot()[KEY]
    assert snap.windows_total == 0 and snap.filling == 60  # past the cap, but too few rows to judge: still filling
    _feed(sampler, rng, 50)
    monitor.process_pending()
    snap = monitor.snapshot()[KEY]
    assert snap.windows_total == 1 and snap.filling == 0  # enough rows, past the cap: judged at once
    assert snap.window is not None and snap.window.samples == 110 and not snap.window.drifted
    # The next window's time runs from its own first row.
    now[0] += 1_000.0
    _feed(sampler, rng, 150)
    monitor.process_pending()
    now[0] += 59.5
    monitor.process_pending()
    assert monitor.snapshot()[KEY].windows_total == 1
    now[0] += 1.0
    monitor.process_pending()  # nothing new arrived: the idle tick closes it
    snap = monitor.snapshot()[KEY]
    assert snap.windows_total == 2 and snap.window is not None and snap.window.samples == 150


def test_without_a_time_cap_windows_close_on_count_only() -> None:
    now = [1000.0]
    settings = DriftSettings(sample_rate=1.0, window_size=500)
    sampler = DriftSampler(100_000, rng=random.Random(1))
    monitor = DriftMonitor(sampler, CollectorRegistry(), clock=lambda: now[0], versions={KEY: (_profile(), settings)})
    _feed(sampler, np.random.default_rng(6), 300)
    monitor.process_pending()
    now[0] += 1e6
    monitor.process_pending()
    assert monitor.snapshot()[KEY].windows_total == 0 and monitor.snapshot()[KEY].filling == 300
