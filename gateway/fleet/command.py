"""`gateway rollout-controller --config FLEET.yaml [--prometheus URL]`: one controller for a fleet's rollouts.

It checks the fleet config and the source routing config first (exit 2 on a fault, naming the file and key), then
takes the lock beside the output (a second controller stands by until the first one exits), publishes, and runs
until SIGTERM or SIGINT. `--metrics-port` serves its rollouts' series (`gateway_rollout_*`, as a replica exports
them in process) for Prometheus, the dashboard and the rollback alert.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, start_http_server

from gateway.errors import ConfigError
from gateway.fleet.controller import FleetController, load_source
from gateway.fleet.lock import FileLock
from gateway.fleet.prometheus import Prometheus
from gateway.fleet.settings import FleetSettings, load_fleet_settings
from gateway.rollout.collector import RolloutCollector
from gateway.webhook import Webhook

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, required=True, help="the fleet config (YAML: source, output, prometheus)"
    )
    parser.add_argument("--prometheus", default=None, metavar="URL", help="Prometheus' base URL (overrides the config)")
    parser.add_argument(
        "--metrics-port", type=int, default=None,
        help="serve the rollouts' gateway_rollout_* series on this port for Prometheus (default: none)",
    )  # fmt: skip
    parser.add_argument("--metrics-host", default="127.0.0.1", help="the metrics port's address")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    for name in ("httpx", "httpcore"):  # a line per query would drown the transitions
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        settings = load_fleet_settings(args.config, prometheus_url=args.prometheus)
        load_source(settings.source, output=settings.output)  # fail fast, before standing by for the lock
    except ConfigError as exc:
        logger.error("cannot start: %s", exc)
        return 2
    return asyncio.run(_serve(settings, args.metrics_host, args.metrics_port))


async def _serve(settings: FleetSettings, metrics_host: str, metrics_port: int | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    prometheus = Prometheus(settings.prometheus.url, timeout=settings.prometheus.timeout)
    http = httpx.AsyncClient(timeout=10.0)
    webhook = Webhook(http)
    controller = FleetController(settings, prometheus, webhook=webhook)
    registry = CollectorRegistry()
    registry.register(RolloutCollector(controller))
    server = None if metrics_port is None else start_http_server(metrics_port, addr=metrics_host, registry=registry)[0]
    lock = FileLock(settings.lock)
    try:
        if not await _acquire(lock, settings.tick, stop):
            return 0
        try:
            controller.start()
        except ConfigError as exc:  # the source changed for the worse while this controller stood by
            logger.error("cannot start: %s", exc)
            return 2
        logger.info(
            "controlling %d rollout(s) of %s; publishing to %s; gates from %s",
            len(controller.controllers), settings.source, settings.output, settings.prometheus.url,
        )  # fmt: skip
        tasks = [asyncio.create_task(controller.run()), asyncio.create_task(webhook.run(1.0))]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await webhook.send_pending()  # the last transitions' notifications, once
        return 0
    finally:
        lock.release()
        prometheus.close()
        await http.aclose()
        if server is not None:
            server.shutdown()


async def _acquire(lock: FileLock, tick: float, stop: asyncio.Event) -> bool:
    """Take the lock, standing by while another controller holds it; False when told to stop first."""
    said = False
    while not lock.acquire():
        if not said:
            logger.warning("another controller holds %s (%s): standing by", lock.path, lock.holder() or "unknown")
            said = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=tick)
        if stop.is_set():
            return False
    if said:
        logger.info("took over %s", lock.path)
    return True
