"""``lessor submit``, ``runs``, ``run show`` and ``abort``: what a control plane does, through ``lessor.connect``."""

from __future__ import annotations

import argparse
import json

import anyio

from lessor.cli.options import add_durability, add_namespace, add_url, url_of
from lessor.core.phases import Phase
from lessor.scheduler.control import UnknownRun


def add_commands(sub) -> None:
    """Add `submit`, `runs`, `run` and `abort` to the subparsers ``sub``."""
    p = sub.add_parser("submit", help="submit a run (its root action a0 is queued)")
    add_url(p)
    p.add_argument("task")
    p.add_argument("--inputs", default="null", help="inputs as JSON (a URI or a small value)")
    add_namespace(p)
    p.add_argument("--queue", default="default", help="queue the root action waits on (default: default)")
    p.add_argument("--idempotency-key", help="a repeated key returns the first run; nothing is submitted twice")
    add_durability(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser("runs", help="list runs of a namespace, newest first")
    add_url(p)
    add_namespace(p)
    p.add_argument("--phase", choices=[ph.value for ph in Phase])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor", help="cursor printed by the previous page")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_runs)

    p = sub.add_parser("run", help="one run: `lessor run show ID` prints its execution tree")
    p.add_argument("verb", choices=["show"], help="show: the execution tree")
    p.add_argument("run_id", metavar="ID", help="run id, or project/domain/id")
    add_url(p)
    add_namespace(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--archive", metavar="DIR", help="if the run is gone, say whether retention retired it "
                                                    "and its history is in this archive")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("abort", help="abort a run: queued actions now, running ones at their next heartbeat")
    p.add_argument("run_id", metavar="ID", help="run id, or project/domain/id")
    add_url(p)
    add_namespace(p)
    p.add_argument("--reason", default="aborted by user")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_abort)


def split_run(args: argparse.Namespace) -> tuple[str, str]:
    """(namespace, run id) from ID or a full project/domain/ID as `lessor submit` prints it."""
    parts = args.run_id.split("/")
    if len(parts) == 3:
        return f"{parts[0]}/{parts[1]}", parts[2]
    return args.namespace, args.run_id


def cmd_submit(args: argparse.Namespace) -> int:
    """`lessor submit TASK`: Client.submit_run; prints the run id (or that the idempotency key had one)."""
    import lessor

    try:
        inputs = json.loads(args.inputs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--inputs must be JSON ({exc}); e.g. --inputs '{{\"uri\": \"s3://b/k\"}}'") from None

    async def run():
        async with lessor.connect(url_of(args), durability=args.durability) as client:
            return await client.submit_run(args.task, inputs, namespace=args.namespace, queue=args.queue,
                                           idempotency_key=args.idempotency_key)

    s = anyio.run(run)
    if args.json:
        print(json.dumps({"namespace": s.namespace, "run": s.run_id, "created": s.created}))
    else:
        print(f"{'submitted' if s.created else 'already submitted'}: run {s.run_id} (namespace {s.namespace})")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """`lessor runs`: one page of Client.list_runs, newest first, and the cursor of the next."""
    import lessor
    from lessor.cli.render import print_runs, run_to_json

    async def run():
        async with lessor.connect(url_of(args)) as client:
            return await client.list_runs(args.namespace, args.phase, args.limit, args.cursor)

    page, cursor = anyio.run(run)
    if args.json:
        print(json.dumps({"runs": [run_to_json(r) for r in page], "next_cursor": cursor}))
    else:
        print_runs(page, cursor, args.namespace)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """`lessor run show ID`: Client.get_run and Client.tree, as a tree (or nested JSON)."""
    import lessor
    from lessor.cli.render import print_tree, tree_to_json

    namespace, run_id = split_run(args)

    async def run():
        async with lessor.connect(url_of(args)) as client:
            return (await client.get_run(run_id, namespace=namespace),
                    await client.tree(run_id, namespace=namespace))

    try:
        info, root = anyio.run(run)
    except UnknownRun:
        if args.archive:
            retired_in_archive(args.archive, namespace, run_id, url_of(args))
        raise
    if args.json:
        print(json.dumps(tree_to_json(info, root)))
    else:
        print_tree(info, root)
    return 0


def retired_in_archive(directory: str, namespace: str, run_id: str, url: str | None) -> None:
    """Raise UnknownRun saying the run was retired and where its history is, if the archive has it."""
    from lessor.leasing.archive import Archive
    from lessor.leasing.backend import open_backend

    async def partition() -> int:
        async with open_backend(url) as backend:
            return backend.keys_for_run(namespace, run_id).partition

    archive = Archive(directory)
    if archive.has_run(namespace, run_id, anyio.run(partition)):
        raise UnknownRun(f"run {namespace}/{run_id} was retired by retention; its history is archived in "
                         f"{archive.directory}: lessor events --archive {directory} --run {run_id} "
                         f"--namespace {namespace}")


def cmd_abort(args: argparse.Namespace) -> int:
    """`lessor abort ID`: Client.abort; prints how many actions stopped now and how many were asked to."""
    import lessor

    namespace, run_id = split_run(args)

    async def run():
        async with lessor.connect(url_of(args)) as client:
            return await client.abort(run_id, namespace=namespace, reason=args.reason)

    out = anyio.run(run)
    if args.json:
        print(json.dumps({"aborted_now": out.aborted, "abort_requested": out.requested}))
    else:
        print(f"abort {namespace}/{run_id}: {out.aborted} queued actions aborted, "
              f"{out.requested} running actions asked to stop")
    return 0
