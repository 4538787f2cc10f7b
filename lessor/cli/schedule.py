"""``lessor schedule``: cron schedules, each tick one run, exactly once (create, list, pause, resume, delete)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import anyio

from lessor.cli.options import add_namespace, add_url, url_of


def add_commands(sub) -> None:
    """Add `schedule create|list|pause|resume|delete` to the subparsers ``sub``."""
    p = sub.add_parser("schedule", help="cron schedules: each tick starts one run, exactly once",
                       description="Schedules are ticked by every worker and `lessor reaper` under a fenced "
                                   "ticker lease: each tick starts exactly one run (its id derived from the "
                                   "schedule and the tick), also through failovers.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    s = verbs.add_parser("create", help="create a schedule")
    add_url(s)
    add_namespace(s)
    s.add_argument("name")
    s.add_argument("task")
    s.add_argument("cron", help='a cron expression, e.g. "0 9 * * *" (quote it)')
    s.add_argument("--timezone", default="UTC", help="IANA time zone, e.g. Europe/Berlin (default UTC)")
    s.add_argument("--queue", default="default")
    s.add_argument("--inputs", help="JSON inputs of every run")
    s.add_argument("--catchup", choices=["all", "latest", "none"], default="latest",
                   help="after downtime: fire all missed ticks, only the latest (default), or none")
    s.add_argument("--misfire-grace-s", type=float, default=60.0,
                   help="with --catchup none: a tick this late still fires (default 60)")
    s.add_argument("--jitter-s", type=float, default=0.0,
                   help="each tick fires up to this long after its time, the same delay for every "
                        "ticker (spreads schedules that share a time; default 0, at most 3600)")
    s.add_argument("--retries", type=int, default=0, help="user retries of each run a tick starts (default 0)")
    s.set_defaults(handler=cmd_create)

    s = verbs.add_parser("list", help="every schedule: phase, last tick, next due")
    add_url(s)
    s.add_argument("--namespace", help="only this project/domain")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_list)

    for verb, text in (("pause", "pause (its ticks meanwhile never fire)"), ("resume", "resume from now"),
                       ("delete", "delete (its runs stay)")):
        s = verbs.add_parser(verb, help=text)
        add_url(s)
        add_namespace(s)
        s.add_argument("name")
        s.set_defaults(handler=cmd_verb)


def cmd_create(args: argparse.Namespace) -> int:
    """`lessor schedule create NAME TASK CRON`."""
    import lessor

    inputs = json.loads(args.inputs) if args.inputs else None

    async def run() -> bool:
        async with lessor.connect(url_of(args)) as client:
            return await client.create_schedule(args.name, args.task, args.cron, timezone=args.timezone,
                                                inputs=inputs, namespace=args.namespace, queue=args.queue,
                                                catchup=args.catchup, misfire_grace_s=args.misfire_grace_s,
                                                jitter_s=args.jitter_s, retries=args.retries)

    created = anyio.run(run)
    print(f"schedule {args.namespace}/{args.name}: {'created' if created else 'exists, unchanged'} "
          f"({args.cron}, {args.timezone}, catch-up {args.catchup})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """`lessor schedule list`: a line per schedule, or JSON."""
    import lessor
    from lessor.scheduler.schedules import tick_time

    async def run():
        async with lessor.connect(url_of(args)) as client:
            return await client.list_schedules(args.namespace)

    found = anyio.run(run)
    if args.json:
        print(json.dumps([asdict(s) for s in found]))
        return 0
    if not found:
        print("no schedules")
    for s in found:
        last = tick_time(s.last_tick_ms, s.timezone) if s.ticks else "never"
        nxt = tick_time(s.next_due_ms, s.timezone) if s.next_due_ms else "-"
        print(f"{s.namespace}/{s.name}  {s.phase:<6}  {s.cron!r} {s.timezone}  task {s.task}  "
              f"ticks {s.ticks} (skipped {s.skips})  last {last}  next {nxt}")
    return 0


def cmd_verb(args: argparse.Namespace) -> int:
    """`lessor schedule pause|resume|delete NAME`."""
    import lessor

    async def run():
        async with lessor.connect(url_of(args)) as client:
            if args.verb == "pause":
                return await client.pause_schedule(args.name, namespace=args.namespace)
            if args.verb == "resume":
                return await client.resume_schedule(args.name, namespace=args.namespace)
            await client.delete_schedule(args.name, namespace=args.namespace)
            return True

    changed = anyio.run(run)
    print(f"schedule {args.namespace}/{args.name}: {args.verb + 'd' if changed else 'nothing to do'}")
    return 0
