"""The `wrk` engine: Debian's wrk (closed loop only) driven by a generated Lua script that POSTs the body.

The Lua `done` hook prints one JSON line with wrk's own counters and latency percentiles (microseconds), so no text
scraping of wrk's human output is needed.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.loadgen import LoadError, LoadResult, LoadSpec

_MARK = "WRKJSON "

_SCRIPT = """
local f = assert(io.open([==[{body_path}]==], "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{mark}{{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
    .. '"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def write_script(directory: Path, spec: LoadSpec) -> Path:
    body_path = directory / "body.bin"
    body_path.write_bytes(spec.body)
    headers = {"Content-Type": "application/json", **dict(spec.headers)}
    header_lines = "\n".join(f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items())
    script = directory / "post.lua"
    script.write_text(_SCRIPT.format(body_path=body_path, headers=header_lines, mark=_MARK))
    return script


def _invoke(wrk: str, script: Path, spec: LoadSpec, seconds: int) -> tuple[dict[str, float], float]:
    """One wrk process; returns its JSON summary and the CPU seconds it used."""
    command = [wrk, "-t1", f"-c{spec.connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), spec.url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(_MARK)), None)
    if done.returncode != 0 or line is None:
        raise LoadError(f"wrk failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-500:]}")
    summary: dict[str, float] = json.loads(line[len(_MARK) :])
    return summary, cpu


def run_wrk(spec: LoadSpec) -> LoadResult:
    """Closed-loop run with wrk: one thread, `spec.connections` connections; warm-up is a separate wrk run."""
    if spec.rate is not None:
        raise LoadError("wrk is closed loop only; use the python engine for --rate")
    wrk = shutil.which("wrk")
    if wrk is None:
        raise LoadError("wrk is not installed (apt-get install wrk), use --engine python")
    # wrk takes whole seconds.
    seconds = max(1, math.ceil(spec.duration_s))
    with tempfile.TemporaryDirectory(prefix="loadgen-wrk-") as tmp:
        script = write_script(Path(tmp), spec)
        if spec.warmup_s > 0:
            _invoke(wrk, script, spec, max(1, math.ceil(spec.warmup_s)))
        started = time.perf_counter()
        summary, cpu = _invoke(wrk, script, spec, seconds)
        wall = time.perf_counter() - started
    window = summary["duration_us"] / 1e6
    statuses = {kind: int(summary[kind]) for kind in ("connect", "read", "write", "status", "timeout") if summary[kind]}
    errors = sum(statuses.values())
    ok = int(summary["requests"]) - int(summary["status"])
    return LoadResult(
        engine="wrk",
        mode="closed",
        url=spec.url,
        connections=spec.connections,
        rate=None,
        duration_s=window,
        requests=ok,
        errors=errors,
        rps=ok / window if window > 0 else 0.0,
        latency_ms={
            "p50": summary["p50"] / 1e3,
            "p90": summary["p90"] / 1e3,
            "p99": summary["p99"] / 1e3,
            "p999": summary["p999"] / 1e3,
            "max": summary["max"] / 1e3,
            "mean": summary["mean"] / 1e3,
        },
        loadgen_cpu=cpu / wall,
        statuses=statuses,
    )
