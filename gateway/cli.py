"""`gateway serve | validate | profile | rollout | rollout-controller`: the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.drift import command as profile_command
from gateway.fleet import command as fleet_command
from gateway.paths import allow
from gateway.rollout import command as rollout_command

if TYPE_CHECKING:
    from gateway.generation import Generation

logger = logging.getLogger("gateway")

DEFAULT_CONFIG = Path("config/gateway.yaml")


def default_config() -> Path:
    """The bundled demo: `config/gateway.yaml` under the working directory, else beside the package (a checkout)."""
    for candidate in (Path.cwd() / DEFAULT_CONFIG, Path(__file__).resolve().parent.parent / DEFAULT_CONFIG):
        if candidate.is_file():
            return candidate
    raise SystemExit(
        f"gateway: no --config or --model-repository given and no {DEFAULT_CONFIG} here or beside the package"
    )


def _allow_path_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-path", type=Path, action="append", default=[], metavar="DIR",
        help="a folder the config's files (golden sets, state files, the prediction log) may be in beyond the"
        " config's folder and the model repository (repeatable; also GATEWAY_ALLOWED_PATHS)",
    )  # fmt: skip


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve models over the Open Inference Protocol (V2 REST)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, help="routing config (YAML); default: the bundled demo config")
    source.add_argument("--model-repository", type=Path, help="serve every model of a Triton-layout repository")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--intra-op-threads", type=int, default=1, help="onnxruntime threads per execution (default 1)")
    p.add_argument("--max-concurrency", type=int, default=2, help="executions at once per model version")
    p.add_argument(
        "--inline-below-us", type=float, default=150.0,
        help="run a request on the event loop when its model is expected to take less (0: always a thread)",
    )  # fmt: skip
    p.add_argument(
        "--graph-optimization", default="all", choices=["disable", "basic", "extended", "all"],
        help="onnxruntime graph optimisation level",
    )  # fmt: skip
    p.add_argument(
        "--max-inflight", type=int, default=1024,
        help="requests admitted at once, all models together; more get 503 before their body is decoded (0: no bound)",
    )  # fmt: skip
    p.add_argument(
        "--max-loop-lag", type=float, default=0.1,
        help="seconds the event loop may run behind (requests unread in sockets) before new ones get 503 (0: never)",
    )  # fmt: skip
    p.add_argument(
        "--max-queue-wait", type=float, default=1.0,
        help="seconds of work a request may find queued ahead of it for its model version, else 503 at once",
    )  # fmt: skip
    p.add_argument(
        "--request-timeout", type=float, default=30.0,
        help="seconds a request may wait for its model (header x-request-timeout-ms overrides), else 504 unrun",
    )  # fmt: skip
    p.add_argument("--reload-interval", type=float, default=1.0, help="seconds between config content checks")
    _allow_path_argument(p)
    p.add_argument(
        "--transport", choices=["direct", "plain"], default="direct",
        help="direct: inference requests answered straight from the HTTP parser (default); plain: everything through"
        " ASGI (also taken by itself when the installed uvicorn lacks what the direct path needs)",
    )  # fmt: skip
    p.add_argument(
        "--keep-alive-timeout", type=float, default=75.0,
        help="seconds an idle connection (between requests, or before its first) is kept; set it above your load"
        " balancer's idle timeout, so the balancer closes first and never sends on a connection as it closes"
        " (default 75, nginx's)",
    )  # fmt: skip
    p.add_argument("--header-timeout", type=float, default=10.0, help="seconds a request's headers may take (408)")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds a whole request may take to arrive (408)")
    p.add_argument("--max-header-bytes", type=int, default=32 * 1024, help="bytes of one request's headers (431)")
    p.add_argument("--max-headers", type=int, default=100, help="headers in one request (431)")
    p.add_argument(
        "--max-connections", type=int, default=None,
        help="open connections and requests at once; past it requests get 503 (default: no limit)",
    )  # fmt: skip
    p.add_argument(
        "--drain-delay", type=float, default=5.0,
        help="seconds to keep accepting after SIGTERM, answering with Connection: close and readiness 503 (default 5)",
    )  # fmt: skip
    p.add_argument(
        "--drain-timeout", type=float, default=30.0,
        help="seconds, after the drain delay, that requests in flight may take to finish (default 30)",
    )  # fmt: skip
    p.add_argument(
        "--admin-port", type=int, default=None,
        help="serve /metrics and /admin/* on this port (with /v2/health/*) and not on the main one (default: the main)",
    )  # fmt: skip
    p.add_argument("--admin-host", default=None, help="the admin port's address (default: --host)")
    p.add_argument(
        "--admin-token-file", type=Path,
        help="file holding the bearer token /admin/* requires (default: the GATEWAY_ADMIN_TOKEN environment variable)",
    )  # fmt: skip


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.admin import is_loopback, load_token
    from gateway.app import Settings, create_app
    from gateway.backends.onnx import OnnxOptions
    from gateway.errors import GatewayError
    from gateway.readlimits import ReadLimits
    from gateway.serving import AdminListener, GatewayServer
    from gateway.transport import protocol_for

    config = None if args.model_repository else (args.config or default_config())
    admin_host = args.admin_host or args.host
    try:
        token = load_token(args.admin_token_file)
    except GatewayError as exc:
        logger.error("cannot start: %s", exc)
        return 2
    settings = Settings(
        config_path=config,
        model_repository=args.model_repository,
        onnx=OnnxOptions(
            intra_op_threads=args.intra_op_threads,
            max_concurrency=args.max_concurrency,
            graph_optimization=args.graph_optimization,
            inline_below_us=args.inline_below_us,
            max_queue_wait=args.max_queue_wait,
            request_timeout=args.request_timeout,
        ),
        max_inflight=args.max_inflight,
        max_loop_lag=args.max_loop_lag,
        reload_interval=args.reload_interval,
        admin_token=token,
        exposed=not is_loopback(admin_host if args.admin_port is not None else args.host),
        admin_apart=args.admin_port is not None,
    )
    try:
        app = create_app(settings)
    except GatewayError as exc:
        logger.error("cannot start: %s", exc)
        return 2
    base = f"http://{args.host}:{args.port}"
    routes = sorted(app.state.dataplane.snapshot.table.routes)
    logger.info("serving %s from %s", ", ".join(routes) or "no models", config or args.model_repository)
    for name in routes:
        logger.info("  %s/v2/models/%s/infer", base, name)
    operations = base if args.admin_port is None else f"http://{admin_host}:{args.admin_port}"
    logger.info("  %s/v2/health/ready   %s/metrics", base, operations)
    limits = ReadLimits(args.header_timeout, args.body_timeout, args.max_header_bytes, args.max_headers)
    protocol = protocol_for(app.state.dataplane, plain=args.transport == "plain", limits=limits)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, loop="uvloop", http=protocol,
        log_level=args.log_level, access_log=False, lifespan="on", server_header=False,
        timeout_graceful_shutdown=max(args.drain_timeout, 0.0), limit_concurrency=args.max_connections,
        timeout_keep_alive=args.keep_alive_timeout,
    )  # fmt: skip
    admin = None
    if args.admin_port is not None:
        admin_protocol = protocol_for(app.state.dataplane, plain=args.transport == "plain", limits=limits, direct=False)
        admin = AdminListener(admin_host, args.admin_port, app.operations, admin_protocol)
    GatewayServer(config, app.state.dataplane, drain_delay=max(args.drain_delay, 0.0), admin=admin).run()
    return 0


def validate(args: argparse.Namespace) -> int:
    """Parse, check and load every model version the config names, exactly as a reload would, then run each rollout's
    pre-traffic validation as the gateway would before the candidate gets traffic; non-zero on any fault or failure."""
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client import CollectorRegistry

    from gateway.backends.onnx import OnnxOptions, runtime_version
    from gateway.batching import BatchingMetrics
    from gateway.config import load_config
    from gateway.errors import GatewayError
    from gateway.generation import Generation, parse_features
    from gateway.loader import VersionLoader
    from gateway.metrics import Metrics
    from gateway.routing import RoutingTable

    as_json: bool = args.json
    try:
        config = load_config(args.path)
        RoutingTable.from_config(config)
        features = parse_features(config)
        registry = CollectorRegistry()
        metrics = Metrics(registry, build_version=__version__, runtime_version=runtime_version())
        with ThreadPoolExecutor(max_workers=1) as executor:
            loader = VersionLoader(OnnxOptions(), executor, metrics, BatchingMetrics(registry))
            loaded, _ = loader.load_all(config, {}, strict=True)
    except GatewayError as exc:
        if as_json:
            print(_json_text({"config": str(args.path), "valid": False, "passed": False, "error": str(exc)}))
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    versions: list[dict[str, Any]] = []
    for (model, version), item in sorted(loaded.items()):
        sig = item.served.backend.signature
        versions.append({"model": model, "version": version, "inputs": {s.name: s.describe() for s in sig.inputs}})
        if not as_json:
            inputs = ", ".join(f"{s.name} {s.describe()}" for s in sig.inputs)
            print(f"ok: {model} version {version}: {inputs}")
    # The same generation a reload would install; validation reads the loaded versions and the features from it.
    generation = Generation(0, config, "", loaded, {}, features)
    routes = {name: _validate_route(generation, name, quiet=as_json) for name in sorted(config.routes)}
    failed = [name for name, outcome in routes.items() if outcome["passed"] is False]
    if as_json:
        document = {"config": str(args.path), "valid": True, "passed": not failed, "error": None}
        print(_json_text({**document, "versions": versions, "routes": routes}))
        return 1 if failed else 0
    checked = sum(outcome["validation"] is not None for outcome in routes.values())
    verdict = f"validation failed on route(s) {', '.join(failed)}" if failed else f"{checked} validation(s) passed"
    print(f"{args.path}: valid, {len(config.routes)} route(s), {len(loaded)} version(s) loaded; {verdict}")
    return 1 if failed else 0


def _validate_route(generation: Generation, name: str, *, quiet: bool) -> dict[str, Any]:
    """Run route `name`'s pre-traffic validation (when its rollout has a validate block), printing each check's line
    and the summary unless `quiet`; the route's outcome as JSON (`passed` is None when there is nothing to validate)."""
    from gateway.rollouts import identity_of, validation_job, validation_report

    def said(text: str) -> None:
        if not quiet:
            print(text)

    settings = generation.features.rollout.get(name)
    if settings is None or settings.validate is None:
        why = "no rollout block" if settings is None else f"the rollout of {settings.candidate} has no validate block"
        said(f"route {name}: no validate block ({why})")
        return {"rollout": settings is not None, "passed": None, "summary": why, "validation": None}
    identity = identity_of(generation, name, settings)
    job = validation_job(generation, name, settings)
    if identity is None or job is None:  # not reached after a strict load_all, which raises first
        summary = "validation failed: the candidate or the baseline is not loaded"
        said(f"route {name}: {summary}")
        return {"rollout": True, "passed": False, "summary": summary, "validation": None}
    outcome: dict[str, Any] = {
        "rollout": True,
        "candidate": {"name": identity.candidate, "version": identity.candidate_version},
        "baseline": {"name": identity.baseline, "version": identity.baseline_version},
    }
    said(f"route {name}: validating {identity.describe()} on {job.settings.golden_set or 'no golden set'}")
    try:
        report = validation_report(job)
    except Exception as exc:  # as in the manager: a crash fails this candidate and the other routes still run
        summary = f"validation failed: {type(exc).__name__}: {exc}"
        said(f"  {summary}")
        return {**outcome, "passed": False, "summary": summary, "validation": None}
    for line in report.lines():
        said(f"  {line}")
    said(f"  {report.summary()}")
    return {**outcome, "passed": report.passed, "summary": report.summary(), "validation": report.to_json()}


def _json_text(document: dict[str, Any]) -> str:
    import orjson

    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command")
    _serve_parser(sub)
    v = sub.add_parser("validate", help="validate a config and load its models, as a reload would")
    v.add_argument("path", type=Path)
    v.add_argument("--json", action="store_true", help="print one JSON document (each route's report) for CI")
    _allow_path_argument(v)
    p = sub.add_parser("profile", help="build a drift reference profile for a model version from its training data")
    profile_command.add_arguments(p)
    r = sub.add_parser("rollout", help="show or steer a running gateway's rollouts (status, pause, resume, ...)")
    rollout_command.add_arguments(r)
    f = sub.add_parser(
        "rollout-controller", help="run a fleet's rollouts: gates from Prometheus, steps published in the routing file"
    )
    fleet_command.add_arguments(f)
    _allow_path_argument(f)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command in (None, "serve"):
        if args.command is None:
            args = parser.parse_args(["serve", *(argv or [])])
        allow(args.allow_path)
        return serve(args)
    if args.command == "validate":
        allow(args.allow_path)
        return validate(args)
    if args.command == "profile":
        return profile_command.run(args)
    if args.command == "rollout":
        return rollout_command.run(args)
    if args.command == "rollout-controller":
        allow(args.allow_path)
        return fleet_command.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
