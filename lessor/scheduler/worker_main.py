"""`lessor worker`: a worker process with signal handling and uvloop."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys

import anyio

from lessor import telemetry
from lessor.errors import ConfigError
from lessor.leasing.backend import open_backend
from lessor.leasing.config import LeaseConfig
from lessor.leasing.urls import shared_url
from lessor.scheduler.registry import Registry
from lessor.scheduler.worker import Worker, WorkerConfig, default_worker_id


def load_registry(spec: str) -> Registry:
    """Import ``module:attribute`` and check it is a Registry (ConfigError saying why not)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--app must look like 'module:registry', got {spec!r}")
    if os.getcwd() not in sys.path:  # as uvicorn and celery do: modules of the current directory
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--app {spec}: cannot import {module_name!r} ({exc}); is it on PYTHONPATH?") from None
    if not hasattr(module, attr):
        raise ConfigError(f"--app {spec}: module {module_name} has no attribute {attr!r}")
    registry = getattr(module, attr)
    if not isinstance(registry, Registry):
        raise ConfigError(f"--app {spec}: {module_name}.{attr} is not a lessor Registry")
    return registry


def setup_logging(log_format: str = "text", task_lines: bool = True) -> None:
    """The worker's log on stdout: rich text lines, or (``json``) one JSON object per line
    (tasklog.JsonLines); the per-task lines in the same format, written directly (tasklog.write_to)."""
    from lessor.scheduler import tasklog

    tasklog.write_to(sys.stdout if task_lines else None, log_format)
    if not task_lines:
        tasklog.task_log.setLevel(logging.WARNING)
    if log_format == "json":
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(tasklog.JsonLines())
        logging.basicConfig(level=logging.INFO, handlers=[handler])
        return
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, markup=False)])


async def serve(args: argparse.Namespace, registry: Registry) -> dict:
    lease = LeaseConfig(ttl_ms=args.ttl_ms, grace_ms=args.grace_ms, heartbeat_ms=args.heartbeat_ms,
                        margin_ms=args.margin_ms)
    config = WorkerConfig(queue=args.queue, namespace=args.namespace, concurrency=args.concurrency,
                          worker_id=args.worker_id or default_worker_id(), lease=lease, drain_s=args.drain_s,
                          reap=not args.no_reap)
    log = logging.getLogger("lessor.worker")
    truth = open(args.truth_log, "a", buffering=1) if args.truth_log else None
    on_attempt = (lambda record: truth.write(json.dumps(record) + "\n")) if truth else None
    async with open_backend(shared_url(args.redis_url, "worker"), durability=args.durability, wait_for_server=True) as backend:
        worker = Worker(backend, registry, config, on_attempt=on_attempt)
        async with anyio.create_task_group() as tg:
            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        if worker._stopping.is_set():
                            log.warning("second signal: stopping now")
                            tg.cancel_scope.cancel()
                            return
                        log.info("%s: no new work; draining for up to %ss, then releasing leases",
                                 signal.Signals(signum).name, config.drain_s)
                        worker.stop()

            tg.start_soon(on_signals)
            log.info("worker %s on %s: queue %s/%s, concurrency %d, ttl %d ms + grace %d ms, durability %s%s",
                     config.worker_id, backend.url, config.namespace, config.queue, config.concurrency,
                     lease.ttl_ms, lease.grace_ms, backend.durability, "" if config.reap else ", not reaping")
            await worker.run()
            tg.cancel_scope.cancel()
        log.info("worker %s stopped: %s", config.worker_id, worker.statistics())
        return dict(worker.counts)


def run_worker(args: argparse.Namespace) -> int:
    """Entry of `lessor worker`."""
    setup_logging(getattr(args, "log_format", "text"), not getattr(args, "no_task_log", False))
    telemetry.setup(args.otel)
    registry = load_registry(args.app)
    options = {}
    if not args.no_uvloop:
        try:
            import uvloop  # noqa: F401

            options = {"use_uvloop": True}
        except ImportError:
            pass
    anyio.run(serve, args, registry, backend="asyncio", backend_options=options)
    return 0
