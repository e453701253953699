"""Serving comparison on loopback: the gateway against the floor, a typical FastAPI endpoint and (optionally) MLServer.

One invocation generates the models, starts each server in turn pinned to one core, drives every cell (model x batch
x connections) from a load generator pinned to another core, and writes JSON and a Markdown table of req/s, p50, p99
and gateway/other ratios to `benchmarks/results/`.

The gateway runs three ways: bare (the repository alone), with dynamic batching on the medium model, and as deployed
(`gateway-deployed`: a drift profile on every version sampled at the default 0.1, the prediction log at 0.1, metrics,
batching on the medium model). Every cell also measures `raw`, a fixed-reply server on bare uvloop protocols: the
most any Python server reaches with this load generator, the physical limit beside every ratio. The batched medium
model is also put over its in-process ceiling (`benchmarks.ceiling`: decode, one batch-32 run and encode, no HTTP),
beside `raw-batching` (`baselines/rawbatch.py`): the ceiling's work behind raw uvloop protocols and real sockets with
nothing else, the most batched serving over HTTP reaches on the machine at hand.

    python -m benchmarks.compare                      # full run: 3 interleaved rounds of 5 s per cell
    python -m benchmarks.compare --smoke              # a few seconds per cell, tiny model, no batching, no MLServer
    python -m benchmarks.compare --with-mlserver      # also MLServer (own virtualenv, created on first use)

A server that fails to start becomes failed rows carrying its error, and the run goes on with the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from benchmarks.loadgen import LoadResult
from benchmarks.models import MODELS, write_profile, write_repository
from benchmarks.payload import build_body
from benchmarks.report import NOISY_BACKGROUND_CPU, BatchCeiling, Ceiling, Cell, Report, Row
from benchmarks.servers import RunningServer, ServerError, ServerSpec, pin_prefix, start_server

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = PROJECT_ROOT / "benchmarks" / "results"
MLSERVER_VENV = PROJECT_ROOT / "benchmarks" / ".venvs" / "mlserver"
SYSTEMS = ("raw", "raw-batching", "floor", "fastapi", "gateway", "gateway-batching", "gateway-deployed")
MLSERVER_SYSTEMS = ("mlserver", "mlserver-default")


@dataclass(frozen=True, slots=True)
class Plan:
    cells: tuple[Cell, ...]
    systems: tuple[str, ...]
    duration_s: float
    warmup_s: float
    engine: str
    server_cores: tuple[int, ...]
    loadgen_cores: tuple[int, ...]
    ceiling: bool
    start_timeout_s: float
    retries: int = 0  # extra attempts at a cell that other processes disturbed
    rounds: int = 1  # measurements of every cell per system, interleaved; the median one is reported
    settle_s: float = 120.0  # longest wait for the machine to go quiet once every server is up
    mlserver_python: Path | None = None  # the MLServer virtualenv's python, when MLServer is compared


def _machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot, from /proc/stat (0.0 where it is absent)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    busy = sum(values[:8]) - idle  # guest time is already inside user
    return busy / os.sysconf("SC_CLK_TCK")


BATCHING = {"max_batch_size": 32, "max_queue_delay_us": 500, "max_queue_size": 1024}


def gateway_config(path: Path, repository: Path) -> Path:
    """The routing file that turns on dynamic batching for the medium model."""
    config = {
        "model_repository": str(repository.resolve()),
        "routes": {"medium": {"versions": {"v1": 1}, "split": {"weights": {"v1": 100}}, "batching": BATCHING}},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def deployed_config(path: Path, repository: Path, models: Sequence[str]) -> Path:
    """The gateway as users run it: `repository`'s versions carry drift profiles (sampled at the default rate, 0.1,
    stated here so the file says it), the prediction log keeps 0.1 of the requests, and the medium model batches."""
    routes: dict[str, dict[str, object]] = {}
    for model in models:
        route: dict[str, object] = {"versions": {"v1": 1}, "split": {"weights": {"v1": 100}}}
        route["drift"] = {"sample_rate": 0.1}
        if model == "medium":
            route["batching"] = BATCHING
        routes[model] = route
    config = {
        "model_repository": str(repository.resolve()),
        "routes": routes,
        "prediction_log": {"path": str((path.parent / "predictions.jsonl").resolve()), "sample_rate": 0.1},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def deployed_repository(directory: Path, models: Sequence[str]) -> Path:
    """The benchmark models again, each with a drift profile beside it (the bare gateway's repository has none)."""
    for name, model in write_repository(directory, [MODELS[m] for m in models]).items():
        write_profile(model, MODELS[name])
    return directory


def server_specs(
    repository: Path,
    work: Path,
    start_timeout_s: float,
    models: Sequence[str] = ("tiny", "medium"),
    *,
    deployed: bool = False,
) -> dict[str, ServerSpec]:
    """Every system's server; `deployed` also writes the as-deployed gateway's repository (with drift profiles) and
    routing file for `models`."""
    python = sys.executable
    hostport = ("--host", "{host}", "--port", "{port}")
    config = gateway_config(work / "gateway-batching.yaml", repository)
    env = (("PYTHONPATH", str(PROJECT_ROOT)),)
    quiet = ("--log-level", "warning", "--drain-delay", "0")  # no per-request logging; stop at once when done
    specs = [
        ServerSpec("raw", (python, "-m", "benchmarks.baselines.rawhttp", *hostport), env=env, cwd=PROJECT_ROOT),
        ServerSpec(
            "raw-batching",
            (python, "-m", "benchmarks.baselines.rawbatch", "--model-repository", str(repository), *hostport),
            env=env,
            cwd=PROJECT_ROOT,
            models=frozenset({"medium"}),
        ),
        ServerSpec("floor", (python, "-m", "benchmarks.baselines.floor", *hostport), env=env, cwd=PROJECT_ROOT),
        ServerSpec(
            "fastapi",
            (python, "-m", "benchmarks.baselines.fastapi_onnx", "--model-repository", str(repository), *hostport),
            env=env,
            cwd=PROJECT_ROOT,
        ),
        ServerSpec(
            "gateway",
            (python, "-m", "gateway", "serve", "--model-repository", str(repository), *hostport, *quiet),
            env=env,
            cwd=PROJECT_ROOT,
        ),
        ServerSpec(
            "gateway-batching",
            (python, "-m", "gateway", "serve", "--config", str(config), *hostport, *quiet),
            env=env,
            cwd=PROJECT_ROOT,
            models=frozenset({"medium"}),
        ),
        ServerSpec(
            "gateway-deployed",
            (python, "-m", "gateway", "serve", "--config", str(work / "gateway-deployed.yaml"), *hostport, *quiet),
            env=env,
            cwd=PROJECT_ROOT,
        ),
    ]
    if deployed:
        deployed_config(work / "gateway-deployed.yaml", deployed_repository(work / "models-deployed", models), models)
    return {s.name: ServerSpec(s.name, s.command, s.ready_path, s.env, s.cwd, start_timeout_s, s.models) for s in specs}


def run_loadgen(
    url: str, body: Path, connections: int, plan: Plan, out: Path, *, engine: str | None = None
) -> tuple[LoadResult, float]:
    """One load-generator process pinned to the load-generator cores; returns its result and total CPU seconds."""
    command = pin_prefix(plan.loadgen_cores) + [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        url,
        "--body",
        str(body),
        "-c",
        str(connections),
        "-d",
        str(plan.duration_s),
        "--warmup",
        str(plan.warmup_s),
        "--engine",
        engine or plan.engine,
        "--progress",
        "0",
        "--json",
        str(out),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        check=False,
        timeout=plan.duration_s + plan.warmup_s + 120,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError((done.stderr or done.stdout).strip()[-1000:] or f"loadgen exited {done.returncode}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return LoadResult.from_json(json.loads(out.read_text())), cpu


def _measure(server: RunningServer, cell: Cell, body: Path, plan: Plan, out: Path) -> Row:
    url = f"{server.base_url}/v2/models/{cell.model}/infer"
    cpu0, busy0, t0 = server.cpu_seconds(), _machine_busy_seconds(), time.perf_counter()
    try:
        result, loadgen_cpu = run_loadgen(url, body, cell.connections, plan, out)
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        return Row(server.spec.name, cell, None, f"load generator: {exc}")
    wall = time.perf_counter() - t0
    server_cpu = server.cpu_seconds() - cpu0
    other = max(0.0, _machine_busy_seconds() - busy0 - server_cpu - loadgen_cpu)
    error = None
    if result.errors:
        error = f"{result.errors} errors: {result.statuses}"
    if server.process.poll() is not None:
        error = f"server exited with {server.process.returncode}: {server.log_tail(500)}"
    return Row(server.spec.name, cell, result, error, server_cpu / wall, other / wall)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _applies(spec: ServerSpec, cell: Cell) -> bool:
    return spec.models is None or cell.model in spec.models


def _measure_steadily(server: RunningServer, cell: Cell, body: Path, plan: Plan, out: Path) -> Row:
    """Measure; while other processes disturbed the cell, measure again (up to `plan.retries` times), keep the
    least disturbed attempt. A shared machine otherwise decides the ratios."""
    best = _measure(server, cell, body, plan, out)
    for _ in range(plan.retries):
        if best.result is None or best.background_cpu <= NOISY_BACKGROUND_CPU:
            break
        _log(f"[{server.spec.name}] {cell.label()}: others used {best.background_cpu:.0%} cpu, measuring again")
        again = _measure(server, cell, body, plan, out)
        if again.result is not None and again.background_cpu < best.background_cpu:
            best = again
    return best


def _log_row(row: Row) -> None:
    if row.result is None:
        _log(f"[{row.system}] {row.cell.label()}: failed: {row.error}")
        return
    lat = row.result.latency_ms
    suffix = f" ({row.error})" if row.error else ""
    _log(
        f"[{row.system}] {row.cell.label()}: {row.rps:,.0f} req/s, p50 {lat['p50']:.2f} ms, "
        f"p99 {lat['p99']:.2f} ms, server cpu {row.server_cpu:.0%}, other cpu {row.background_cpu:.0%}{suffix}"
    )


def run_systems(specs: Sequence[ServerSpec], bodies: dict[tuple[str, int], Path], plan: Plan, work: Path) -> list[Row]:
    """Start every system (idle ones cost nothing on their core), then measure cell by cell, each system in turn,
    `plan.rounds` times over; per system and cell the round with the median req/s is reported, with all of them.

    Interleaving puts the systems' measurements of one cell minutes apart at most, so a change in what else runs on
    the machine moves all of them alike and the ratios, which are what the comparison is about, hold up. Rounds
    take the rest: on a shared virtual machine one 10 s measurement can be 15 % off the next, and the median of
    three interleaved ones is not moved by one slow spell.
    """
    rows: list[Row] = []
    servers: dict[str, RunningServer] = {}
    try:
        for spec in specs:
            cells = [c for c in plan.cells if _applies(spec, c)]
            if not cells:
                continue
            _log(f"[{spec.name}] starting: {' '.join(spec.command)}")
            try:
                servers[spec.name] = start_server(spec, log_dir=work / "logs", cores=plan.server_cores)
            except ServerError as exc:
                _log(f"[{spec.name}] failed to start: {' '.join(str(exc).split())[:300]}")
                rows += [Row(spec.name, cell, None, f"server failed to start: {exc}") for cell in cells]
        _settle(deadline_s=plan.settle_s)
        for cell in plan.cells:
            attempts: dict[str, list[Row]] = {name: [] for name in servers}
            for round_ in range(plan.rounds):
                for name, server in servers.items():
                    if not _applies(server.spec, cell) or (attempts[name] and attempts[name][-1].result is None):
                        continue  # a failed system is not measured again
                    row = _attempt(server, cell, bodies[(cell.model, cell.batch)], plan, work, round_)
                    attempts[name].append(row)
                    _log_row(row)
            rows += [_median(found) for found in attempts.values() if found]
    finally:
        for server in servers.values():
            server.stop()
    order = {name: i for i, name in enumerate(s.name for s in specs)}
    return sorted(rows, key=lambda r: (plan.cells.index(r.cell), order[r.system]))


def _settle(quiet: float = 0.1, seconds: float = 2.0, deadline_s: float = 120.0) -> None:
    """Wait until the machine is quiet (below `quiet` of a core for `seconds`): servers that report ready may still
    be busy (MLServer's workers load their models after it answers), and would disturb the first measurements."""
    deadline = time.monotonic() + deadline_s
    calm_since = time.monotonic()
    while time.monotonic() < deadline:
        busy0, t0 = _machine_busy_seconds(), time.monotonic()
        time.sleep(0.5)
        load = (_machine_busy_seconds() - busy0) / (time.monotonic() - t0)
        if load > quiet:
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= seconds:
            return
    _log(f"the machine did not go quiet within {deadline_s:g} s; measuring anyway")


def _attempt(server: RunningServer, cell: Cell, body: Path, plan: Plan, work: Path, round_: int) -> Row:
    name = server.spec.name
    if server.process.poll() is not None:
        return Row(name, cell, None, f"server exited with {server.process.returncode}: {server.log_tail(500)}")
    suffix = f"-r{round_ + 1}" if plan.rounds > 1 else ""
    out = work / f"{name}-{cell.model}-b{cell.batch}-c{cell.connections}{suffix}.json"
    return _measure_steadily(server, cell, body, plan, out)


def _median(attempts: Sequence[Row]) -> Row:
    """The attempt with the median req/s (the lower middle one of an even number), carrying every round's req/s;
    a failed attempt is the answer, since it is the last one made."""
    if attempts[-1].result is None:
        return attempts[-1]
    ranked = sorted(attempts, key=lambda r: r.rps)
    return dataclasses.replace(ranked[(len(ranked) - 1) // 2], rounds=tuple(r.rps for r in attempts))


def batch_ceiling(work: Path, body: Path, plan: Plan) -> float | None:
    """The medium model's in-process rows/s at the batcher's batch size, pinned to the server's cores (None, logged,
    when it fails)."""
    command = pin_prefix(plan.server_cores) + [
        sys.executable, "-m", "benchmarks.ceiling", str(work / "models" / "medium" / "1" / "model.onnx"), str(body),
        "--batch", str(BATCHING["max_batch_size"]), "--seconds", str(max(1.0, plan.duration_s / 2)),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=300, check=False)
    if done.returncode != 0:
        _log(f"[ceiling] in-process batch ceiling failed: {(done.stderr or done.stdout).strip()[-300:]}")
        return None
    rows: float = json.loads(done.stdout.strip().splitlines()[-1])["rows_per_s"]
    _log(f"[ceiling] medium, in process, batch {BATCHING['max_batch_size']}: {rows:,.0f} rows/s")
    return rows


def measure_ceiling(body: Path, plan: Plan, specs: dict[str, ServerSpec], work: Path) -> Ceiling:
    """Each engine against the raw fixed-reply server (the load generator's own ceiling) and against the floor."""
    raw = ServerSpec(
        "rawhttp",
        (sys.executable, "-m", "benchmarks.baselines.rawhttp", "--host", "{host}", "--port", "{port}"),
        env=(("PYTHONPATH", str(PROJECT_ROOT)),),
        cwd=PROJECT_ROOT,
    )
    engines = ["python"] + (["wrk"] if shutil.which("wrk") else [])
    rows: list[tuple[str, str, LoadResult | None, str | None]] = []
    for spec in (raw, specs["floor"]):
        try:
            server = start_server(spec, log_dir=work / "logs", cores=plan.server_cores)
        except ServerError as exc:
            rows += [(spec.name, e, None, str(exc)[:200]) for e in engines]
            continue
        try:
            for engine in engines:
                url = f"{server.base_url}/v2/models/tiny/infer"
                try:
                    result, _ = run_loadgen(
                        url, body, 32, plan, work / f"ceiling-{spec.name}-{engine}.json", engine=engine
                    )
                    rows.append((spec.name, engine, result, None))
                    _log(
                        f"[ceiling] {spec.name} / {engine}: {result.rps:,.0f} req/s, "
                        f"load generator cpu {result.loadgen_cpu:.0%}"
                    )
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    rows.append((spec.name, engine, None, str(exc)[:200]))
        finally:
            server.stop()
    return Ceiling(tuple(rows))


def run(plan: Plan, out_dir: Path, *, stem: str, notes: Sequence[str] = ()) -> Report:
    out_dir.mkdir(parents=True, exist_ok=True)
    # Models, bodies, server logs and per-cell JSON of the latest run, kept for inspection, replaced on the next.
    work = out_dir / f"{stem}-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    repository = work / "models"
    write_repository(repository, [MODELS[m] for m in sorted({c.model for c in plan.cells})])
    bodies: dict[tuple[str, int], Path] = {}
    for cell in plan.cells:
        key = (cell.model, cell.batch)
        if key not in bodies:
            spec = MODELS[cell.model]
            path = work / f"body-{cell.model}-b{cell.batch}.json"
            path.write_bytes(
                build_body(
                    [{"name": "input", "datatype": "FP32", "shape": [-1, spec.n_inputs]}], batch=cell.batch, seed=7
                )
            )
            bodies[key] = path
    models = sorted({c.model for c in plan.cells})
    specs = server_specs(repository, work, plan.start_timeout_s, models, deployed="gateway-deployed" in plan.systems)
    if plan.mlserver_python is not None:
        from benchmarks.mlserver_env import mlserver_specs

        specs.update({s.name: s for s in mlserver_specs(plan.mlserver_python, repository, work, plan.start_timeout_s)})
    started = datetime.now(UTC)
    batched = [c for c in plan.cells if c.model == "medium" and c.batch == 1]
    wants_ceiling = bool(batched) and bool({"gateway-batching", "gateway-deployed"} & set(plan.systems))
    # Before and after the cells, the larger kept: a ceiling the machine's noise lowered would flatter the ratio.
    ceilings = [batch_ceiling(work, bodies[("medium", 1)], plan)] if wants_ceiling else []
    rows = run_systems([specs[name] for name in plan.systems], bodies, plan, work)
    if wants_ceiling:
        ceilings.append(batch_ceiling(work, bodies[("medium", 1)], plan))
    ceiling = None
    if plan.ceiling:
        tiny_body = bodies.get(("tiny", 1)) or work / "body-tiny-b1.json"
        if not tiny_body.exists():
            tiny_body.write_bytes(build_body([{"name": "input", "datatype": "FP32", "shape": [-1, 16]}], seed=7))
        ceiling = measure_ceiling(tiny_body, plan, specs, work)
    pinned = bool(pin_prefix(plan.server_cores)) and bool(pin_prefix(plan.loadgen_cores))
    settings = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}",
        "python": platform.python_version(),
        "engine": plan.engine,
        "duration per cell": f"{plan.rounds} interleaved round(s) of {plan.duration_s:g} s after {plan.warmup_s:g} s"
        " warm-up; each row is a system's median round",
        "pinning": f"server cores {list(plan.server_cores)}, load generator cores {list(plan.loadgen_cores)}"
        if pinned
        else "none (taskset missing or cores unavailable)",
        "work dir": str(work),
    }
    measured = tuple(c for c in ceilings if c is not None)
    batch = BatchCeiling("medium", BATCHING["max_batch_size"], measured) if measured else None
    report = Report("Serving comparison", settings, tuple(rows), ceiling, tuple(notes), batch)
    (out_dir / f"{stem}.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(report.markdown())
    return report


def _cores(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split(",") if c.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--smoke", action="store_true", help="seconds per cell, tiny model, raw+floor+fastapi+gateway(+deployed)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"output directory (default {RESULTS_DIR})")
    parser.add_argument("--duration", type=float, help="measured seconds per round of a cell (default 5; smoke 1)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per round of a cell (default 1; smoke 0.25)")
    parser.add_argument(
        "--engine",
        choices=["python", "wrk", "auto"],
        default="python",
        help="load generator engine for the cells (default python; auto = wrk where installed)",
    )
    parser.add_argument("--systems", nargs="+", help=f"subset of: {' '.join(SYSTEMS + MLSERVER_SYSTEMS)}")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS))
    parser.add_argument("--batches", nargs="+", type=int)
    parser.add_argument("--connections", nargs="+", type=int)
    parser.add_argument(
        "--with-mlserver",
        action="store_true",
        help=f"also MLServer, in-process and default workers (virtualenv at {MLSERVER_VENV})",
    )
    parser.add_argument("--no-ceiling", action="store_true", help="skip the load generator ceiling measurement")
    parser.add_argument("--server-cores", type=_cores, default=(0,), help="cores for the server (default 0)")
    parser.add_argument("--loadgen-cores", type=_cores, default=(1,), help="cores for the load generator (default 1)")
    parser.add_argument(
        "--retries", type=int, help="extra attempts at a cell disturbed by other processes (default 1; smoke 0)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="measurements per cell and system, interleaved; the median is kept (default 3; smoke 1)",
    )
    parser.add_argument("--start-timeout", type=float, default=90.0, help="seconds a server may take to be ready")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    smoke = args.smoke
    models = args.models or (["tiny"] if smoke else ["tiny", "medium"])
    batches = args.batches or [1, 32]
    connections = args.connections or [1, 32]
    systems = list(args.systems or (["raw", "floor", "fastapi", "gateway", "gateway-deployed"] if smoke else SYSTEMS))
    notes: list[str] = []
    mlserver_python = None
    if args.with_mlserver:
        from benchmarks.mlserver_env import MlserverSetupError, ensure_venv

        try:
            mlserver_python = ensure_venv(MLSERVER_VENV, log=_log)
        except MlserverSetupError as exc:
            notes.append(f"MLServer skipped: {' '.join(str(exc).split())[:300]}")
            _log(f"MLServer skipped: {exc}")
        else:
            if not args.systems:
                systems += MLSERVER_SYSTEMS
    known = set(SYSTEMS) | (set(MLSERVER_SYSTEMS) if mlserver_python else set())
    unknown = [s for s in systems if s not in known]
    if unknown:
        raise SystemExit(f"unknown or unavailable systems: {unknown} (MLServer needs --with-mlserver)")
    plan = Plan(
        cells=tuple(Cell(m, b, c) for m, b, c in itertools.product(models, batches, connections)),
        systems=tuple(systems),
        duration_s=args.duration if args.duration is not None else (1.0 if smoke else 5.0),
        warmup_s=args.warmup if args.warmup is not None else (0.25 if smoke else 1.0),
        engine=args.engine,
        server_cores=args.server_cores,
        loadgen_cores=args.loadgen_cores,
        ceiling=not (smoke or args.no_ceiling),
        start_timeout_s=args.start_timeout,
        retries=args.retries if args.retries is not None else (0 if smoke else 1),
        rounds=max(1, args.rounds if args.rounds is not None else (1 if smoke else 3)),
        settle_s=10.0 if smoke else 120.0,
        mlserver_python=mlserver_python,
    )
    report = run(plan, args.out, stem="compare-smoke" if smoke else "compare", notes=notes)
    print(report.markdown())
    print(f"written: {args.out / ('compare-smoke' if smoke else 'compare')}.{{json,md}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
