"""``lessor submit``, ``runs``, ``run show`` and ``abort``: what a control plane does, through ``lessor.connect``."""

from __future__ import annotations

import argparse
import json

import anyio

from lessor.cli.options import add_durability, add_namespace, add_url, url_of
from lessor.cli.options import read_inputs
from lessor.core.phases import Phase
from lessor.scheduler.control import UnknownRun

#: What `runs --phase` filters on and the table shows: a run's own phase is `running` from the
#: moment it is submitted, so `queued` (no attempt started) comes from its root action.
RUN_STATUSES = ("queued", "running") + tuple(ph.value for ph in Phase if ph not in (Phase.QUEUED, Phase.RUNNING))


def add_commands(sub) -> None:
    """Add `submit`, `runs`, `run` and `abort` to the subparsers ``sub``."""
    p = sub.add_parser("submit", help="submit a run (its root action a0 is queued)",
                       description="Submit a run of TASK: its root action a0 is queued on --queue for a "
                                   "`lessor worker` that has the task. Prints the run id; with --wait, "
                                   "waits for the run to end and prints its result or error.")
    add_url(p)
    p.add_argument("task")
    p.add_argument("--inputs", default="null", metavar="JSON|@FILE",
                   help="inputs as JSON (a URI or a small value), @path/to/file.json, or @- for stdin")
    add_namespace(p)
    p.add_argument("--queue", help="queue the root action waits on (default: the namespace's "
                                   "run.default_queue setting, else default)")
    p.add_argument("--retries", type=int, metavar="N",
                   help="retries after the task's own errors (default: the namespace's run.default_retries "
                        "setting, else 0; lease expiries have their own budget of 3)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="the run's timeout in seconds, for its whole tree (default: the namespace's "
                        "run.timeout_s setting, else none; 0: none)")
    p.add_argument("--priority", type=int, default=0, metavar="P",
                   help="-1000..1000: a higher priority is leased first on its queue (default 0)")
    p.add_argument("--idempotency-key", help="a repeated key returns the first run; nothing is submitted twice")
    p.add_argument("--wait", action="store_true",
                   help="wait for the run to end; print its result (or error); exit 1 unless it succeeded")
    add_durability(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="print only the run id (for scripts: run=$(lessor submit TASK -q))")
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser("runs", help="list runs of a namespace, newest first")
    add_url(p)
    add_namespace(p)
    p.add_argument("--phase", choices=RUN_STATUSES,
                   help="queued: no attempt of the run has started yet; running: started and not ended "
                        "(a root waiting to retry included); or how it ended")
    p.add_argument("--limit", type=int, default=20, help="runs per page (default 20)")
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
    """`lessor submit TASK`: Client.submit_run; prints the run id, and with --wait how the run ended.

    Exit 0, or with --wait 1 when the run ended other than succeeded.
    """
    import lessor
    from lessor.cli.render import print_outcome, run_status, run_to_json

    inputs = read_inputs(args.inputs)
    retries = lessor.Retries(user=args.retries) if args.retries is not None else None

    async def run():
        async with lessor.connect(url_of(args), durability=args.durability) as client:
            handle = await client.submit_run(args.task, inputs, namespace=args.namespace, queue=args.queue,
                                             retries=retries, timeout_s=args.timeout, priority=args.priority,
                                             idempotency_key=args.idempotency_key)
            if args.quiet and not args.json:
                print(handle.run_id, flush=True)
            elif not args.json:
                print(f"{'submitted' if handle.created else 'already submitted'}: run {handle.run_id} "
                      f"(namespace {handle.namespace})", flush=True)
            return handle, (await handle.wait() if args.wait else None)

    handle, info = anyio.run(run)
    if args.json:
        out = {"namespace": handle.namespace, "run": handle.run_id, "created": handle.created}
        if info is not None:   # --wait: how it ended
            root = run_to_json(info)["root"] or {}
            out |= {"status": run_status(info), "result": root.get("result"), "error": root.get("error")}
        print(json.dumps(out))
    elif info is not None and not args.quiet:
        print_outcome(info)
    return 1 if info is not None and info.phase is not Phase.SUCCEEDED else 0


def cmd_runs(args: argparse.Namespace) -> int:
    """`lessor runs`: one page of Client.list_runs, newest first, and the cursor of the next."""
    import lessor
    from lessor.cli.render import print_runs, run_to_json

    async def run():
        async with lessor.connect(url_of(args)) as client:
            return await runs_page(client, args.namespace, args.phase, args.limit, args.cursor)

    page, cursor = anyio.run(run)
    if args.json:
        print(json.dumps({"runs": [run_to_json(r) for r in page], "next_cursor": cursor}))
    else:
        print_runs(page, cursor, args.namespace)
    return 0


async def runs_page(client, namespace: str, status: str | None, limit: int, cursor: str | None):
    """(runs, next cursor) newest first whose status (see RUN_STATUSES) is ``status`` (None: any).

    A terminal status is the run's own phase, which list_runs filters. `queued`
    and `running` split the runs whose phase is running by their root's first
    attempt, so they are filtered here, page by page, from list_runs's cursor on.
    """
    from lessor.cli.render import run_status

    if status not in ("queued", "running"):
        return await client.list_runs(namespace, status, limit, cursor)
    page = []
    while True:
        batch, next_cursor = await client.list_runs(namespace, Phase.RUNNING, limit, cursor)
        for r in batch:
            if run_status(r) != status:
                continue
            page.append(r)
            if len(page) == limit:
                last = r is batch[-1]
                # list_runs's cursor is created_ms:run_id of the last run it returned
                return page, (next_cursor if last else f"{r.created_ms}:{r.run_id}")
        if next_cursor is None:
            return page, None
        cursor = next_cursor


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
    from lessor.cli.render import plural

    namespace, run_id = split_run(args)

    async def run():
        async with lessor.connect(url_of(args)) as client:
            return await client.abort(run_id, namespace=namespace, reason=args.reason)

    out = anyio.run(run)
    if args.json:
        print(json.dumps({"aborted_now": out.aborted, "abort_requested": out.requested}))
    else:
        print(f"abort {namespace}/{run_id}: {plural(out.aborted, 'queued action')} aborted, "
              f"{plural(out.requested, 'running action')} asked to stop")
    return 0
