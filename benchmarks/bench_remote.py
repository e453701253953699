"""What a remote version costs: the same requests sent to a V2 server directly and through the gateway in front of
it (a route whose only version is that server), in one run, interleaved rounds, on loopback.

    python -m benchmarks.bench_remote                      # the remote is another gateway serving the tiny model
    python -m benchmarks.bench_remote --remote kserve      # a KServe model server (its own virtualenv)
    python -m benchmarks.bench_remote -d 5 --rounds 3 -c 16 --json out.json

The remote server is pinned to core 0 and the front gateway to core 1 (where taskset exists); the load generator
is not pinned. Each round measures both paths for `-d` seconds, closed loop; each row is the median round. The
overhead per request is reported two ways: the latency added at the median (through p50 - direct p50) and the
gateway's own CPU time per forwarded request (its process's CPU seconds over the requests it answered).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from benchmarks.loadgen import LoadSpec, run_load
from benchmarks.models import TINY, write_repository
from benchmarks.servers import RunningServer, ServerSpec, start_server


@dataclass(frozen=True, slots=True)
class Round:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float | None  # the gateway's CPU per answered request (through only)


def _remote_spec(kind: str, work: Path) -> tuple[ServerSpec, str, bytes]:
    """The remote server, its model's name and a request for it."""
    if kind == "kserve":
        from benchmarks.kserve_env import SERVER, ensure_venv

        python = ensure_venv()
        spec = ServerSpec("kserve", (str(python), str(SERVER), "{port}"), ready_path="/v2/models/affine/ready")
        body = orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
        return spec, "affine", body
    repository = work / "models"
    write_repository(repository, (TINY,))
    command = (sys.executable, "-m", "gateway", "serve", "--model-repository", str(repository), "--port", "{port}")
    data = [round(0.1 * i - 0.8, 2) for i in range(TINY.n_inputs)]
    body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, TINY.n_inputs], "datatype": "FP32", "data": data}]})
    return ServerSpec("remote-gateway", command), TINY.name, body


def _measure(server: RunningServer | None, url: str, body: bytes, args: argparse.Namespace) -> Round:
    before = server.cpu_seconds() if server is not None else 0.0
    result = run_load(LoadSpec(url=url, body=body, connections=args.connections, duration_s=args.duration,
                               warmup_s=args.warmup))  # fmt: skip
    cpu = None
    if server is not None and result.requests:
        # CPU over the whole load (warm-up included) per request answered in it, approximated by the measured rate.
        total = result.rps * (args.duration + args.warmup)
        cpu = (server.cpu_seconds() - before) / total * 1e6 if total else None
    return Round(result.rps, result.latency_ms["p50"], result.latency_ms["p99"], result.errors, cpu)


def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        remote_spec, model, body = _remote_spec(args.remote, work)
        remote = start_server(remote_spec, log_dir=work, cores=[0])
        try:
            config = work / "front.yaml"
            pool = max(100, args.connections)
            version = f'{{endpoint: "{remote.base_url}", model: {model}, pool: {{max_connections: {pool}}}}}'
            config.write_text(f"model_repository: {work}\nroutes:\n  bench:\n    versions:\n      remote: {version}\n")
            front_spec = ServerSpec(
                "gateway-front",
                (sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", "{port}",
                 "--max-loop-lag", "0"),
            )  # fmt: skip
            front = start_server(front_spec, log_dir=work, cores=[1])
            try:
                direct: list[Round] = []
                through: list[Round] = []
                for _ in range(args.rounds):
                    direct.append(_measure(None, f"{remote.base_url}/v2/models/{model}/infer", body, args))
                    through.append(_measure(front, f"{front.base_url}/v2/models/bench/infer", body, args))
            finally:
                front.stop()
        finally:
            remote.stop()
    return {"remote": args.remote, "connections": args.connections, "direct": _median(direct),
            "through": _median(through)}  # fmt: skip


def _median(rounds: Sequence[Round]) -> dict[str, float | None]:
    """The median round by req/s, as measured (its latencies are that round's)."""
    chosen = sorted(rounds, key=lambda r: r.rps)[len(rounds) // 2]
    cpus = [r.cpu_us for r in rounds if r.cpu_us is not None]
    return {"rps": chosen.rps, "p50_ms": chosen.p50_ms, "p99_ms": chosen.p99_ms, "errors": float(chosen.errors),
            "cpu_us": statistics.median(cpus) if cpus else None}  # fmt: skip


def table(result: dict[str, object]) -> str:
    direct, through = result["direct"], result["through"]
    assert isinstance(direct, dict) and isinstance(through, dict)
    lines = [
        f"remote: {result['remote']}, {result['connections']} connections, closed loop",
        "| path | req/s | p50 ms | p99 ms | errors | gateway CPU us/request |",
        "|---|---|---|---|---|---|",
        f"| direct | {direct['rps']:,.0f} | {direct['p50_ms']:.2f} | {direct['p99_ms']:.2f} |"
        f" {direct['errors']:.0f} | - |",
        f"| through the gateway | {through['rps']:,.0f} | {through['p50_ms']:.2f} | {through['p99_ms']:.2f} |"
        f" {through['errors']:.0f} | {through['cpu_us']:.0f} |",
        f"overhead per request: p50 +{through['p50_ms'] - direct['p50_ms']:.2f} ms, p99 +"
        f"{through['p99_ms'] - direct['p99_ms']:.2f} ms; req/s x{through['rps'] / direct['rps']:.2f}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--remote", choices=("gateway", "kserve"), default="gateway")
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args)
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
