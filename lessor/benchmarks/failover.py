"""Failover latency: how long after a worker dies (or leaves) its actions run elsewhere.

Two real worker processes, an in-process reaper, runs that sleep long enough
to be caught mid-flight. The worker holding most leases is then
- killed with SIGKILL: its actions wait out ttl + grace, the reaper expires
  them, the other worker leases them again;
- or stopped with SIGTERM (no drain): it releases its leases, which are
  leased again at once.
Latency = server time of the new lease minus server time of the kill/stop,
reported against ttl + grace (the bound a crash must wait out).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

import anyio

from lessor.benchmarks.common import dump_json, percentile, print_table
from lessor.core import events as ev
from lessor.leasing.backend import Backend, open_backend
from lessor.leasing.eventlog import EventLog
from lessor.leasing.reaper import Reaper
from lessor.scheduler.query import get_action
from lessor.scheduler.registry import Registry
from lessor.scheduler.submit import RunSpec, submit_runs
from lessor.scheduler.values import pack_value
from lessor.server import EmbeddedServer, _die_with_parent

NAMESPACE, QUEUE = "bench/development", "failover"
registry = Registry()


@registry.task
async def hold(ctx, seconds: float) -> str:
    """Keeps its lease for a while."""
    await anyio.sleep(seconds)
    return "done"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actions", type=int, default=8, help="runs in flight when the worker goes (default 8)")
    p.add_argument("--ttl-ms", type=int, default=1000)
    p.add_argument("--grace-ms", type=int, default=500)
    p.add_argument("--json", action="store_true")


def start_worker(url: str, worker_id: str, args: argparse.Namespace) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lessor", "worker", "--app", "lessor.benchmarks.failover:registry",
         "--queue", QUEUE, "--namespace", NAMESPACE, "--worker-id", worker_id, "--concurrency", str(args.actions),
         "--ttl-ms", str(args.ttl_ms), "--grace-ms", str(args.grace_ms), "--drain-s", "0", "--redis-url", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent)


async def server_ms(backend: Backend) -> int:
    seconds, micros = await backend.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def one_round(backend: Backend, url: str, args: argparse.Namespace, how: str, tag: str) -> list[int]:
    """Start two workers, put runs in flight, take one worker away; latencies of its actions (ms)."""
    workers = {w: start_worker(url, w, args) for w in (f"{tag}-a", f"{tag}-b")}
    try:
        runs = [f"{tag}{i}" for i in range(args.actions)]
        await submit_runs(backend, [RunSpec("hold", inputs=pack_value({"seconds": 30.0}), namespace=NAMESPACE,
                                            queue=QUEUE, run_id=r) for r in runs])
        with anyio.fail_after(60):
            while True:
                infos = [await get_action(backend, NAMESPACE, r, "a0") for r in runs]
                if all(i.phase.value == "running" for i in infos):
                    break
                await anyio.sleep(0.05)
        by_worker: dict[str, list[str]] = {}
        for info in infos:
            by_worker.setdefault(info.worker, []).append(info.run_id)
        victim = max(by_worker, key=lambda w: len(by_worker[w]))
        gone_at = await server_ms(backend)
        workers[victim].send_signal(signal.SIGKILL if how == "crash" else signal.SIGTERM)
        latencies = []
        with anyio.fail_after(60):
            for run_id in by_worker[victim]:
                while (info := await get_action(backend, NAMESPACE, run_id, "a0")).attempt < 2 \
                        or info.phase.value != "running":
                    await anyio.sleep(0.01)
        events = [e.event for e in await EventLog(backend).read_all()]
        for run_id in by_worker[victim]:
            second = next(e for e in events if isinstance(e, ev.ActionLeased) and e.run == run_id and e.attempt == 2)
            latencies.append(second.ts - gone_at)
        return latencies
    finally:
        for proc in workers.values():
            proc.kill()
            proc.wait()


async def measure(args: argparse.Namespace) -> dict:
    with EmbeddedServer() as server:
        async with open_backend(server.url) as backend:
            async with anyio.create_task_group() as tg:
                tg.start_soon(Reaper(backend, interval_ms=50).run)
                crash = await one_round(backend, server.url, args, "crash", "k")
                leave = await one_round(backend, server.url, args, "graceful", "g")
                tg.cancel_scope.cancel()
    window = args.ttl_ms + args.grace_ms
    row = lambda name, xs: {"how": name, "actions": len(xs), "p50_ms": percentile(sorted(xs), 0.5),  # noqa: E731
                            "max_ms": max(xs), "ratio_p50": percentile(sorted(xs), 0.5) / window}
    return {"ttl_ms": args.ttl_ms, "grace_ms": args.grace_ms, "reaper_interval_ms": 50,
            "rows": [row("SIGKILL (waits out ttl + grace)", crash), row("SIGTERM (releases its leases)", leave)]}


def main(args: argparse.Namespace) -> int:
    """`lessor bench failover`."""
    if args.actions < 1 or args.ttl_ms <= 0 or args.grace_ms < 0:
        raise ValueError("--actions >= 1, --ttl-ms > 0, --grace-ms >= 0")
    out = anyio.run(measure, args)
    if args.json:
        dump_json(out)
    else:
        print_table(f"failover latency (ttl {args.ttl_ms} ms + grace {args.grace_ms} ms, reaper every 50 ms)",
                    out["rows"], [("how", "worker goes by"), ("actions", "actions"), ("p50_ms", "p50 ms"),
                                  ("max_ms", "max ms"), ("ratio_p50", "p50 / (ttl + grace)")])
    return 0
