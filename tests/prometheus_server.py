"""Run a real Prometheus (Debian's `prometheus`) on a loopback port, scraping given targets every second, for tests
that ask its HTTP API about real gateways; and the deadline-bounded poll those tests wait with."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from server import free_port, running


def poll(what: str, check: Callable[[], bool], deadline: float = 60.0, interval: float = 0.2) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not within {deadline:.0f}s")
        time.sleep(interval)  # poll interval, bounded by the deadline above


@contextlib.contextmanager
def prometheus(
    folder: Path, targets: Sequence[str], *, labels: dict[str, str] | None = None, rule_files: Sequence[Path] = ()
) -> Iterator[str]:
    """Prometheus scraping `targets` (host:port) every second as job `gateway`, its storage and log in `folder`;
    yields its base URL once it is ready."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: install the Debian package 'prometheus' (.ci/run does)")
    web = free_port()
    scrape = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": "gateway", "static_configs": [{"targets": list(targets), "labels": labels or {}}]}
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    log_path = folder / "prometheus.log"
    command = [
        binary,
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{web}",
    ]
    with log_path.open("wb") as log, running(command, log) as process:
        url = f"http://127.0.0.1:{web}"
        poll("prometheus ready", lambda: _ready(process, url, log_path))
        yield url


def query(url: str, expr: str) -> list[dict[str, Any]]:
    """The instant query's result; a parse or evaluation error fails the calling test with Prometheus' reason."""
    response = httpx.post(f"{url}/api/v1/query", data={"query": expr}, timeout=10.0)
    body = response.json()
    assert body["status"] == "success", f"{expr}\n-> {body.get('errorType')}: {body.get('error')}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _ready(process: subprocess.Popen[bytes], url: str, log: Path) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"prometheus exited with {process.returncode}:\n{log.read_text(errors='replace')}")
    try:
        return httpx.get(f"{url}/-/ready", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False
