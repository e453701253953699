"""Composition root: builds every part from settings, synchronously, so a bad start-up config fails fast."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway import __version__
from gateway.admin import METRICS, TOKEN_ENV, AdminGuard, Refusal, operational
from gateway.admission import LagMonitor
from gateway.backends.onnx import OnnxOptions, runtime_version
from gateway.batching import BatchingMetrics
from gateway.config import GatewayConfig
from gateway.dataplane import DataPlane
from gateway.drift.monitor import DriftMonitor
from gateway.drift.sampler import DriftSampler
from gateway.endpoints import (
    JSON,
    feedback_reply,
    gateway_error,
    http_error,
    infer,
    infer_target,
    internal_error,
    method_not_allowed,
    read_body_within,
    refuse,
    v2_routes,
)
from gateway.errors import ConfigError, GatewayError, ProtocolError, UnknownModelError
from gateway.experiment.collector import ExperimentCollector
from gateway.experiment.feedback import route_header_version
from gateway.experiment.hub import Experiments
from gateway.loader import VersionLoader
from gateway.metrics import Metrics
from gateway.monitoring import DriftRegistry
from gateway.paths import check_contained
from gateway.predlog import PredictionLog, PredictionLogMetrics, parse_prediction_log
from gateway.protocol import strict_float_casts
from gateway.publisher import Publisher
from gateway.reloader import Reloader
from gateway.remote.registry import EndpointRegistry
from gateway.rollout.collector import RolloutCollector
from gateway.rollout.controller import ACTIONS
from gateway.rollouts import RolloutManager, validate_job
from gateway.shadow.runner import ShadowHub
from gateway.webhook import Webhook

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Settings:
    """Process settings (the routing itself lives in the YAML config). Exactly one of the two sources is set."""

    config_path: Path | None = None
    model_repository: Path | None = None
    onnx: OnnxOptions = field(default_factory=OnnxOptions)
    reload_interval: float = 1.0  # seconds between content checks of the config file
    watch: bool = True
    # Seconds the drift worker rests between steps (unless a full batch waits). A step has a fixed cost of about
    # 0.5 ms (numpy calls per feature) and 1 us a row: at 0.05 s it took 1 % of a core at 600 sampled rows/s.
    drift_interval: float = 0.25
    drift_buffer: int = 10_000  # sampled requests waiting for the drift worker; more are dropped and counted
    retire_grace: float = 30.0  # seconds a retired version's series stay, so its last requests are counted
    rollout_tick: float = 0.1  # seconds between looks at the rollouts (each evaluates its gates every `interval`)
    admin_token: bytes | None = field(default=None, repr=False)  # bearer token /admin/* requires (None: none)
    exposed: bool = False  # admin calls reachable beyond loopback: without a token, admin changes are refused
    admin_apart: bool = False  # metrics and admin calls have their own listener (`--admin-port`), not the main one
    max_inflight: int = 0  # requests admitted at once (gateway/admission.py); 0: no bound
    max_loop_lag: float = 0.0  # seconds the loop may lag before new requests are refused; 0: never


def build_predlog(
    config: GatewayConfig, settings: Settings, registry: CollectorRegistry, rng: random.Random
) -> PredictionLog | None:
    """The prediction log the config asks for (read at start; a reload does not move it), or None."""
    try:
        parsed = parse_prediction_log({"prediction_log": config.prediction_log})
    except ConfigError as exc:
        raise ConfigError(f"{config.source}: {exc}") from exc
    if parsed is None:
        return None
    # A relative path is relative to the config file, like model_repository.
    base = settings.config_path.parent if settings.config_path is not None else Path.cwd()
    parsed = dataclasses.replace(parsed, path=base / parsed.path)
    if settings.config_path is not None:  # the log is written: it stays where the operator allows (gateway.paths)
        try:
            check_contained(
                parsed.path, "prediction_log.path", config_dir=config.base_dir, repository=config.model_repository
            )
        except ConfigError as exc:
            raise ConfigError(f"{config.source}: {exc}") from exc
    return PredictionLog(parsed, metrics=PredictionLogMetrics(registry), random=rng.random)


def _report_failure(task: asyncio.Task[object]) -> None:
    """A background task (watcher, drift worker, log writer) that dies must say so, not vanish."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task %s stopped: %r", task.get_name(), task.exception(), exc_info=task.exception())


class GatewayApp:
    """The ASGI app: inference requests go straight to their handler (the hot path), everything else to Starlette.
    With an admin listener (`admin_apart`), metrics and admin calls are served there (`operations`) and not here."""

    def __init__(self, app: Starlette, dataplane: DataPlane, guard: AdminGuard, *, admin_apart: bool = False) -> None:
        self.app = app
        self.state = app.state  # dataplane, reloader, metrics, registry: what tests and handlers read
        self._dataplane = dataplane
        self._guard = guard
        self._admin_apart = admin_apart

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            target = infer_target(path)
            if target is not None:
                if scope["method"] != "POST":
                    return await method_not_allowed(send, "POST")
                return await infer(self._dataplane, scope, receive, send, *target)
            if operational(path):
                if self._admin_apart:
                    return await refuse(send, _NOT_HERE)
                return await self._operate(scope, receive, send)
        await self.app(scope, receive, send)

    async def operations(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The admin listener's app: metrics, admin calls (behind the same guard) and health; nothing else."""
        if scope["type"] == "http":
            path = scope["path"]
            if operational(path):
                return await self._operate(scope, receive, send)
            if not path.startswith("/v2/health/"):
                return await refuse(send, _NOT_OPERATIONS)
        await self.app(scope, receive, send)

    async def _operate(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != METRICS:
            refusal = self._guard.check(scope["method"], scope["headers"])
            if refusal is not None:
                return await refuse(send, refusal)
        await self.app(scope, receive, send)


_NOT_HERE = Refusal(404, "not found: metrics and admin calls are served on the admin port", challenge=False)
_NOT_OPERATIONS = Refusal(404, "not found: the admin port serves /metrics, /admin/* and /v2/health/*", challenge=False)


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    seed: int | None = None,
    clock: Callable[[], float] = time.time,
) -> GatewayApp:
    """Build the whole gateway. `seed` fixes every random draw (routing, drift and log sampling) and `clock` is the
    rollouts' time (tests fake both)."""
    registry = registry if registry is not None else CollectorRegistry()
    strict_float_casts()
    rng = random.Random(seed)
    metrics = Metrics(registry, build_version=__version__, runtime_version=runtime_version())
    executor = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="onnx")
    remotes = EndpointRegistry(registry, retire_grace=settings.retire_grace)
    loader = VersionLoader(settings.onnx, executor, metrics, BatchingMetrics(registry), remotes)
    http = httpx.AsyncClient(timeout=10.0)
    sampler = DriftSampler(capacity=settings.drift_buffer, rng=random.Random(rng.random()))
    webhook = Webhook(http)
    monitor = DriftMonitor(sampler, registry, webhook=webhook)
    drift = DriftRegistry(monitor)
    shadows = ShadowHub(registry, sampler, random=random.Random(rng.random()).random)
    quality_webhook = Webhook(http)
    experiments = Experiments(quality_webhook, clock=clock)
    registry.register(ExperimentCollector(experiments))
    rollout_webhook = Webhook(http)
    rollouts = RolloutManager(
        experiments=experiments,
        validator=validate_job,
        clock=clock,
        monitor=monitor,
        webhook=rollout_webhook,
        random=random.Random(rng.random()).random,
    )
    registry.register(RolloutCollector(rollouts))
    publisher = Publisher(metrics, shadows, experiments)
    publisher.planner = rollouts
    reloader = Reloader(
        loader,
        metrics,
        config_path=settings.config_path,
        model_repository=settings.model_repository,
        publisher=publisher,
        on_swap=[drift.sync, rollouts.sync, lambda generation, _: remotes.sync(generation.config)],
        retire_grace=settings.retire_grace,
    )
    snapshot = reloader.start()
    config = reloader.current.config
    predlog = build_predlog(config, settings, registry, random.Random(rng.random()))
    draw = random.Random(rng.random()).random
    dataplane = DataPlane(
        snapshot, metrics, draw=draw, sampler=sampler, predlog=predlog, max_inflight=settings.max_inflight
    )
    reloader.attach(dataplane)
    rollouts.attach(reloader.republish)
    reloader.republish()  # the rollouts synced after the first snapshot was built: wire their taps in

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def reload_endpoint(request: Request) -> Response:
        outcome = await reloader.check_once(force=True)
        status = 422 if outcome == "rejected" else 200
        return JSON({"outcome": outcome, "generation": reloader.current.number}, status_code=status)

    async def drift_endpoint(request: Request) -> Response:
        return JSON(monitor.snapshot_json())

    async def rollouts_endpoint(request: Request) -> Response:
        return JSON(rollouts.status())

    async def rollout_endpoint(request: Request) -> Response:
        return JSON(rollouts.status_of(rollouts.controller(request.path_params["route"])))

    async def feedback_endpoint(request: Request) -> Response:
        route = request.path_params["model"]
        if route not in dataplane.snapshot.table.routes:
            raise UnknownModelError(f"unknown model '{route}'")
        experiments.require(route)  # before the body is read
        body = await read_body_within(request, dataplane.snapshot.max_body_bytes)
        version = route_header_version(request.headers.get("x-gateway-route"))
        judged, batch = await experiments.receive(route, body, header_version=version)
        return feedback_reply(judged, batch)

    async def experiments_endpoint(request: Request) -> Response:
        return JSON(experiments.report())

    async def rollout_action_endpoint(request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ACTIONS:
            raise ProtocolError(f"unknown rollout action '{action}' (actions: {', '.join(ACTIONS)})")
        return JSON(rollouts.act(request.path_params["route"], action))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks: set[asyncio.Task[object]] = set()
        loop = asyncio.get_running_loop()

        def spawn(coro: Coroutine[object, None, object], name: str) -> None:
            task = asyncio.create_task(coro, name=name)
            tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(tasks.discard)
            task.add_done_callback(_report_failure)

        spawn(monitor.run(settings.drift_interval), "drift-monitor")
        spawn(remotes.run(), "remote-health")
        if settings.max_loop_lag > 0:
            spawn(LagMonitor(dataplane, settings.max_loop_lag).run(), "loop-lag")
        spawn(rollouts.run(settings.rollout_tick), "rollouts")
        spawn(rollout_webhook.run(1.0), "rollout-webhook")
        spawn(quality_webhook.run(1.0), "quality-webhook")
        if predlog is not None:
            spawn(predlog.run(), "prediction-log")
        if settings.config_path is not None and settings.watch:
            spawn(reloader.run(settings.reload_interval), "config-watch")
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # no signals off the main thread
                loop.add_signal_handler(signal.SIGHUP, lambda: spawn(reloader.check_once(force=True), "config-sighup"))
        try:
            yield
        finally:
            for task in list(tasks):
                task.cancel()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            await asyncio.gather(*tasks, return_exceptions=True)
            await shadows.aclose()
            await rollouts.aclose()
            await remotes.aclose()
            if predlog is not None:
                await predlog.aclose()
            await http.aclose()
            drift.close()
            executor.shutdown(wait=False, cancel_futures=True)

    app = Starlette(
        routes=[
            *v2_routes(),
            Route("/v2/models/{model}/feedback", feedback_endpoint, methods=["POST"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/admin/experiments", experiments_endpoint, methods=["GET"]),
            Route("/admin/reload", reload_endpoint, methods=["POST"]),
            Route("/admin/drift", drift_endpoint, methods=["GET"]),
            Route("/admin/rollouts", rollouts_endpoint, methods=["GET"]),
            Route("/admin/rollouts/{route}", rollout_endpoint, methods=["GET"]),
            Route("/admin/rollouts/{route}/{action}", rollout_action_endpoint, methods=["POST"]),
        ],
        exception_handlers={GatewayError: gateway_error, HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    app.state.dataplane = dataplane
    app.state.reloader = reloader
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.rollouts = rollouts
    app.state.monitor = monitor
    app.state.remotes = remotes
    if settings.exposed and settings.admin_token is None:
        logger.warning(
            "listening beyond loopback with no admin token: /admin changes (reload, rollout actions) are refused;"
            " set %s or --admin-token-file to allow them", TOKEN_ENV,
        )  # fmt: skip
    guard = AdminGuard(settings.admin_token, settings.exposed)
    return GatewayApp(app, dataplane, guard, admin_apart=settings.admin_apart)
