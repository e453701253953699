"""Who may call /admin/*: a bearer token when one is configured (constant-time compared, never logged); without one,
anyone on loopback, and beyond loopback reads only. Inference, health and metrics are never guarded."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import models
import orjson
import pytest
from server import free_port, gateway
from starlette.testclient import TestClient

from gateway.admin import AdminGuard, is_loopback, load_token
from gateway.app import Settings, create_app
from gateway.errors import ConfigError

TOKEN = b"s3cret-token-for-tests"
BODY = orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]})


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    repo = models.affine_repository(tmp_path / "repo", {1: 2.0})
    path = tmp_path / "gateway.yaml"
    path.write_text(f"model_repository: {repo}\nroutes:\n  affine:\n    versions: {{a: 1}}\n")
    return path


def client_for(config: Path, *, token: bytes | None, exposed: bool) -> Iterator[TestClient]:
    app = create_app(Settings(config_path=config, watch=False, admin_token=token, exposed=exposed))
    with TestClient(app) as client:
        yield client


@pytest.fixture()
def guarded(config: Path) -> Iterator[TestClient]:
    yield from client_for(config, token=TOKEN, exposed=True)


def test_with_a_token_every_admin_call_needs_it(guarded: TestClient) -> None:
    for method, path in (("GET", "/admin/rollouts"), ("GET", "/admin/drift"), ("POST", "/admin/reload")):
        missing = guarded.request(method, path)
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert "bearer token" in missing.json()["error"]
        wrong = guarded.request(method, path, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json() == {"error": "the admin token is not valid"}
        basic = guarded.request(method, path, headers={"authorization": f"Basic {TOKEN.decode()}"})
        assert basic.status_code == 401
        right = guarded.request(method, path, headers={"authorization": f"Bearer {TOKEN.decode()}"})
        assert right.status_code == 200, right.text
    assert guarded.get("/admin").status_code == 401  # the prefix itself, not only what is under it


def test_inference_health_and_metrics_are_never_guarded(guarded: TestClient) -> None:
    assert guarded.post("/v2/models/affine/infer", content=BODY).status_code == 200
    assert guarded.get("/v2/health/ready").status_code == 200
    assert guarded.get("/metrics").status_code == 200
    assert guarded.get("/administrator").status_code == 404  # only /admin and what is under it


def test_beyond_loopback_without_a_token_admin_changes_are_refused(config: Path) -> None:
    for client in client_for(config, token=None, exposed=True):
        refused = client.post("/admin/reload")
        assert refused.status_code == 403 and "GATEWAY_ADMIN_TOKEN" in refused.json()["error"]
        assert "www-authenticate" not in refused.headers
        assert client.get("/admin/rollouts").status_code == 200  # reads stay open


def test_on_loopback_without_a_token_admin_is_open(config: Path) -> None:
    for client in client_for(config, token=None, exposed=False):
        assert client.post("/admin/reload").status_code == 200


def test_the_token_is_never_in_a_repr_or_the_log(config: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert TOKEN.decode() not in repr(AdminGuard(TOKEN, True))
    assert TOKEN.decode() not in repr(Settings(admin_token=TOKEN))
    with caplog.at_level(logging.DEBUG):
        for client in client_for(config, token=TOKEN, exposed=True):
            client.post("/admin/reload", headers={"authorization": "Bearer wrong"})
            client.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN.decode()}"})
    assert TOKEN.decode() not in caplog.text


def test_load_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_ADMIN_TOKEN", raising=False)
    assert load_token(None) is None
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "  from-env \n")
    assert load_token(None) == b"from-env"
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert load_token(path) == b"from-file"  # the file wins over the environment
    path.write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        load_token(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_token(tmp_path / "missing")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("gateway.internal", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) == loopback


def test_serve_and_the_rollout_command_use_the_token_file(config: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN.decode())
    with gateway(["--config", str(config), "--admin-token-file", str(token)], tmp_path / "serve.log") as server:
        assert httpx.get(f"{server.url}/admin/rollouts").status_code == 401
        command = [sys.executable, "-m", "gateway", "rollout", "status", "--url", server.url]
        refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "401" in refused.stderr
        done = subprocess.run([*command, "--token-file", str(token)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "no rollouts" in done.stdout
    assert TOKEN.decode() not in server.output()


def test_serve_refuses_to_start_with_an_empty_token_file(config: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--admin-token-file", str(token)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "empty" in done.stderr


def test_an_admin_port_serves_metrics_and_admin_calls_and_the_main_port_no_longer_does(
    config: Path, tmp_path: Path
) -> None:
    """With --admin-port, /metrics and /admin/* move to their own listener (behind the same guard, with the same read
    limits) and the main port answers 404 for them; inference stays on the main port only; health is on both."""
    admin = free_port()
    token = tmp_path / "token"
    token.write_bytes(TOKEN)
    args = ["--config", str(config), "--admin-port", str(admin), "--admin-token-file", str(token),
            "--header-timeout", "0.5"]  # fmt: skip
    with gateway(args, tmp_path / "log") as server:
        side = f"http://127.0.0.1:{admin}"
        assert httpx.post(f"{server.url}/v2/models/affine/infer", content=BODY).status_code == 200
        for path in ("/metrics", "/admin/drift", "/admin/rollouts"):
            moved = httpx.get(server.url + path)
            assert moved.status_code == 404 and "admin port" in moved.json()["error"], path
        metrics = httpx.get(f"{side}/metrics")
        assert metrics.status_code == 200 and "gateway_requests_total{" in metrics.text
        assert 'model="affine"' in metrics.text  # the main port's request, counted by the one process
        assert httpx.get(f"{side}/admin/drift").status_code == 401  # the guard holds on the admin port
        assert (
            httpx.get(f"{side}/admin/drift", headers={"authorization": f"Bearer {TOKEN.decode()}"}).status_code == 200
        )
        assert httpx.get(f"{side}/v2/health/ready").status_code == 200
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        refused = httpx.post(f"{side}/v2/models/affine/infer", content=BODY)
        assert refused.status_code == 404 and "/metrics" in refused.json()["error"]
        # The read limits hold on the admin port too: a head that never ends gets 408.
        with socket.create_connection(("127.0.0.1", admin), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 408 ")
    assert "metrics and admin calls on http://127.0.0.1:" in server.output()


def test_an_admin_port_that_cannot_be_bound_fails_the_start(config: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", "0", "--admin-port",
             str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 3 and "cannot listen for admin calls" in result.stderr
