"""Scheduling throughput: end-to-end no-op actions, every transition event-sourced.

One worker *process* (``lessor worker``, batched acquire and batched complete)
runs no-op tasks while this process submits ``--actions`` runs in pipelines.
Measured in the same run, per durability mode:
- lessor's actions/s from the first submit to the last completion;
- the same for taskiq (taskiq_peer.py: taskiq's own receiver in one worker
  process, on taskiq-redis's stream broker, on the same server, with the same
  concurrency, the same number of jobs and the same submit pipeline), and
  lessor's ratio to it, when the ``[peers]`` extra is installed (``make
  bench-schedule`` installs it; without it the taskiq row says what is missing);
- the same for the minimal queue (peer_queue.py: plain XADD, XREADGROUP and
  XACK, a consumer process at the same concurrency, the same pipeline and the
  same durability wait), and lessor's ratio to it: the peer baseline;
- per action, for both: the worker's CPU time (the worker process's user + sys
  time), this process's (the submitter's), the server's (``INFO cpu`` delta:
  everything the server did, not only script time) and lessor's script time
  (``INFO commandstats``);
- the server's own limit: how many actions/s one server core could schedule at
  lessor's cost, and the ratio to it.

``--idle`` measures an idle worker instead, in the same run for both ways of
idling: ``block`` (today's: BLPOP on the queue's wake-up lists, a safety poll
every 10 s) and ``poll`` (the old way, every 100 ms, as the baseline). For each:
the commands/s one idle worker sends (``INFO commandstats`` delta over
``--idle-s``; commands run inside scripts count too, as commandstats counts them),
without and with its reaper, and the latency from a submit to
its task starting (p50, p90 over ``--latency-runs`` runs submitted one at a
time to the idle worker; the task returns its start time).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time

import anyio

from lessor.benchmarks import peer_queue, taskiq_peer
from lessor.benchmarks.common import (
    command_stats, dump_json, percentile, print_table, process_cpu_s, run, server_cpu_s, stopwatch,
)
from lessor.leasing.backend import Backend, open_backend
from lessor.leasing.durability import Durability
from lessor.scheduler.launch import worker_command
from lessor.scheduler.registry import Registry
from lessor.scheduler.submit import Retries, RunSpec, idempotent_run_id, submit_run, submit_runs
from lessor.scheduler.watcher import CompletionWatcher
from lessor.server import EmbeddedServer, spawn_child

NAMESPACE, QUEUE = "bench/development", "schedule"
registry = Registry()


@registry.task
async def noop(ctx) -> None:
    """Does nothing: the benchmark measures lessor, not the task."""
    return None


@registry.task
async def stamp(ctx) -> float:
    """Returns when it started (wall clock, s): the submit-to-start latency's end."""
    return time.time()  # clock: benchmark timing only, compared with the submitter's wall clock


IDLE_MODES = {"block": {}, "poll": {"wake": False, "idle_poll_ms": 100}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actions", type=int, default=20_000, help="runs (root actions) to schedule (default 20000)")
    p.add_argument("--concurrency", type=int, default=512, help="worker concurrency (default 512)")
    p.add_argument("--pipeline", type=int, default=400, help="runs per batched submit (default 400)")
    p.add_argument("--durability", default="memory", metavar="MODES",
                   help="comma-separated durability modes to measure in turn, e.g. memory,fsync; each "
                        "reports its ratio to the first (default: memory)")
    p.add_argument("--idle", action="store_true",
                   help="measure an idle worker instead: commands/s and submit-to-start latency, blocking "
                        "(BLPOP on wake-up lists) against polling every 100 ms, in the same run")
    p.add_argument("--idle-s", type=float, default=20.0, help="with --idle: seconds to count commands (default 20)")
    p.add_argument("--latency-runs", type=int, default=50,
                   help="with --idle: runs submitted one at a time to measure latency (default 50)")
    p.add_argument("--no-taskiq", action="store_true",
                   help="leave taskiq out even when it is installed (the [peers] extra)")
    p.add_argument("--json", action="store_true")


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


async def cpu_marks(redis, worker_pid: int) -> dict:
    """CPU seconds used so far by the server, the worker process and this (submitting) process."""
    return {"server": await server_cpu_s(redis), "worker": process_cpu_s(worker_pid),
            "submitter": time.process_time()}  # clock: benchmark timing only


def cpu_per_action(before: dict, after: dict, actions: int) -> dict:
    """``{who}_cpu_us_per_action`` for each mark (None where a process's CPU time cannot be read)."""
    return {f"{who}_cpu_us_per_action": None if before[who] is None or after[who] is None
            else (after[who] - before[who]) * 1e6 / actions for who in before}


async def measure(url: str, args: argparse.Namespace, worker_pid: int, durability: str = "memory",
                  round_no: int = 0) -> dict:
    """lessor's round: warm up, then submit ``--actions`` runs and wait until every one has ended."""
    async with open_backend(url, durability=durability) as backend:
        await submit_all(backend, 500, args.pipeline, f"warmup-{round_no}-{durability}")
        await drain(backend)
        before_cpu, before = await cpu_marks(backend.redis, worker_pid), await command_stats(backend.redis)
        with stopwatch() as t:
            await submit_all(backend, args.actions, args.pipeline, f"run-{round_no}-{durability}")
            await drain(backend)
        after_cpu, after = await cpu_marks(backend.redis, worker_pid), await command_stats(backend.redis)
        entries = sum([await backend.redis.xlen(k.stream) for k in backend.all_keys()])   # one per script call
    scripts = [c for c in after if c.startswith(("eval", "fcall"))]   # EVAL/EVALSHA or FCALL
    script_usec = sum(after[c]["usec"] - before.get(c, {}).get("usec", 0) for c in scripts)
    script_calls = sum(after[c]["calls"] - before.get(c, {}).get("calls", 0) for c in scripts)
    out = {"queue": "lessor", "actions": args.actions, "seconds": t[0], "actions_per_s": args.actions / t[0],
           "script_us_per_action": script_usec / args.actions, "log_entries": entries,
           "worker_concurrency": args.concurrency, "durability": durability,
           "script_calls_per_action": script_calls / args.actions}
    out |= cpu_per_action(before_cpu, after_cpu, args.actions)
    cpu_us = out["server_cpu_us_per_action"]
    out["server_limit_actions_per_s"] = 1e6 / cpu_us if cpu_us else 0.0
    out["ratio_to_server_limit"] = out["actions_per_s"] / out["server_limit_actions_per_s"] if cpu_us else 0.0
    return out


async def measure_taskiq(url: str, args: argparse.Namespace, worker_pid: int, stream: str) -> dict:
    """taskiq's round, the same way: warm up, then ``--actions`` no-op jobs submitted, run and acked."""
    async with open_backend(url) as backend:
        redis = backend.redis
        try:
            last = await taskiq_peer.submit_jobs(redis, stream, 500, args.pipeline, args.concurrency)
            await drain_stream(taskiq_peer, redis, stream, last)
            before = await cpu_marks(redis, worker_pid)
            with stopwatch() as t:
                last = await taskiq_peer.submit_jobs(redis, stream, args.actions, args.pipeline, args.concurrency)
                await drain_stream(taskiq_peer, redis, stream, last)
            after = await cpu_marks(redis, worker_pid)
        finally:
            await redis.delete(stream)
    return {"queue": "taskiq", "actions": args.actions, "seconds": t[0],
            "actions_per_s": args.actions / t[0], "durability": "memory",
            "worker_concurrency": args.concurrency} | cpu_per_action(before, after, args.actions)


async def measure_peer(url: str, args: argparse.Namespace, consumer_pid: int, stream: str,
                       durability: str = "memory") -> dict:
    """The minimal queue's round, the same way: warm up, then ``--actions`` jobs submitted and acked."""
    wait = Durability.parse(durability)
    async with open_backend(url) as backend:
        redis = backend.redis
        try:
            last = await peer_queue.submit_jobs(redis, stream, 500, args.pipeline, wait)
            await drain_stream(peer_queue, redis, stream, last)
            before = await cpu_marks(redis, consumer_pid)
            with stopwatch() as t:
                last = await peer_queue.submit_jobs(redis, stream, args.actions, args.pipeline, wait)
                await drain_stream(peer_queue, redis, stream, last)
            after = await cpu_marks(redis, consumer_pid)
        finally:
            await redis.delete(stream)
    return {"queue": "XADD+XREADGROUP+XACK", "actions": args.actions, "seconds": t[0],
            "actions_per_s": args.actions / t[0], "durability": durability,
            "worker_concurrency": args.concurrency} | cpu_per_action(before, after, args.actions)


async def drain_stream(peer, redis, stream: str, last_id: str) -> None:
    """Wait until ``peer`` (peer_queue or taskiq_peer) has handled every job up to ``last_id``."""
    while not await peer.drained(redis, stream, last_id):
        await anyio.sleep(0.02)


async def create_stream(peer, url: str, stream: str) -> None:
    """``peer``'s stream and consumer group, made before its consumer process starts."""
    async with open_backend(url) as backend:
        await peer.create_stream(backend.redis, stream)


def start_worker(url: str, concurrency: int, durability: str = "memory") -> subprocess.Popen:
    return spawn_child(
        worker_command(url, "lessor.benchmarks.schedule:registry", worker_id="bench-worker", queue=QUEUE,
                       namespace=NAMESPACE, concurrency=concurrency, durability=durability,
                       extra=("--no-task-log",)),  # measures scheduling; tasklog's cost is measured apart
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        env=os.environ | {"PYTHONUNBUFFERED": "1"})


def lessor_round(url: str, args: argparse.Namespace, mode: str, round_no: int) -> dict:
    worker = start_worker(url, args.concurrency, mode)
    try:
        return run(measure, url, args, worker.pid, mode, round_no)
    finally:
        worker.terminate()
        worker.wait(timeout=15)


def peer_round(url: str, args: argparse.Namespace, mode: str, round_no: int) -> dict:
    stream = f"lessor-bench:peer:{os.getpid()}:{round_no}"
    run(create_stream, peer_queue, url, stream)
    consumer = peer_queue.start_consumer(url, stream, args.concurrency, mode)
    try:
        return run(measure_peer, url, args, consumer.pid, stream, mode)
    finally:
        consumer.terminate()
        consumer.wait(timeout=15)


def taskiq_round(url: str, args: argparse.Namespace, round_no: int) -> dict:
    """taskiq's worker process on its own stream, measured as lessor's round is (taskiq has no durability wait)."""
    stream = f"lessor-bench:taskiq:{os.getpid()}:{round_no}"
    run(create_stream, taskiq_peer, url, stream)
    worker = taskiq_peer.start_worker(url, stream, args.concurrency)
    try:
        return run(measure_taskiq, url, args, worker.pid, stream)
    finally:
        worker.terminate()
        worker.wait(timeout=15)


def main(args: argparse.Namespace) -> int:
    """`lessor bench schedule`."""
    if args.idle:
        return idle_main(args)
    if args.actions < 1 or args.concurrency < 1 or args.pipeline < 1:
        raise ValueError("--actions, --concurrency and --pipeline must be >= 1")
    modes = [m.strip() for m in args.durability.split(",") if m.strip()]
    for mode in modes:
        Durability.parse(mode)  # a bad mode fails before anything starts
    server = None if args.redis_url else EmbeddedServer().start()
    url = args.redis_url or server.url
    with_taskiq = not args.no_taskiq and taskiq_peer.available()
    results, peers, taskiqs = [], [], []
    try:
        for round_no, mode in enumerate(modes):  # lessor and its peers back to back: the same machine load
            results.append(lessor_round(url, args, mode, round_no))
            if with_taskiq:
                taskiqs.append(taskiq_round(url, args, round_no))
            peers.append(peer_round(url, args, mode, round_no))
    finally:
        if server:
            server.stop()
    for i, (r, peer) in enumerate(zip(results, peers)):
        r["ratio_to_first_mode"] = r["actions_per_s"] / results[0]["actions_per_s"]
        r["ratio_to_peer"] = r["actions_per_s"] / peer["actions_per_s"]
        r["peer"] = peer
        if with_taskiq:
            r["taskiq"] = taskiqs[i]
            r["ratio_to_taskiq"] = r["actions_per_s"] / taskiqs[i]["actions_per_s"]
    if not with_taskiq:
        print("taskiq left out: " + ("--no-taskiq" if args.no_taskiq else taskiq_peer.missing_reason()),
              file=sys.stderr)
    if args.json:
        dump_json(results[0] if len(results) == 1 else {"modes": results})
    else:
        print_results(args, modes, results)
    return 0


def print_results(args: argparse.Namespace, modes: list[str], results: list[dict]) -> None:
    rows = []
    for r in results:
        rows.append({"what": r["durability"], "queue": "lessor", "rate": r["actions_per_s"], "peer": r["ratio_to_peer"],
                     "taskiq": r.get("ratio_to_taskiq"),
                     "worker": r["worker_cpu_us_per_action"], "submit": r["submitter_cpu_us_per_action"],
                     "cpu": r["server_cpu_us_per_action"], "script": r["script_us_per_action"],
                     "limit": r["server_limit_actions_per_s"], "ratio": r["ratio_to_server_limit"],
                     "vs": r["ratio_to_first_mode"]})
        for p in filter(None, (r.get("taskiq"), r["peer"])):
            rows.append({"what": p["durability"], "queue": p["queue"], "rate": p["actions_per_s"],
                         "peer": p["actions_per_s"] / r["peer"]["actions_per_s"],
                         "taskiq": p["actions_per_s"] / r["taskiq"]["actions_per_s"] if "taskiq" in r else None,
                         "worker": p["worker_cpu_us_per_action"], "submit": p["submitter_cpu_us_per_action"],
                         "cpu": p["server_cpu_us_per_action"]})
    print_table(f"schedule: {args.actions:,} no-op jobs end to end, one worker process (concurrency "
                f"{args.concurrency}), submits of {args.pipeline}; each lessor round beside taskiq and the minimal queue",
                rows,
                [("what", "durability"), ("queue", "queue"), ("rate", "jobs/s"), ("taskiq", "× taskiq"), ("peer", "× minimal queue"),
                 ("worker", "worker CPU µs/action"), ("submit", "submitter CPU µs/action"),
                 ("cpu", "server CPU µs/action"), ("script", "script wall time µs/action"), ("limit", "server limit/s"),
                 ("ratio", "× limit"), ("vs", f"× {modes[0]}")])


# --- an idle worker: commands/s and submit-to-start latency -----------------------------------

def start_idle_worker(url: str, mode: str, reap: bool) -> subprocess.Popen:
    """A worker process idling the ``mode`` way (``python -m lessor.benchmarks.schedule``)."""
    return spawn_child([sys.executable, "-m", "lessor.benchmarks.schedule", url, mode, str(int(reap))],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


async def idle_commands(url: str, seconds: float) -> dict:
    """Commands/s the server ran over ``seconds`` (INFO itself left out), in total and by command."""
    async with open_backend(url) as backend:
        # Let the worker start and settle into idling, so that its start-up (connections' HELLOs, the
        # first passes) is not counted: a fixed 3 s was not enough on a loaded machine, where a
        # worker took 7 s to open its connections (0.25 commands/s of a 120 s window were HELLOs).
        # Settled: the server's client count has not moved for 3 s (the worker's pool is complete).
        seen, steady_s = -1, 0.0
        with anyio.move_on_after(60):
            while steady_s < 3.0:
                clients = int((await backend.redis.info("clients"))["connected_clients"])
                steady_s = steady_s + 0.5 if clients == seen and clients > 1 else 0.0
                seen = clients
                await anyio.sleep(0.5)
        before = await command_stats(backend.redis)
        await anyio.sleep(seconds)
        after = await command_stats(backend.redis)
    by_command = {c: (after[c]["calls"] - before.get(c, {}).get("calls", 0)) / seconds
                  for c in after if c != "info"}
    by_command = {c: rate for c, rate in by_command.items() if rate > 0}
    return {"commands_per_s": sum(by_command.values()), "by_command": by_command}


async def start_latency(url: str, runs: int, tag: str) -> dict:
    """Submit ``runs`` stamp runs one at a time, each once the worker idles again; latency percentiles."""
    latencies_ms = []
    async with open_backend(url) as backend, anyio.create_task_group() as tg:
        watcher = CompletionWatcher(backend, tg)
        for i in range(runs):
            await anyio.sleep(random.uniform(0.03, 0.06))  # the worker goes back to idling
            run_id = idempotent_run_id(NAMESPACE, f"{tag}-{i}")
            sent_s = time.time()  # clock: benchmark timing only, compared with the worker's
            await submit_run(backend, "stamp", namespace=NAMESPACE, queue=QUEUE, run_id=run_id)
            info = await watcher.wait(NAMESPACE, run_id, "a0", 30)
            latencies_ms.append((info.result - sent_s) * 1000)
        tg.cancel_scope.cancel()
    latencies_ms.sort()
    return {"latency_p50_ms": percentile(latencies_ms, 0.5), "latency_p90_ms": percentile(latencies_ms, 0.9),
            "latency_max_ms": latencies_ms[-1]}


def idle_round(url: str, args: argparse.Namespace, mode: str, round_no: int) -> dict:
    out = {"mode": mode}
    for reap in (False, True):
        worker = start_idle_worker(url, mode, reap)
        try:
            counted = run(idle_commands, url, args.idle_s)
            key = "with_reaper" if reap else "worker"
            out[f"{key}_commands_per_s"] = counted["commands_per_s"]
            out[f"{key}_by_command"] = counted["by_command"]
            if not reap:
                out |= run(start_latency, url, args.latency_runs, f"idle-{round_no}-{mode}")
        finally:
            worker.terminate()
            worker.wait(timeout=15)
    return out


def idle_main(args: argparse.Namespace) -> int:
    """`lessor bench schedule --idle`: blocking and polling idle workers, in the same run."""
    if args.idle_s <= 0 or args.latency_runs < 1:
        raise ValueError("--idle-s must be > 0 and --latency-runs >= 1")
    server = None if args.redis_url else EmbeddedServer().start()
    url = args.redis_url or server.url
    try:
        results = [idle_round(url, args, mode, i) for i, mode in enumerate(IDLE_MODES)]
    finally:
        if server:
            server.stop()
    base = results[-1]
    for r in results:
        r["commands_ratio_to_poll"] = r["worker_commands_per_s"] / base["worker_commands_per_s"]
        r["latency_ratio_to_poll"] = r["latency_p50_ms"] / base["latency_p50_ms"]
    if args.json:
        dump_json({"idle": results})
        return 0
    print_table(f"schedule --idle: one idle worker, commands counted over {args.idle_s:g} s; "
                f"submit-to-start latency over {args.latency_runs} runs submitted one at a time", results,
                [("mode", "idling"), ("worker_commands_per_s", "commands/s"),
                 ("with_reaper_commands_per_s", "commands/s with its reaper"),
                 ("commands_ratio_to_poll", "× poll"), ("latency_p50_ms", "latency p50 ms"),
                 ("latency_p90_ms", "p90 ms"), ("latency_ratio_to_poll", "p50 × poll")])
    return 0


async def _idle_worker(url: str, mode: str, reap: bool) -> None:
    from lessor.scheduler.worker import Worker, WorkerConfig

    async with open_backend(url) as backend:
        config = WorkerConfig(queue=QUEUE, namespace=NAMESPACE, worker_id=f"idle-{mode}", reap=reap,
                              **IDLE_MODES[mode])
        await Worker(backend, registry, config).run()


if __name__ == "__main__":  # the idle worker of --idle: URL MODE REAP(0/1)
    run(_idle_worker, sys.argv[1], sys.argv[2], sys.argv[3] == "1")
