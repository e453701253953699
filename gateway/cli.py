"""`gateway serve | validate | profile`: the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.drift import command as profile_command

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
    p.add_argument("--reload-interval", type=float, default=1.0, help="seconds between config content checks")


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import Settings, create_app
    from gateway.backends.onnx import OnnxOptions
    from gateway.errors import GatewayError
    from gateway.transport import protocol_for

    config = None if args.model_repository else (args.config or default_config())
    settings = Settings(
        config_path=config,
        model_repository=args.model_repository,
        onnx=OnnxOptions(
            intra_op_threads=args.intra_op_threads,
            max_concurrency=args.max_concurrency,
            graph_optimization=args.graph_optimization,
            inline_below_us=args.inline_below_us,
        ),
        reload_interval=args.reload_interval,
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
    logger.info("  %s/v2/health/ready   %s/metrics", base, base)
    uvicorn.run(
        app, host=args.host, port=args.port, loop="uvloop", http=protocol_for(app.state.dataplane),
        log_level=args.log_level,
        access_log=False, lifespan="on", server_header=False,
    )  # fmt: skip
    return 0


def validate(args: argparse.Namespace) -> int:
    """Parse, check and load every model version the config names, exactly as a reload would; non-zero on faults."""
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client import CollectorRegistry

    from gateway.backends.onnx import OnnxOptions, runtime_version
    from gateway.batching import BatchingMetrics
    from gateway.config import load_config
    from gateway.errors import GatewayError
    from gateway.generation import parse_features
    from gateway.loader import VersionLoader
    from gateway.metrics import Metrics
    from gateway.routing import RoutingTable

    try:
        config = load_config(args.path)
        RoutingTable.from_config(config)
        parse_features(config)
        registry = CollectorRegistry()
        metrics = Metrics(registry, build_version=__version__, runtime_version=runtime_version())
        with ThreadPoolExecutor(max_workers=1) as executor:
            loader = VersionLoader(OnnxOptions(), executor, metrics, BatchingMetrics(registry))
            loaded, _ = loader.load_all(config, {}, strict=True)
    except GatewayError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    for (model, version), item in sorted(loaded.items()):
        sig = item.served.backend.signature
        inputs = ", ".join(f"{s.name} {s.describe()}" for s in sig.inputs)
        print(f"ok: {model} version {version}: {inputs}")
    print(f"{args.path}: valid, {len(config.routes)} route(s), {len(loaded)} version(s) loaded")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command")
    _serve_parser(sub)
    v = sub.add_parser("validate", help="validate a config and load its models, as a reload would")
    v.add_argument("path", type=Path)
    p = sub.add_parser("profile", help="build a drift reference profile for a model version from its training data")
    profile_command.add_arguments(p)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command in (None, "serve"):
        if args.command is None:
            args = parser.parse_args(["serve", *(argv or [])])
        return serve(args)
    if args.command == "validate":
        return validate(args)
    if args.command == "profile":
        return profile_command.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
