"""Event log append throughput: appends/s through append_events.lua vs plain XADD.

Both run in the same process against the same server, with the same payload
and the same concurrency, so the result is a ratio: what the log's transition
check + projection update cost on top of a bare stream append.
"""

from __future__ import annotations

import argparse

import anyio

from lessor.benchmarks.common import command_stats, dump_json, print_table, run, stat_delta, stopwatch, uvloop_name
from lessor.core.codec import encode
from lessor.core.events import ActionCreated
from lessor.leasing.backend import open_backend
from lessor.leasing.eventlog import EventLog


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=20_000, help="events per variant (default 20000)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent appenders")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--json", action="store_true")


async def _drive(n: int, concurrency: int, call) -> float:
    counter = iter(range(n))

    async def appender() -> None:
        for i in counter:
            await call(i)

    with stopwatch() as t:
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(appender)
    return t[0]


async def measure(url: str | None, n: int, concurrency: int) -> dict:
    async with open_backend(url, max_connections=concurrency + 4) as backend:
        log = EventLog(backend)
        run_id = "rbench"
        events = [ActionCreated(ns="bench/development", run=run_id, action=f"b{i}", task="noop", queue="q")
                  for i in range(n)]
        payloads = [encode(e) for e in events]
        stream = backend.keys_for_run("bench/development", run_id).prefix + "plainxadd"
        redis = backend.redis

        async def plain(i: int) -> None:
            await redis.xadd(stream, {"e": payloads[i]})

        async def logged(i: int) -> None:
            await log.append([events[i]])

        before = await command_stats(redis)
        plain_s = await _drive(n, concurrency, plain)
        middle = await command_stats(redis)
        log_s = await _drive(n, concurrency, logged)
        after = await command_stats(redis)
        _, plain_usec = stat_delta(before, middle, "xadd")
        _, log_usec = stat_delta(middle, after, log.backend.scripts.command("append_events")[0])
        await redis.delete(stream)
    return {
        "events": n, "concurrency": concurrency,
        "plain_xadd_per_s": n / plain_s, "eventlog_appends_per_s": n / log_s,
        "ratio_to_plain_xadd": (n / log_s) / (n / plain_s),
        "server_usec_per_plain_xadd": plain_usec / n, "server_usec_per_append": log_usec / n,
    }


def main(args: argparse.Namespace) -> int:
    """`lessor bench eventlog`: print the table (or JSON)."""
    result = run(measure, args.redis_url, args.events, args.concurrency, use_uvloop=not args.no_uvloop)
    result["loop"] = uvloop_name(not args.no_uvloop)
    if args.json:
        dump_json(result)
    else:
        print_table(f"event log appends ({result['loop']}, {args.concurrency} concurrent, one event per call)", [
            {"what": "plain XADD", "rate": result["plain_xadd_per_s"], "usec": result["server_usec_per_plain_xadd"], "ratio": 1.0},
            {"what": "append_events.lua (XADD + check + projection)", "rate": result["eventlog_appends_per_s"],
             "usec": result["server_usec_per_append"], "ratio": result["ratio_to_plain_xadd"]},
        ], [("what", "variant"), ("rate", "appends/s"), ("usec", "server µs/append"), ("ratio", "× plain XADD")])
    return 0
