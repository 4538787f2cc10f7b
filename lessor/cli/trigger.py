"""``lessor trigger``: event triggers, a run per dedup key and window (create, fire, list, delete)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import anyio

from lessor.cli.options import add_namespace, add_url, read_inputs, url_of


def add_commands(sub) -> None:
    """Add `trigger create|fire|list|delete` to the subparsers ``sub``."""
    p = sub.add_parser("trigger", help="event triggers: a run per dedup key and window (the webhook path)",
                       description="A trigger starts its task when fired (by a webhook receiver, say), with the "
                                   "payload as the run's inputs, at most once per dedup key within its window: "
                                   "a repeated fire is answered with the first run.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    s = verbs.add_parser("create", help="create a trigger")
    add_url(s)
    add_namespace(s)
    s.add_argument("name")
    s.add_argument("task")
    s.add_argument("--window-s", type=float, default=3600.0,
                   help="fires with one dedup key within this many seconds of its first start one run (default 3600)")
    s.add_argument("--queue", default="default")
    s.set_defaults(handler=cmd_create)

    s = verbs.add_parser("fire", help="fire a trigger: start its task, unless the dedup key fired within the window")
    add_url(s)
    add_namespace(s)
    s.add_argument("name")
    s.add_argument("--dedup-key", required=True, help="e.g. the webhook's delivery id")
    s.add_argument("--payload", default="null", metavar="JSON|@FILE",
                   help="the run's inputs as JSON, @path/to/file.json, or @- for stdin")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_fire)

    s = verbs.add_parser("list", help="every trigger: task, queue, window, fires, last run")
    add_url(s)
    s.add_argument("--namespace", help="only this project/domain")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_list)

    s = verbs.add_parser("delete", help="delete a trigger (its runs stay)")
    add_url(s)
    add_namespace(s)
    s.add_argument("name")
    s.set_defaults(handler=cmd_delete)


def cmd_create(args: argparse.Namespace) -> int:
    """`lessor trigger create NAME TASK`."""
    import lessor

    async def run() -> bool:
        async with lessor.connect(url_of(args)) as client:
            return await client.create_trigger(args.name, args.task, namespace=args.namespace,
                                               window_s=args.window_s, queue=args.queue)

    created = anyio.run(run)
    print(f"trigger {args.namespace}/{args.name}: {'created' if created else 'exists, unchanged'} "
          f"(task {args.task}, queue {args.queue}, window {args.window_s:g} s)")
    return 0


def cmd_fire(args: argparse.Namespace) -> int:
    """`lessor trigger fire NAME --dedup-key K`: the run started, or the one the key already started."""
    import lessor

    payload = read_inputs(args.payload)

    async def run():
        async with lessor.connect(url_of(args)) as client:
            return await client.trigger(args.name, payload, dedup_key=args.dedup_key, namespace=args.namespace)

    handle = anyio.run(run)
    if args.json:
        print(json.dumps({"namespace": handle.namespace, "run": handle.run_id, "created": handle.created}))
    else:
        print(f"{'started' if handle.created else 'deduplicated'}: run {handle.run_id} (namespace {handle.namespace})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """`lessor trigger list`: a line per trigger, or JSON."""
    import lessor

    async def run():
        async with lessor.connect(url_of(args)) as client:
            return await client.list_triggers(args.namespace)

    found = anyio.run(run)
    if args.json:
        print(json.dumps([asdict(t) for t in found]))
        return 0
    if not found:
        print("no triggers")
    for t in found:
        print(f"{t.namespace}/{t.name}  task {t.task}  queue {t.queue}  window {t.window_s:g} s  "
              f"fires {t.fires}  last run {t.last_run or '-'}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """`lessor trigger delete NAME`."""
    import lessor

    async def run():
        async with lessor.connect(url_of(args)) as client:
            await client.delete_trigger(args.name, namespace=args.namespace)

    anyio.run(run)
    print(f"trigger {args.namespace}/{args.name}: deleted (its runs stay)")
    return 0
