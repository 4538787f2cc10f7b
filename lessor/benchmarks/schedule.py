"""Scheduling throughput: end-to-end no-op actions, every transition event-sourced.

One worker *process* (``lessor worker``, batched acquire and batched complete)
runs no-op tasks while this process submits ``--actions`` runs in pipelines.
Measured in the same run: actions/s from the first submit to the last
completion, the server's CPU per action (``INFO cpu`` delta: everything the
server did, not only script time), the script time per action (``INFO
commandstats``), and so the server's own limit: how many actions/s one server
core could schedule at that cost. The result is reported as a ratio to it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import anyio

from lessor.benchmarks.common import command_stats, dump_json, print_table, run, stopwatch
from lessor.leasing.backend import Backend, open_backend
from lessor.scheduler.registry import Registry
from lessor.scheduler.submit import Retries, RunSpec, idempotent_run_id, submit_runs
from lessor.server import EmbeddedServer, _die_with_parent

NAMESPACE, QUEUE = "bench/development", "schedule"
registry = Registry()


@registry.task
async def noop(ctx) -> None:
    """Does nothing: the benchmark measures lessor, not the task."""
    return None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actions", type=int, default=20_000, help="runs (root actions) to schedule (default 20000)")
    p.add_argument("--concurrency", type=int, default=512, help="worker concurrency (default 512)")
    p.add_argument("--pipeline", type=int, default=400, help="runs per batched submit (default 400)")
    p.add_argument("--durability", default="memory", metavar="MODES",
                   help="comma-separated durability modes to measure in turn, e.g. memory,fsync; each "
                        "reports its ratio to the first (default: memory)")
    p.add_argument("--json", action="store_true")


async def server_cpu_s(backend: Backend) -> float:
    info = await backend.redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def submit_all(backend: Backend, n: int, batch: int, tag: str) -> None:
    """Submit ``n`` no-op runs, ``batch`` runs per submit_runs call (grouped per partition)."""
    retries = Retries(system=0)
    for start in range(0, n, batch):
        await submit_runs(backend, [
            RunSpec("noop", namespace=NAMESPACE, queue=QUEUE, retries=retries,
                    run_id=idempotent_run_id(NAMESPACE, f"{tag}-{i}"))
            for i in range(start, min(n, start + batch))])


async def outstanding(backend: Backend) -> int:
    """Actions queued or leased, over all partitions (one pipelined round trip)."""
    pipe = backend.redis.pipeline(transaction=False)
    for keys in backend.all_keys():
        pipe.zcard(keys.queue(NAMESPACE, QUEUE))
        pipe.zcard(keys.leases)
    return sum(await pipe.execute())


async def drain(backend: Backend) -> None:
    while await outstanding(backend):
        await anyio.sleep(0.02)


async def measure(url: str, args: argparse.Namespace, durability: str = "memory", round_no: int = 0) -> dict:
    async with open_backend(url, durability=durability) as backend:
        await submit_all(backend, 500, args.pipeline, f"warmup-{round_no}-{durability}")
        await drain(backend)
        before_cpu, before = await server_cpu_s(backend), await command_stats(backend.redis)
        with stopwatch() as t:
            await submit_all(backend, args.actions, args.pipeline, f"run-{round_no}-{durability}")
            await drain(backend)
        after_cpu, after = await server_cpu_s(backend), await command_stats(backend.redis)
        events = sum([await backend.redis.xlen(k.stream) for k in backend.all_keys()])
    script_usec = sum(after[c]["usec"] - before.get(c, {}).get("usec", 0) for c in after if c.startswith("eval"))
    script_calls = sum(after[c]["calls"] - before.get(c, {}).get("calls", 0) for c in after if c.startswith("eval"))
    cpu_us = (after_cpu - before_cpu) * 1e6 / args.actions
    return {
        "actions": args.actions, "seconds": t[0], "actions_per_s": args.actions / t[0],
        "server_cpu_us_per_action": cpu_us, "script_us_per_action": script_usec / args.actions,
        "server_limit_actions_per_s": 1e6 / cpu_us if cpu_us else 0.0,
        "ratio_to_server_limit": (args.actions / t[0]) / (1e6 / cpu_us) if cpu_us else 0.0,
        "events_in_log": events, "worker_concurrency": args.concurrency, "durability": durability,
        "script_calls_per_action": script_calls / args.actions,
    }


def start_worker(url: str, concurrency: int, durability: str = "memory") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lessor", "worker", "--app", "lessor.benchmarks.schedule:registry",
         "--queue", QUEUE, "--namespace", NAMESPACE, "--concurrency", str(concurrency),
         "--worker-id", "bench-worker", "--redis-url", url, "--durability", durability],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent, env=os.environ | {"PYTHONUNBUFFERED": "1"})


def main(args: argparse.Namespace) -> int:
    """`lessor bench schedule`."""
    if args.actions < 1 or args.concurrency < 1 or args.pipeline < 1:
        raise ValueError("--actions, --concurrency and --pipeline must be >= 1")
    from lessor.leasing.durability import Durability

    modes = [m.strip() for m in args.durability.split(",") if m.strip()]
    for mode in modes:
        Durability.parse(mode)  # a bad mode fails before anything starts
    server = None if args.redis_url else EmbeddedServer().start()
    url = args.redis_url or server.url
    results = []
    try:
        for round_no, mode in enumerate(modes):
            worker = start_worker(url, args.concurrency, mode)
            try:
                results.append(run(measure, url, args, mode, round_no))
            finally:
                worker.terminate()
                worker.wait(timeout=15)
    finally:
        if server:
            server.stop()
    base = results[0]["actions_per_s"]
    for r in results:
        r["ratio_to_first_mode"] = r["actions_per_s"] / base
    if args.json:
        dump_json(results[0] if len(results) == 1 else {"modes": results})
    else:
        print_table(f"schedule: {args.actions:,} no-op runs, one worker process (concurrency {args.concurrency})", [
            {"what": r["durability"], "rate": r["actions_per_s"],
             "cpu": r["server_cpu_us_per_action"], "script": r["script_us_per_action"],
             "limit": r["server_limit_actions_per_s"], "ratio": r["ratio_to_server_limit"],
             "vs": r["ratio_to_first_mode"]} for r in results
        ], [("what", "durability"), ("rate", "actions/s"), ("cpu", "server CPU µs/action"),
            ("script", "script µs/action"), ("limit", "server limit/s"), ("ratio", "× limit"),
            ("vs", f"× {modes[0]}")])
    return 0
