"""What a shadow costs the primary: the same model behind two routes of one gateway, one copying 100 % of its requests
to a second version (a shadow), the other not; measured in the same run, in interleaved rounds.

    python -m benchmarks.bench_shadow                  # 5 rounds of 5 s per route and mode
    python -m benchmarks.bench_shadow --smoke          # a few seconds; the test suite runs it

Two modes: closed loop at 32 connections (the capacity the shadow takes: it runs the model a second time on the
same core), and open loop at a fixed rate well under capacity (the primary's latency as clients see it: the answer
never waits for the copy, but the copy's work competes for the core). The gateway is pinned to core 0 and the load
generator to core 1 where taskset exists, as benchmarks/compare.py does. Each figure is its median over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.loadgen import LoadResult
from benchmarks.models import TINY, write_repository
from benchmarks.payload import build_body
from benchmarks.servers import ServerSpec, pin_prefix, start_server

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ROUTES = ("plain", "shadowed")
SERVER_CORES = (0,)
LOADGEN_CORES = (1,)


def config_text(repository: Path) -> str:
    """Two routes over the same model file: `shadowed` copies every request to a second version of it."""
    return (
        f"model_repository: {repository}\nroutes:\n"
        "  plain:\n    model: tiny\n    versions: {primary: 1}\n"
        "  shadowed:\n    model: tiny\n    versions: {primary: 1, copy: 2}\n"
        "    split: {weights: {primary: 100}, baseline: primary}\n"
        "    shadow: {to: copy, percent: 100, max_inflight: 64, timeout_ms: 1000}\n"
    )


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    connections: int
    rate: float | None  # None: closed loop


def measure(url: str, body: Path, mode: Mode, duration: float, warmup: float, out: Path) -> LoadResult:
    """One load-generator run, pinned to core 1 (as benchmarks/compare.py pins it)."""
    command = pin_prefix(LOADGEN_CORES) + [
        sys.executable, "-m", "benchmarks.loadgen", url, "--body", str(body), "-c", str(mode.connections),
        "-d", str(duration), "--warmup", str(warmup), "--progress", "0", "--json", str(out),
    ]  # fmt: skip
    if mode.rate is not None:
        command += ["--rate", str(mode.rate)]
    subprocess.run(
        command, capture_output=True, check=True, cwd=PROJECT_ROOT, timeout=duration + warmup + 120,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )  # fmt: skip
    return LoadResult.from_json(json.loads(out.read_text()))


def shadow_copies(base_url: str) -> float:
    """Completed shadow copies so far, from the gateway's own metrics."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gateway_shadow_requests_total{") and 'outcome="completed"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_shadow", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop requests per second")
    parser.add_argument("--smoke", action="store_true", help="one short round of each, for the test suite")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    rounds, duration = (1, 0.5) if args.smoke else (args.rounds, args.duration)
    warmup = 0.3 if args.smoke else 1.0
    modes = (Mode("closed, 32 connections", 32, None), Mode(f"open, {args.rate:g} req/s", 32, args.rate))
    results: dict[tuple[str, str], list[LoadResult]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repository = work / "models"
        paths = write_repository(repository, [TINY])
        copy = repository / "tiny" / "2"
        copy.mkdir()
        (copy / "model.onnx").write_bytes(paths[TINY.name].read_bytes())
        config = work / "gateway.yaml"
        config.write_text(config_text(repository))
        body = work / "body.json"
        body.write_bytes(build_body([{"name": "input", "shape": [-1, TINY.n_inputs], "datatype": "FP32"}]))
        spec = ServerSpec(
            "gateway",
            (sys.executable, "-m", "gateway", "serve", "--config", str(config), "--host", "{host}", "--port", "{port}",
             "--log-level", "warning", "--drain-delay", "0"),
        )  # fmt: skip
        server = start_server(spec, log_dir=work / "logs", cores=SERVER_CORES)
        try:
            for _ in range(rounds):
                for mode in modes:
                    for route in ROUTES:  # interleaved: a busy moment of the machine hits both routes alike
                        out = work / f"{route}.json"
                        url = f"{server.base_url}/v2/models/{route}/infer"
                        result = measure(url, body, mode, duration, warmup, out)
                        results.setdefault((mode.name, route), []).append(result)
            copies = shadow_copies(server.base_url)
        finally:
            server.stop()
    rows = []
    print("| mode | route | req/s | p50 ms | p99 ms | rounds: req/s (p99 ms) |\n|---|---|---|---|---|---|")
    for mode in modes:
        medians: dict[str, tuple[float, float, float]] = {}
        for route in ROUTES:
            runs = results[(mode.name, route)]
            # Each figure is its own median over the rounds: one busy moment of this shared machine can move a single
            # round's p99 by an order of magnitude.
            figures = (
                statistics.median(r.rps for r in runs),
                statistics.median(r.latency_ms["p50"] for r in runs),
                statistics.median(r.latency_ms["p99"] for r in runs),
            )
            medians[route] = figures
            spread = " / ".join(f"{r.rps:,.0f} ({r.latency_ms['p99']:.1f})" for r in runs)
            print(f"| {mode.name} | {route} | {figures[0]:,.0f} | {figures[1]:.2f} | {figures[2]:.2f} | {spread} |")
            rows.append(
                {
                    "mode": mode.name, "route": route, "rps": figures[0], "p50_ms": figures[1], "p99_ms": figures[2],
                    "result": runs[0].to_json(), "rounds": [r.to_json() for r in runs],
                }
            )  # fmt: skip
        plain, shadowed = medians["plain"], medians["shadowed"]
        print(
            f"| {mode.name} | shadowed / plain | {shadowed[0] / plain[0]:.2f}x | {shadowed[1] / plain[1]:.2f}x | "
            f"{shadowed[2] / plain[2]:.2f}x | |"
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "copies": copies}, indent=2))
    errors = sum(r.errors for runs in results.values() for r in runs)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
