"""``lessor retention``: how long finished runs stay in the server (set, show, clear, run)."""

from __future__ import annotations

import argparse
import json

import anyio

from lessor.cli.options import add_url, url_of


def add_commands(sub) -> None:
    """Add `retention set|show|clear|run` to the subparsers ``sub``."""
    p = sub.add_parser("retention", help="retention policies: how long finished runs and cached results stay",
                       description="Finished runs older than --keep, or beyond the newest --keep-runs, are "
                                   "retired by every reaping process (their state goes; their events stay in the "
                                   "log until `lessor reaper --archive DIR` archives and trims them). A running "
                                   "run is never touched.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    s = verbs.add_parser("set", help="set a namespace's policy")
    add_url(s)
    s.add_argument("namespace", help="project/domain")
    s.add_argument("--keep", default="0", help="retire runs finished longer ago than this: 7d, 12h, 30m (0 = no limit)")
    s.add_argument("--keep-runs", type=int, default=-1, help="keep the newest N finished runs (default: no limit)")
    s.add_argument("--cache-keep", default="0", help="drop cached results older than this (0 = no limit)")
    s.add_argument("--cache-max", type=int, default=-1, help="keep at most N cached results (default: no limit)")
    s.set_defaults(handler=cmd_set)

    s = verbs.add_parser("show", help="every namespace's policy")
    add_url(s)
    s.add_argument("--json", action="store_true", help="one JSON object: namespace -> policy")
    s.set_defaults(handler=cmd_show)

    s = verbs.add_parser("clear", help="remove a namespace's policy (it then keeps everything)")
    add_url(s)
    s.add_argument("namespace")
    s.set_defaults(handler=cmd_clear)

    s = verbs.add_parser("run", help="one retention pass by hand (and compaction, with --archive)")
    add_url(s)
    s.add_argument("--once", action="store_true", required=True, help="one pass, then exit (the only mode)")
    s.add_argument("--archive", help="also compact: archive events to this directory, snapshot, trim")
    s.add_argument("--keep-window", default="60s", help="never trim the newest events of this window (default 60s)")
    s.add_argument("--json", action="store_true", help="the pass's figures as JSON")
    s.set_defaults(handler=cmd_run)


def cmd_set(args: argparse.Namespace) -> int:
    """`lessor retention set NS ...`."""
    from lessor.leasing.backend import open_backend
    from lessor.leasing.retention import RetentionPolicy, parse_duration, set_policy

    policy = RetentionPolicy(keep_ms=parse_duration(args.keep), keep_runs=args.keep_runs,
                             cache_keep_ms=parse_duration(args.cache_keep), cache_max=args.cache_max)

    async def run() -> None:
        async with open_backend(url_of(args)) as backend:
            await set_policy(backend, args.namespace, policy)

    anyio.run(run)
    print(f"{args.namespace}: {describe(policy)}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """`lessor retention show`: a table, or JSON."""
    from dataclasses import asdict

    from lessor.leasing.backend import open_backend
    from lessor.leasing.retention import policies

    async def run():
        async with open_backend(url_of(args)) as backend:
            return await policies(backend)

    found = anyio.run(run)
    if args.json:
        print(json.dumps({ns: asdict(p) for ns, p in sorted(found.items())}))
    elif not found:
        print("no retention policies: every namespace keeps everything")
    else:
        for ns, policy in sorted(found.items()):
            print(f"{ns}: {describe(policy)}")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    """`lessor retention clear NS`."""
    from lessor.leasing.backend import open_backend
    from lessor.leasing.retention import clear_policy

    async def run() -> bool:
        async with open_backend(url_of(args)) as backend:
            return await clear_policy(backend, args.namespace)

    had = anyio.run(run)
    print(f"{args.namespace}: {'policy removed; it keeps everything' if had else 'had no policy'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """`lessor retention run --once [--archive DIR]`: one pass now, whatever the fleet's throttle says."""
    from lessor.leasing.archive import Archive
    from lessor.leasing.backend import open_backend
    from lessor.leasing.housekeeping import Housekeeper
    from lessor.leasing.retention import parse_duration

    async def run():
        async with open_backend(url_of(args)) as backend:
            keeper = Housekeeper(backend, Archive(args.archive) if args.archive else None,
                                 keep_window_ms=parse_duration(args.keep_window))
            return await keeper.run_once(force=True)

    result = anyio.run(run)
    figures = {"retired": result.retention.retired, "still_live": result.retention.still_live,
               "cache_dropped": result.retention.cache_dropped,
               "longest_call_ms": round(result.retention.max_call_ms, 1),
               "archived": sum(c.archived for c in result.compaction),
               "trimmed": sum(c.trimmed for c in result.compaction), "took_ms": round(result.took_ms)}
    if args.json:
        print(json.dumps(figures))
    else:
        print(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in figures.items()))
    return 0


def describe(policy) -> str:
    """A policy in words."""
    parts = []
    if policy.keep_ms:
        parts.append(f"retire runs finished more than {_duration(policy.keep_ms)} ago")
    if policy.keep_runs >= 0:
        parts.append(f"keep the newest {policy.keep_runs:,} finished runs")
    if policy.cache_keep_ms:
        parts.append(f"drop cached results older than {_duration(policy.cache_keep_ms)}")
    if policy.cache_max >= 0:
        parts.append(f"keep at most {policy.cache_max:,} cached results")
    return "; ".join(parts) or "keep everything"


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
