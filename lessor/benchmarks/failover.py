"""Failover latency: how long after a worker dies (or leaves) its actions run elsewhere.

Two real worker processes, an in-process reaper, runs that sleep long enough
to be caught mid-flight. The worker holding most leases is then
- killed with SIGKILL: its actions wait out ttl + grace, the reaper expires
  them, the other worker leases them again;
- or stopped with SIGTERM (no drain): it releases its leases, which are
  leased again at once.
Latency = server time of the new lease minus server time of the kill/stop,
reported against ttl + grace (the bound a crash must wait out).

Rounds are isolated: each round aborts its runs and waits until all of them
have ended before the next one starts. Otherwise the SIGKILL round's actions
(30 s sleeps, re-queued when their killed workers' leases expire) filled the
next round's worker slots, and the SIGTERM round timed out or measured the
wrong actions. ``--rounds N`` repeats the pair N times (p50 per round, and the
spread over rounds).
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
from lessor.scheduler import presence
from lessor.scheduler.control import abort_run
from lessor.scheduler.query import get_action, get_run
from lessor.scheduler.registry import Registry
from lessor.scheduler.submit import RunSpec, submit_runs
from lessor.scheduler.values import pack_value
from lessor.server import EmbeddedServer, spawn_child

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
    p.add_argument("--rounds", type=int, default=3, help="SIGKILL + SIGTERM pairs to run (default 3)")
    p.add_argument("--json", action="store_true")


def start_worker(url: str, worker_id: str, args: argparse.Namespace) -> subprocess.Popen:
    return spawn_child(
        [sys.executable, "-m", "lessor", "worker", "--app", "lessor.benchmarks.failover:registry",
         "--queue", QUEUE, "--namespace", NAMESPACE, "--worker-id", worker_id, "--concurrency", str(args.actions),
         "--ttl-ms", str(args.ttl_ms), "--grace-ms", str(args.grace_ms), "--drain-s", "0", "--redis-url", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


async def server_ms(backend: Backend) -> int:
    seconds, micros = await backend.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def one_round(backend: Backend, url: str, args: argparse.Namespace, how: str,
                    tag: str) -> list[tuple[int, int]]:
    """Start two workers, put runs in flight, take one worker away; per action of it (ms after it went):
    (leased again, requeued), requeued being when the victim's lease let go (release or reap)."""
    workers = {w: start_worker(url, w, args) for w in (f"{tag}-a", f"{tag}-b")}
    try:
        await both_waiting(backend, list(workers))
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
            requeued = next(e for e in events if isinstance(e, ev.ActionRequeued) and e.run == run_id)
            latencies.append((second.ts - gone_at, requeued.ts - gone_at))
        await end_round(backend, runs)
        return latencies
    finally:
        for proc in workers.values():
            proc.kill()
            proc.wait()


async def both_waiting(backend: Backend, worker_ids: list[str]) -> None:
    """Wait until every worker has started and blocks for work (announced, and that many clients blocked).

    Without this, a round measured a worker's start-up: under load the second
    process was still importing when the first had leased every run, and the
    "failover" waited for it to start (SIGTERM p50 0.3-1.1 x (ttl + grace)).
    Raises TimeoutError after 60 s.
    """
    with anyio.fail_after(60):
        while True:
            announced = {p.worker for p in await presence.read(backend)}
            blocked = int((await backend.redis.info("clients"))["blocked_clients"])
            if announced >= set(worker_ids) and blocked >= len(worker_ids):
                return
            await anyio.sleep(0.02)


async def end_round(backend: Backend, runs: list[str]) -> None:
    """Abort a round's runs and wait until every one has ended, so none is left to take a slot next round.

    Called while the round's surviving worker still runs: it holds every one of
    them by now, so it stops them at once. Raises TimeoutError after 60 s.
    """
    for run_id in runs:
        await abort_run(backend, NAMESPACE, run_id, "bench failover: round over")
    with anyio.fail_after(60):
        for run_id in runs:
            while not (await get_run(backend, NAMESPACE, run_id)).done:
                await anyio.sleep(0.02)


async def measure(args: argparse.Namespace) -> dict:
    with EmbeddedServer() as server:
        async with open_backend(server.url) as backend:
            async with anyio.create_task_group() as tg:
                tg.start_soon(Reaper(backend, interval_ms=50).run)
                rounds = []
                for n in range(args.rounds):
                    rounds.append(("SIGKILL (waits out ttl + grace)", n + 1,
                                   await one_round(backend, server.url, args, "crash", f"k{n}x")))
                    rounds.append(("SIGTERM (releases its leases)", n + 1,
                                   await one_round(backend, server.url, args, "graceful", f"g{n}x")))
                tg.cancel_scope.cancel()
    window = args.ttl_ms + args.grace_ms
    rows = [latency_row(how, n, xs, window) for how, n, xs in rounds]
    return {"ttl_ms": args.ttl_ms, "grace_ms": args.grace_ms, "reaper_interval_ms": 50, "rows": rows,
            "spread": {how: spread([r["ratio_p50"] for r in rows if r["how"] == how]) for how, _, _ in rounds}}


def latency_row(how: str, round_no: int, latencies: list[tuple[int, int]], window_ms: int) -> dict:
    """p50 and max of one round's failover latencies, p50 as a ratio to ttl + grace, and where the time went:
    until the victim's lease let go (requeued), then until the survivor leased it."""
    total = sorted(t for t, _ in latencies)
    p50 = percentile(total, 0.5)
    return {"how": how, "round": round_no, "actions": len(latencies), "p50_ms": p50, "max_ms": total[-1],
            "ratio_p50": p50 / window_ms, "requeued_p50_ms": percentile(sorted(r for _, r in latencies), 0.5),
            "pickup_p50_ms": percentile(sorted(t - r for t, r in latencies), 0.5)}


def spread(ratios: list[float]) -> dict:
    """min, median and max of the per-round p50 ratios."""
    ordered = sorted(ratios)
    return {"min": ordered[0], "median": percentile(ordered, 0.5), "max": ordered[-1]}


def main(args: argparse.Namespace) -> int:
    """`lessor bench failover`."""
    if args.actions < 1 or args.ttl_ms <= 0 or args.grace_ms < 0 or args.rounds < 1:
        raise ValueError("--actions >= 1, --ttl-ms > 0, --grace-ms >= 0, --rounds >= 1")
    out = anyio.run(measure, args)
    if args.json:
        dump_json(out)
    else:
        print_table(f"failover latency (ttl {args.ttl_ms} ms + grace {args.grace_ms} ms, reaper every 50 ms)",
                    out["rows"], [("how", "worker goes by"), ("round", "round"), ("actions", "actions"),
                                  ("p50_ms", "p50 ms"), ("max_ms", "max ms"), ("ratio_p50", "p50 / (ttl + grace)"),
                                  ("requeued_p50_ms", "requeued p50 ms"), ("pickup_p50_ms", "then leased p50 ms")])
        for how, s in out["spread"].items():
            print(f"{how}: p50 / (ttl + grace) over {args.rounds} round(s): min {s['min']:.3f}, "
                  f"median {s['median']:.3f}, max {s['max']:.3f}")
    return 0
