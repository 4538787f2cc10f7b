"""``lessor fairshare``: weights and running limits of a queue's namespaces (set, limit, clear, show, sync)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import anyio

from lessor.cli.options import add_url, url_of


def add_commands(sub) -> None:
    """Add `fairshare set|limit|clear|show|sync` to the subparsers ``sub``."""
    p = sub.add_parser("fairshare", help="fair share across namespaces and running limits of a queue",
                       description="Workers started with --namespace '*' take work of every namespace of their "
                                   "queue, by weight (default 1). Running limits hold for every worker of the "
                                   "queue. A limit of N is split as ceil(N/P) per partition (docs/operations.md).")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    s = verbs.add_parser("set", help="set a namespace's weight and/or running limit on a queue")
    add_url(s)
    s.add_argument("queue")
    s.add_argument("namespace", help="project/domain")
    s.add_argument("--weight", type=float, help="its share against the others with work (default 1)")
    s.add_argument("--max-running", type=int, help="at most N of its leases at once (0 = no limit)")
    s.set_defaults(handler=cmd_set)

    s = verbs.add_parser("limit", help="set a queue's running limit, all namespaces together")
    add_url(s)
    s.add_argument("queue")
    s.add_argument("max_running", type=int, help="at most N leases of the queue at once (0 = no limit)")
    s.set_defaults(handler=cmd_limit)

    s = verbs.add_parser("clear", help="forget a namespace's weight and limit (or, without one, the queue's limit)")
    add_url(s)
    s.add_argument("queue")
    s.add_argument("namespace", nargs="?")
    s.set_defaults(handler=cmd_clear)

    s = verbs.add_parser("show", help="a queue's weights, limits, running and queued counts")
    add_url(s)
    s.add_argument("queue")
    s.add_argument("--json", action="store_true", help="one JSON object")
    s.set_defaults(handler=cmd_show)

    s = verbs.add_parser("sync", help="bring queues filled before fair share into it; recount running leases")
    add_url(s)
    s.set_defaults(handler=cmd_sync)


def _run(args: argparse.Namespace, work):
    from lessor.leasing.backend import open_backend

    async def run():
        async with open_backend(url_of(args)) as backend:
            return await work(backend)

    return anyio.run(run)


def cmd_set(args: argparse.Namespace) -> int:
    """`lessor fairshare set QUEUE NS [--weight W] [--max-running N]`."""
    from lessor.errors import ConfigError
    from lessor.leasing.fairshare import set_fair_share

    if args.weight is None and args.max_running is None:
        raise ConfigError("say what to set: --weight W and/or --max-running N")
    share = _run(args, lambda b: set_fair_share(b, args.queue, args.namespace, weight=args.weight,
                                                max_running=args.max_running))
    print(f"{args.queue} {share.namespace}: weight {share.weight:g}, {_limit(share.max_running)}")
    return 0


def cmd_limit(args: argparse.Namespace) -> int:
    """`lessor fairshare limit QUEUE N`."""
    from lessor.leasing.fairshare import set_queue_limit

    _run(args, lambda b: set_queue_limit(b, args.queue, args.max_running))
    print(f"{args.queue}: {_limit(args.max_running)}")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    """`lessor fairshare clear QUEUE [NS]`."""
    from lessor.leasing.fairshare import clear_fair_share

    had = _run(args, lambda b: clear_fair_share(b, args.queue, args.namespace))
    what = f"{args.queue} {args.namespace}" if args.namespace else args.queue
    print(f"{what}: {'cleared' if had else 'had nothing set'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """`lessor fairshare show QUEUE`: a table, or JSON."""
    from lessor.leasing.fairshare import show

    shares = _run(args, lambda b: show(b, args.queue))
    if args.json:
        print(json.dumps(asdict(shares)))
        return 0
    print(f"{shares.queue}: {shares.running} running, {_limit(shares.max_running)}")
    if not shares.namespaces:
        print("  no namespace has work or settings on it")
    for ns in shares.namespaces:
        print(f"  {ns.namespace:<32} weight {ns.weight:<6g} running {ns.running:<6} queued {ns.queued:<8} "
              f"{_limit(ns.max_running)}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """`lessor fairshare sync`: fair_sync.lua on every partition."""
    from lessor.leasing.fairshare import sync

    joined, counted = _run(args, sync)
    print(f"{joined} namespaces with queued work joined their queue's rotation; {counted} running leases counted")
    return 0


def _limit(n: int) -> str:
    return f"at most {n} running" if n else "no running limit"
