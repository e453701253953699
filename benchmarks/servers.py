"""Server processes under test: start one pinned to a core, poll its readiness with a deadline, stop it, read its CPU.

Each server runs in its own session (process group), so stopping it also stops any worker processes it forked
(MLServer's inference pool) and nothing is left listening between measurements.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


class ServerError(Exception):
    """The server did not come up (exited, or not ready before the deadline); the message carries its output."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    command: tuple[str, ...]  # "{port}" and "{host}" in arguments and env values are replaced when started
    ready_path: str = "/v2/health/ready"
    env: tuple[tuple[str, str], ...] = ()
    cwd: Path | None = None
    start_timeout_s: float = 60.0
    models: frozenset[str] | None = None  # models it serves; None = all


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def pin_prefix(cores: Sequence[int] | None) -> list[str]:
    """`taskset -c <cores>` when taskset exists and the cores are online, else nothing (run unpinned)."""
    if not cores or shutil.which("taskset") is None:
        return []
    if not set(cores) <= os.sched_getaffinity(0):
        return []
    return ["taskset", "-c", ",".join(str(c) for c in cores)]


def process_tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and every live descendant, from /proc (0.0 where /proc is absent)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0.0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces; every field we need comes after its closing parenthesis.
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
    total = 0.0
    for pid, seconds in cpu.items():
        node = pid
        while node > 1:
            if node == root:
                total += seconds
                break
            node = parents.get(node, 0)
    return total


@dataclass
class RunningServer:
    spec: ServerSpec
    process: subprocess.Popen[bytes]
    port: int
    host: str
    log_path: Path
    started_at: float = field(default_factory=time.perf_counter)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def cpu_seconds(self) -> float:
        return process_tree_cpu_seconds(self.process.pid)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.spec.start_timeout_s
        url = self.base_url + self.spec.ready_path
        while True:
            if self.process.poll() is not None:
                raise ServerError(f"{self.spec.name} exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if 200 <= response.status < 300:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.spec.name} not ready at {url} after {self.spec.start_timeout_s:.0f} s: {self.log_tail()}"
                )
            time.sleep(0.05)  # poll interval, not a wait for anything in particular

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout_s)
        # Forked workers (MLServer) may outlive the leader; the group id is the leader's pid.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def start_server(
    spec: ServerSpec, *, log_dir: Path, cores: Sequence[int] | None = None, host: str = "127.0.0.1"
) -> RunningServer:
    """Start `spec` on a free port, pinned to `cores` where possible, and wait until it answers ready."""
    port = free_port(host)

    def fill(text: str) -> str:
        return text.replace("{port}", str(port)).replace("{host}", host)

    command = [fill(arg) for arg in spec.command]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}.log"
    env = {**os.environ, **{name: fill(value) for name, value in spec.env}}
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(
                pin_prefix(cores) + command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=spec.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise ServerError(f"{spec.name}: cannot run {command[0]}: {exc}") from exc
    server = RunningServer(spec, process, port, host, log_path)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server
