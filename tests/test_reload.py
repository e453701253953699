"""Hot reload: every way a config file changes is seen; a bad file is rejected and the last good config serves on."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import httpx
import models
import orjson
import pytest
from prometheus_client import CollectorRegistry
from server import gateway
from starlette.testclient import TestClient

from gateway.app import Settings, create_app
from gateway.reloader import Reloader

BODY = orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]})


def config_text(repo: Path, weights: dict[str, int], versions: dict[str, int] | None = None) -> str:
    versions = versions or {"a": 1, "b": 2}
    names = ", ".join(f"{k}: {v}" for k, v in versions.items())
    split = ", ".join(f"{k}: {v}" for k, v in weights.items())
    return (
        f"model_repository: {repo}\nroutes:\n  affine:\n"
        f"    versions: {{{names}}}\n    split:\n      weights: {{{split}}}\n"
    )


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return models.affine_repository(tmp_path / "repo", {1: 2.0, 2: 3.0, 3: 4.0})


@pytest.fixture()
def setup(tmp_path: Path, repo: Path) -> Iterator[tuple[TestClient, Path, CollectorRegistry]]:
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(repo, {"a": 100}))
    registry = CollectorRegistry()
    app = create_app(Settings(config_path=path, watch=False), registry=registry)
    with TestClient(app) as client:
        yield client, path, registry


def served_version(client: TestClient) -> str:
    response = client.post("/v2/models/affine/infer", content=BODY)
    assert response.status_code == 200, response.text
    version: str = response.json()["model_version"]
    return version


def watch_tick(client: TestClient) -> str:
    """One unforced check, as the file watcher makes it."""
    portal = client.portal
    assert portal is not None
    reloader: Reloader = client.app.state.reloader  # type: ignore[attr-defined]
    outcome: str = portal.call(reloader.check_once)
    return outcome


def reload(client: TestClient) -> str:
    outcome: str = client.post("/admin/reload").json()["outcome"]
    return outcome


def test_in_place_edit_is_applied(setup: tuple[TestClient, Path, CollectorRegistry], repo: Path) -> None:
    client, path, registry = setup
    assert served_version(client) == "1"
    path.write_text(config_text(repo, {"b": 100}))
    assert reload(client) == "applied"
    assert served_version(client) == "2"
    assert registry.get_sample_value("gateway_config_generation") == 2
    assert registry.get_sample_value("gateway_config_reloads_total", {"outcome": "applied"}) == 2
    assert registry.get_sample_value("gateway_route_weight_ratio", {"route": "affine", "version": "b"}) == 1.0
    assert reload(client) == "unchanged"


def test_atomic_rename_is_applied(setup: tuple[TestClient, Path, CollectorRegistry], repo: Path) -> None:
    client, path, _ = setup
    tmp = path.with_suffix(".tmp")
    tmp.write_text(config_text(repo, {"b": 100}))
    os.replace(tmp, path)
    assert reload(client) == "applied"
    assert served_version(client) == "2"


def configmap(folder: Path, text: str, n: int) -> None:
    """Kubernetes' ConfigMap update: a new timestamped folder, then `..data` swapped to it by an atomic rename."""
    version_dir = folder / f"..2026_11_26_{n}"
    version_dir.mkdir()
    (version_dir / "gateway.yaml").write_text(text)
    link = folder / "..data_tmp"
    link.symlink_to(version_dir.name)
    os.replace(link, folder / "..data")
    if not (folder / "gateway.yaml").is_symlink():
        (folder / "gateway.yaml").symlink_to("..data/gateway.yaml")


def test_configmap_symlink_swap_is_seen_by_the_watcher(tmp_path: Path, repo: Path) -> None:
    mount = tmp_path / "mount"
    mount.mkdir()
    configmap(mount, config_text(repo, {"a": 100}), 1)
    registry = CollectorRegistry()
    app = create_app(Settings(config_path=mount / "gateway.yaml", reload_interval=0.02), registry=registry)
    with TestClient(app) as client:
        assert served_version(client) == "1"
        before = (mount / "gateway.yaml").lstat().st_mtime_ns
        configmap(mount, config_text(repo, {"b": 100}), 2)
        assert (mount / "gateway.yaml").lstat().st_mtime_ns == before  # the file's own link never changes
        deadline = time.monotonic() + 20
        while registry.get_sample_value("gateway_config_generation") != 2:
            assert time.monotonic() < deadline, "the watcher did not apply the swapped config"
            time.sleep(0.01)
        assert served_version(client) == "2"


def test_watcher_sees_in_place_edits(tmp_path: Path, repo: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(repo, {"a": 100}))
    registry = CollectorRegistry()
    with TestClient(create_app(Settings(config_path=path, reload_interval=0.02), registry=registry)) as client:
        path.write_text(config_text(repo, {"b": 100}))
        deadline = time.monotonic() + 20
        while registry.get_sample_value("gateway_config_generation") != 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert served_version(client) == "2"


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("routes: [unclosed", "line 2, column 1: YAML syntax error"),
        (None, "routes.affine.split.weights.a: must be >= 0"),
        ("missing-model", "version 9"),
        ("corrupt-model", "onnxruntime cannot load it"),
    ],
)
def test_bad_file_is_rejected_and_the_last_good_config_serves(
    setup: tuple[TestClient, Path, CollectorRegistry],
    repo: Path,
    text: str | None,
    logged: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, path, registry = setup
    if text is None:
        text = config_text(repo, {"a": -1, "b": 1})
    elif text == "missing-model":
        text = config_text(repo, {"a": 100}, {"a": 1, "b": 9})
    elif text == "corrupt-model":
        (repo / "affine" / "7").mkdir()
        (repo / "affine" / "7" / "model.onnx").write_bytes(b"\x08\x07garbage")
        text = config_text(repo, {"a": 100}, {"a": 1, "b": 7})
    path.write_text(text)
    response = client.post("/admin/reload")
    assert response.status_code == 422 and response.json()["outcome"] == "rejected"
    assert logged in caplog.text and str(path) in caplog.text
    assert registry.get_sample_value("gateway_config_reloads_total", {"outcome": "rejected"}) == 1
    assert registry.get_sample_value("gateway_config_generation") == 1
    assert registry.get_sample_value("gateway_config_last_reload_successful") == 0
    assert client.get("/v2/health/ready").status_code == 200
    assert served_version(client) == "1"


def test_the_success_gauge_lasts_as_long_as_the_rejected_file(
    setup: tuple[TestClient, Path, CollectorRegistry], repo: Path
) -> None:
    """gateway_config_last_reload_successful: 1 at start, 0 while the file on disk is a rejected one (however many
    ticks), 1 again once the file is back to the serving config or a good one is applied."""
    client, path, registry = setup

    def successful() -> float | None:
        return registry.get_sample_value("gateway_config_last_reload_successful")

    good = path.read_text()
    assert successful() == 1
    path.write_text(config_text(repo, {"a": -1, "b": 1}))
    assert watch_tick(client) == "rejected" and successful() == 0
    assert watch_tick(client) == "unchanged" and successful() == 0
    path.write_text(good)  # reverted: the serving config is on disk again
    assert watch_tick(client) == "unchanged" and successful() == 1
    path.write_text(config_text(repo, {"a": -1, "b": 1}))
    assert watch_tick(client) == "rejected" and successful() == 0
    path.write_text(config_text(repo, {"a": 50, "b": 50}))
    assert watch_tick(client) == "applied" and successful() == 1


def test_retired_version_leaves_the_exposition(setup: tuple[TestClient, Path, CollectorRegistry], repo: Path) -> None:
    client, path, registry = setup
    path.write_text(config_text(repo, {"b": 100}, {"b": 2}))
    assert reload(client) == "applied"
    assert registry.get_sample_value("gateway_model_ready", {"model": "affine", "version": "1"}) is None
    assert registry.get_sample_value("gateway_model_ready", {"model": "affine", "version": "2"}) == 1
    assert registry.get_sample_value("gateway_route_weight_ratio", {"route": "affine", "version": "a"}) is None
    assert registry.get_sample_value("gateway_route_weight_ratio", {"route": "affine", "version": "b"}) == 1


def test_unchanged_versions_are_reused_not_reloaded(
    setup: tuple[TestClient, Path, CollectorRegistry], repo: Path
) -> None:
    client, path, _ = setup
    app = client.app
    before = app.state.dataplane.snapshot.versions[("affine", 1)]  # type: ignore[attr-defined]
    path.write_text(config_text(repo, {"a": 50, "b": 50}))
    assert reload(client) == "applied"
    assert app.state.dataplane.snapshot.versions[("affine", 1)] is before  # type: ignore[attr-defined]


def test_sighup_forces_a_check(tmp_path: Path, repo: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(repo, {"a": 100}))
    with gateway(["--config", str(path), "--reload-interval", "3600"], tmp_path / "log") as server:
        path.write_text(config_text(repo, {"b": 100}))
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "gateway_config_generation 2.0" not in httpx.get(f"{server.url}/metrics").text:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.02)
        assert httpx.post(f"{server.url}/v2/models/affine/infer", content=BODY).json()["model_version"] == "2"


def test_validate_command(tmp_path: Path, repo: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(config_text(repo, {"a": 90, "b": 10}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_text(repo, {"a": 100}, {"a": 1, "b": 9}))
    run = [sys.executable, "-m", "gateway", "validate"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "valid" in ok.stdout
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True)
    assert failed.returncode == 1 and "routes.affine.versions.b: model affine version 9" in failed.stderr
    demo = subprocess.run([*run, str(Path(__file__).parent.parent / "config" / "gateway.yaml")], capture_output=True)
    assert demo.returncode == 0


def test_retired_batched_version_is_freed_and_its_series_go(tmp_path: Path, repo: Path) -> None:
    path = tmp_path / "gateway.yaml"
    batching = "    batching: {max_batch_size: 8, max_queue_delay_us: 100}\n"
    path.write_text(config_text(repo, {"a": 50, "b": 50}) + batching)
    registry = CollectorRegistry()
    app = create_app(Settings(config_path=path, watch=False, retire_grace=0.0), registry=registry)
    with TestClient(app) as client:
        client.post("/v2/models/affine/versions/b/infer", content=BODY)
        backend = weakref.ref(app.state.dataplane.snapshot.versions[("affine", 2)].backend)
        labels = {"model": "affine", "version": "2"}
        assert registry.get_sample_value("gateway_batch_executions_total", labels) == 1
        path.write_text(config_text(repo, {"a": 100}, {"a": 1}) + batching)
        assert reload(client) == "applied"
        deadline = time.monotonic() + 20
        while registry.get_sample_value("gateway_batch_executions_total", labels) is not None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert registry.get_sample_value("gateway_requests_total", {**labels, "outcome": "success"}) is None
        gc.collect()
        assert backend() is None  # nothing (no gauge callback, no batcher) keeps the retired session alive
        assert served_version(client) == "1"


def test_a_rejected_file_is_not_reprocessed_until_it_changes(
    setup: tuple[TestClient, Path, CollectorRegistry], repo: Path
) -> None:
    client, path, registry = setup
    assert registry.get_sample_value("gateway_model_load_failures_total", {"model": "affine", "version": "1"}) == 0
    path.write_text(config_text(repo, {"a": 100}, {"a": 1, "b": 9}))
    assert watch_tick(client) == "rejected"
    assert watch_tick(client) == "unchanged"
    assert registry.get_sample_value("gateway_config_reloads_total", {"outcome": "rejected"}) == 1
    assert registry.get_sample_value("gateway_model_load_failures_total", {"model": "affine", "version": "9"}) == 1
    shutil.copytree(repo / "affine" / "2", repo / "affine" / "9")
    assert watch_tick(client) == "unchanged"  # the watcher waits for the file to change ...
    assert reload(client) == "applied"  # ... a forced check (SIGHUP, POST /admin/reload) tries again


def test_a_version_that_failed_at_start_is_retried_when_its_file_appears(tmp_path: Path, repo: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(repo, {"a": 50, "b": 50}, {"a": 1, "b": 9}))
    app = create_app(Settings(config_path=path, watch=False), registry=CollectorRegistry())
    with TestClient(app) as client:
        assert client.get("/v2/health/ready").status_code == 503
        assert client.post("/v2/models/affine/versions/b/infer", content=BODY).status_code == 503
        assert watch_tick(client) == "unchanged"
        shutil.copytree(repo / "affine" / "3", repo / "affine" / "9")
        assert watch_tick(client) == "applied"
        assert client.get("/v2/health/ready").status_code == 200
        assert client.post("/v2/models/affine/versions/b/infer", content=BODY).json()["model_version"] == "9"


def test_one_version_cannot_have_two_batchers(setup: tuple[TestClient, Path, CollectorRegistry], repo: Path) -> None:
    client, path, _ = setup
    path.write_text(
        config_text(repo, {"a": 100})
        + "    batching: {max_batch_size: 8}\n  other:\n    model: affine\n    versions: {a: 1}\n"
        + "    batching: {max_batch_size: 16}\n"
    )
    response = client.post("/admin/reload")
    assert response.json()["outcome"] == "rejected"


def test_drift_follows_reloads(tmp_path: Path) -> None:
    demo = Path(__file__).resolve().parent.parent / "config" / "models"
    path = tmp_path / "gateway.yaml"
    route = "  bc:\n    model: breast_cancer\n    versions: {s: 1, c: 2}\n    split: {weights: {s: 1}}\n"
    base = f"model_repository: {demo}\nroutes:\n{route}"
    path.write_text(base)
    with TestClient(create_app(Settings(config_path=path, watch=False), registry=CollectorRegistry())) as client:
        assert client.get("/admin/drift").json()["versions"] == []
        path.write_text(base + "    drift: {window_size: 100}\n")
        assert reload(client) == "applied"
        deadline = time.monotonic() + 20
        while len(versions := client.get("/admin/drift").json()["versions"]) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert {v["version"]: v["window_size"] for v in versions} == {"1": 100, "2": 100}
        path.write_text(
            base.replace("{s: 1, c: 2}", "{s: 1}").replace("    split: {weights: {s: 1}}\n", "")
            + "    drift: {window_size: 100}\n"
        )
        assert reload(client) == "applied"
        while len(versions := client.get("/admin/drift").json()["versions"]) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert versions[0]["version"] == "1"


def test_sticky_users_keep_their_version_across_a_reload_that_keeps_the_weights(tmp_path: Path, repo: Path) -> None:
    path = tmp_path / "gateway.yaml"
    sticky = "      sticky: {key: header:x-user-id, salt: exp-1}\n"
    path.write_text(config_text(repo, {"a": 70, "b": 30}) + sticky)
    with TestClient(create_app(Settings(config_path=path, watch=False), registry=CollectorRegistry())) as client:

        def assignment() -> dict[str, str]:
            return {
                user: client.post("/v2/models/affine/infer", content=BODY, headers={"x-user-id": user}).json()[
                    "model_version"
                ]
                for user in (f"user-{i}" for i in range(300))
            }

        before = assignment()
        assert set(before.values()) == {"1", "2"}
        # Overrides added and a dark version declared: the weights are the same, so is every user's version.
        path.write_text(
            config_text(repo, {"a": 70, "b": 30}, {"a": 1, "b": 2, "c": 3})
            + sticky
            + '      overrides: [{header: {x-qa: "1"}, to: c}]\n'
        )
        assert reload(client) == "applied"
        assert assignment() == before
