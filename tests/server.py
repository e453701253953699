"""Run `gateway serve` as a real process on a loopback port, for tests about HTTP and the CLI."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def running(
    command: list[str], log: IO[bytes], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process writing to `log`, terminated (then killed) on the way out."""
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def gateway(args: list[str], log: Path, *, cwd: Path | None = None, deadline: float = 60.0) -> Iterator[Server]:
    port = free_port()
    command = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--drain-delay", "0", *args]
    with (
        log.open("wb") as sink,
        running(command, sink, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as process,
    ):
        server = Server(process, port, log)
        wait_ready(server, deadline)
        yield server


def wait_ready(server: Server, deadline: float) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if server.process.poll() is not None:
            raise RuntimeError(f"gateway exited with {server.process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # poll interval, bounded by the deadline above
    raise TimeoutError(f"gateway not ready within {deadline}s:\n{server.output()}")
