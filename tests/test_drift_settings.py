"""Parsing a route's `drift:` mapping."""

from __future__ import annotations

import pytest

from gateway.drift.settings import DriftSettings, parse_drift_settings
from gateway.errors import ConfigError

PATH = "routes.fraud.drift"


def test_absent_mapping_is_off_and_empty_mapping_is_the_defaults() -> None:
    assert not parse_drift_settings(None, PATH).enabled
    assert parse_drift_settings({}, PATH) == DriftSettings()
    assert parse_drift_settings(True, PATH) == DriftSettings()


def test_every_key_parses() -> None:
    settings = parse_drift_settings(
        {
            "enabled": True,
            "sample_rate": 1,
            "window_size": 5000,
            "alpha": 0.005,
            "min_js_distance": 0.05,
            "min_novel_share": 0.02,
            "persistence_k": 3,
            "persistence_m": 4,
            "max_exported_features": 10,
            "webhook_url": "https://hooks.example/drift",
            "max_window_seconds": 600,
            "min_window_size": 500,
            "joint": False,
        },
        PATH,
    )
    assert settings == DriftSettings(
        True, 1.0, 5000, 0.005, 0.05, 0.02, 3, 4, 10, "https://hooks.example/drift", 600.0, 500, False
    )


def test_time_cap_is_off_by_default_and_its_floor_never_exceeds_the_window() -> None:
    assert parse_drift_settings({}, PATH).max_window_seconds is None
    assert parse_drift_settings({"window_size": 100}, PATH).min_window_size == 100


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], r"routes\.fraud\.drift: must be a mapping"),
        ({"sample_rat": 0.1}, r"routes\.fraud\.drift\.sample_rat: unknown key"),
        ({"sample_rate": 0}, r"routes\.fraud\.drift\.sample_rate: must be in \(0\.0, 1\.0\]"),
        ({"sample_rate": "x"}, r"routes\.fraud\.drift\.sample_rate: must be a number"),
        ({"window_size": 10}, r"routes\.fraud\.drift\.window_size: must be at least 50"),
        ({"window_size": 1.5}, r"routes\.fraud\.drift\.window_size: must be an integer"),
        ({"alpha": True}, r"routes\.fraud\.drift\.alpha: must be a number"),
        ({"enabled": "yes"}, r"routes\.fraud\.drift\.enabled: must be true or false"),
        ({"persistence_k": 4, "persistence_m": 3}, r"routes\.fraud\.drift\.persistence_k: 4 is more than"),
        ({"webhook_url": "ftp://x"}, r"routes\.fraud\.drift\.webhook_url: must be an http\(s\) URL"),
        ({"max_window_seconds": 0.5}, r"routes\.fraud\.drift\.max_window_seconds: must be in \[1\.0, "),
        ({"max_window_seconds": "1h"}, r"routes\.fraud\.drift\.max_window_seconds: must be a number"),
        ({"min_window_size": 20}, r"routes\.fraud\.drift\.min_window_size: must be at least 50"),
        ({"window_size": 100, "min_window_size": 150}, r"routes\.fraud\.drift\.min_window_size: 150 is more than"),
    ],
)
def test_bad_values_name_the_key_path(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_drift_settings(data, PATH)
