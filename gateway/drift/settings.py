"""A route's `drift:` mapping from the routing YAML, parsed into a frozen DriftSettings with documented defaults.

The defaults were sized by simulation (benchmarks/drift_quality.py; the README has its tables): null windows are
flagged at most 1 % of the time for references of 50 to 10,000 rows and windows of 200 to 5,000; against a 10,000-row
reference, windows of 2,000 rows catch a +0.2 sigma mean shift in one of 20 features, a x1.3 scale change, a 3 % ->
8 % rare class, an unseen category at 5 %, 10 % new missing values, 2 % of values beyond the reference maximum and
a correlation flip in >= 95 % of windows.

Alarm budget: with W windows a day and a per-window false-alarm rate f <= alpha, a version is falsely marked
drifting about W * C(m, k) * f**k times a day (k of the last m windows), assuming independent windows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from gateway import fields
from gateway.errors import ConfigError


@dataclass(frozen=True, slots=True)
class DriftSettings:
    enabled: bool = True
    # Bernoulli rate per served row; a geometric skip counter makes the unsampled rows cost one subtraction.
    sample_rate: float = 0.1
    # Tumbling windows of this many sampled rows; a verdict per full window.
    window_size: int = 2000
    # Benjamini-Hochberg false-discovery rate across one window's tests (one per feature, inputs and outputs). With no
    # drift a window is flagged at most about this often (benchmarks/drift_quality.py's grid).
    alpha: float = 0.01
    # Effect gate: a significant feature drifts only if its JS distance (base 2, the noise expected at this window
    # and reference size removed) is at least this, or its novelty share passes `min_novel_share`. On 20 quantile
    # bins 0.04 is a mean shift of about 0.1 sigma: +0.2 sigma reads about 0.08 at every window size and passes;
    # +0.03 sigma reads about 0.01 and is stopped however significant.
    min_js_distance: float = 0.04
    # Effect gate for novelty (values beyond the reference range, unseen categories, newly missing values): the
    # window's share there above what the reference foretells (1/(m + 1) beyond each end of an m-row reference).
    min_novel_share: float = 0.01
    # Persistence: a version is drifting while at least k of its last m windows drifted.
    persistence_k: int = 2
    persistence_m: int = 3
    # Prometheus cardinality cap: per-feature series are exported for at most this many features per version.
    max_exported_features: int = 100
    # POSTed a JSON body when the version's verdict turns on or off (None: no webhook).
    webhook_url: str | None = None
    # A window open this long (seconds since its first row) closes early with what it holds, if that is at least
    # `min_window_size` rows: a version with little traffic still gets a verdict. None: windows close on count only.
    max_window_seconds: float | None = None
    # The fewest rows a time-closed window is judged on; fewer, and it keeps filling (at 200 rows over 20 bins every
    # bin still expects 10, which the chi-square and KS p-values need).
    min_window_size: int = 200
    # Judge the joint monitor (PCA reconstruction error over the numeric inputs) when the profile has one.
    joint: bool = True


DISABLED = DriftSettings(enabled=False)

_NAMES = tuple(f.name for f in dataclasses.fields(DriftSettings))


def parse_drift_settings(data: object, path: str) -> DriftSettings:
    """Untrusted `drift:` value at `path` (e.g. `routes.fraud.drift`) -> DriftSettings, or ConfigError naming the key.

    A missing mapping (None) means drift is off for the route; a present mapping turns it on unless it says
    `enabled: false`.
    """
    if data is None:
        return DISABLED
    if isinstance(data, bool):
        return DriftSettings(enabled=data)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: must be a mapping (or true/false), got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in _NAMES)
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key; allowed: {', '.join(_NAMES)}")
    default = DriftSettings()
    values: dict[str, Any] = {}
    values["enabled"] = fields.boolean(data, "enabled", default.enabled, path)
    values["joint"] = fields.boolean(data, "joint", default.joint, path)
    values["sample_rate"] = fields.number(
        data, "sample_rate", default.sample_rate, path, low=0.0, high=1.0, open_low=True
    )
    values["window_size"] = fields.integer(data, "window_size", default.window_size, path, low=50)
    seconds = data.get("max_window_seconds")
    values["max_window_seconds"] = (
        None if seconds is None else fields.number(data, "max_window_seconds", 0.0, path, low=1.0, high=30 * 86400.0)
    )
    values["min_window_size"] = fields.integer(
        data, "min_window_size", min(default.min_window_size, values["window_size"]), path, low=50
    )
    if values["min_window_size"] > values["window_size"]:
        raise ConfigError(
            f"{path}.min_window_size: {values['min_window_size']} is more than window_size ({values['window_size']})"
        )
    values["alpha"] = fields.number(data, "alpha", default.alpha, path, low=0.0, high=0.5, open_low=True)
    values["min_js_distance"] = fields.number(data, "min_js_distance", default.min_js_distance, path, low=0.0, high=1.0)
    values["min_novel_share"] = fields.number(data, "min_novel_share", default.min_novel_share, path, low=0.0, high=1.0)
    values["persistence_k"] = fields.integer(data, "persistence_k", default.persistence_k, path, low=1)
    values["persistence_m"] = fields.integer(data, "persistence_m", default.persistence_m, path, low=1, high=100)
    values["max_exported_features"] = fields.integer(
        data, "max_exported_features", default.max_exported_features, path, low=0, high=10_000
    )
    if values["persistence_k"] > values["persistence_m"]:
        raise ConfigError(
            f"{path}.persistence_k: {values['persistence_k']} is more than persistence_m ({values['persistence_m']})"
        )
    url = data.get("webhook_url")
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        raise ConfigError(f"{path}.webhook_url: must be an http(s) URL, got {url!r}")
    if url is not None:
        try:
            httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ConfigError(f"{path}.webhook_url: {exc}") from None
    values["webhook_url"] = url
    return DriftSettings(**values)
