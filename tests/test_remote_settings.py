"""A remote version's block: defaults, every fault named by its key path, and one endpoint's settings agreeing."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from gateway.config import RemoteVersion, parse_config
from gateway.errors import ConfigError
from gateway.generation import parse_features
from gateway.remote.settings import EjectionSettings, PoolSettings, RemoteSpec, parse_remote, parse_remote_versions


def routes(*versions: Mapping[str, object]) -> dict[str, object]:
    named = {"stable": 1, **{f"r{i}": v for i, v in enumerate(versions)}}
    return {"model_repository": ".", "routes": {"m": {"versions": named, "split": {"weights": {"stable": 1}}}}}


def test_defaults_and_the_remote_paths() -> None:
    spec = parse_remote({"endpoint": "http://triton:8000/", "model": "resnet", "version": 3}, "v")
    assert spec == RemoteSpec(endpoint="http://triton:8000", model="resnet", version="3")
    assert spec.infer_path == "/v2/models/resnet/versions/3/infer"
    unversioned = parse_remote({"endpoint": "https://k/prefix", "model": "m"}, "v")
    assert unversioned.model_path == "/v2/models/m" and unversioned.endpoint == "https://k/prefix"


def test_everything_stated() -> None:
    spec = parse_remote(
        {
            "endpoint": "http://t:1", "model": "m", "version": "v1.2", "timeout": "250ms", "connect_timeout": 0.1,
            "fallback": "baseline", "profile": "p.json", "health_interval": 0,
            "pool": {"max_connections": 8, "max_keepalive": 4, "keepalive_expiry": "30s"},
            "ejection": {"consecutive_failures": 2, "base_time": "1s", "max_time": "1m"},
        },
        "v",
    )  # fmt: skip
    assert (spec.timeout, spec.connect_timeout, spec.fallback, spec.profile) == (0.25, 0.1, "baseline", Path("p.json"))
    assert spec.settings.pool == PoolSettings(8, 4, 30.0) and spec.settings.ejection == EjectionSettings(2, 1.0, 60.0)
    assert spec.settings.health_interval == 0


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"endpoint": "http://t:1"}, "v.model: is required"),
        ({"endpoint": "ftp://t", "model": "m"}, "v.endpoint: must be an http(s) URL with a host"),
        ({"endpoint": "http://t:1?x=1", "model": "m"}, "v.endpoint: must have no query"),
        ({"endpoint": "http://t:99999", "model": "m"}, "v.endpoint: 'http://t:99999' is not a valid URL"),
        ({"endpoint": "http://t", "model": "a/b"}, "v.model: must be a name matching"),
        ({"endpoint": "http://t", "model": "m", "timeout": "soon"}, "v.timeout: must be a duration"),
        ({"endpoint": "http://t", "model": "m", "timeout": 1, "connect_timeout": 2}, "v.connect_timeout: must not"),
        ({"endpoint": "http://t", "model": "m", "fallback": "stable"}, "v.fallback: must be one of none, baseline"),
        ({"endpoint": "http://t", "model": "m", "pool": {"max_connections": 0}}, "v.pool.max_connections: must be"),
        ({"endpoint": "http://t", "model": "m", "ejection": {"base_time": 10, "max_time": 5}}, "v.ejection.max_time"),
        ({"endpoint": "http://t", "model": "m", "retries": 3}, "v.retries: unknown key"),
    ],
)
def test_faults_name_their_key(block: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(").replace(")", r"\)")):
        parse_remote(block, "v")


def remote_versions(data: dict[str, object]) -> dict[tuple[str, str], RemoteSpec]:
    return parse_remote_versions(parse_config(data, source="c", base_dir=Path("/tmp")))


def test_the_config_carries_remote_versions_named_by_their_version_name() -> None:
    config = parse_config(routes({"endpoint": "http://t:1", "model": "m"}), source="c", base_dir=Path("/tmp"))
    spec = config.routes["m"].versions["r0"]
    assert isinstance(spec, RemoteVersion) and spec.version == "r0" and spec.block["model"] == "m"
    assert parse_remote_versions(config) == {("m", "r0"): RemoteSpec("http://t:1", "m")}


def test_a_bad_block_rejects_the_config_before_anything_loads_naming_its_key() -> None:
    config = parse_config(routes({"endpoint": "triton:8000", "model": "m"}), source="c.yaml", base_dir=Path("/tmp"))
    with pytest.raises(ConfigError, match=r"^c\.yaml: routes\.m\.versions\.r0\.endpoint: must be an http\(s\) URL"):
        parse_features(config)


def test_versions_naming_one_endpoint_must_agree_on_its_settings() -> None:
    same = {"endpoint": "http://t:1", "model": "a", "pool": {"max_connections": 5}}
    remote_versions(routes(same, {**same, "model": "b"}))
    with pytest.raises(ConfigError, match=r"routes\.m\.versions\.r1: endpoint http://t:1 has other pool, ejection"):
        remote_versions(routes(same, {"endpoint": "http://t:1", "model": "b"}))


def test_one_models_remote_version_name_means_one_block_across_routes() -> None:
    data = routes({"endpoint": "http://t:1", "model": "a"})
    data["routes"]["n"] = {"model": "m", "versions": {"r0": {"endpoint": "http://t:1", "model": "b"}}}  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"routes\.n\.versions\.r0: model m has a remote version 'r0' with another"):
        remote_versions(data)
