"""``lessor workers`` and ``lessor queues``: the dashboard's workers and queues pages as tables.

Both read through ``lessor/ui/fleet.py``, the one query the dashboard uses too.
``--watch [S]`` redraws the table in place every S seconds (default 2) until
Ctrl-C; with ``--json`` it prints one JSON object per refresh, one per line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import anyio

from lessor.cli.options import add_namespace, add_url, url_of

WATCH_DEFAULT_S = 2.0


def add_commands(sub) -> None:
    """Add `workers` and `queues` to the subparsers ``sub``."""
    p = sub.add_parser("workers", help="live workers: host, pid, version, leases held, last heartbeat age",
                       description="The workers that hold a lease or announced themselves in the last "
                                   "30 s: id, host, pid, version, leases held, leases past their deadline, "
                                   "and the age of the last heartbeat (server time). The same query as "
                                   "the dashboard's workers page.")
    add_url(p)
    _add_watch(p)
    p.set_defaults(handler=cmd_workers)

    p = sub.add_parser("queues", help="queues of a namespace: depth, oldest waiting age, leases per second",
                       description="The queues of a namespace (named by its newest runs, by live leases, or "
                                   "by --queue): depth, the age of the oldest waiting action (the head, "
                                   "next to be leased), leases held now and leases per second over the "
                                   "last minute. The same query as the dashboard's queues page.")
    add_url(p)
    add_namespace(p)
    p.add_argument("--queue", action="append", default=[], metavar="NAME",
                   help="also show this queue (repeat for more): an empty queue no recent run named")
    _add_watch(p)
    p.set_defaults(handler=cmd_queues)


def _seconds(text: str) -> float:
    """--watch's value: a positive number of seconds (argparse names the option when it is not)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"takes a positive number of seconds, e.g. --watch 2; got {text!r}")
    return value


def _add_watch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--watch", nargs="?", type=_seconds, const=WATCH_DEFAULT_S, metavar="S",
                   help=f"refresh in place every S seconds (default {WATCH_DEFAULT_S:g}) until Ctrl-C")
    p.add_argument("--json", action="store_true",
                   help="one JSON object (with --watch: one per refresh, one per line)")


def _age(ms: int | None) -> str:
    if ms is None:
        return "-"
    s = ms / 1000
    return f"{s:.1f}s" if s < 60 else f"{s / 60:.1f}m" if s < 3600 else f"{s / 3600:.1f}h"


def workers_json(found) -> dict:
    """What `lessor workers --json` prints."""
    return {"now_ms": found.now_ms, "workers": [w.to_json(found.now_ms) for w in found.rows],
            "gone": found.gone, "live_leases": found.live.total, "leases_read": len(found.live.leases)}


def queues_json(found) -> dict:
    """What `lessor queues --json` prints."""
    return {"namespace": found.namespace, "now_ms": found.now_ms, "queues": [q.to_json(found.now_ms)
                                                                                for q in found.rows],
            "delayed": found.delayed, "window_s": found.window_s, "found": found.found}


def _table(title: str, columns: list[tuple[str, bool, bool]], rows: list[list[str]], caption: str | None,
           width: int):
    """A rich Table within ``width``; columns are (name, right-aligned, may be cut). Only the columns
    that may be cut give way (down to 5 characters, ending in "…"), so ids, pids and numbers stay whole
    and a row stays one line."""
    from rich import box
    from rich.table import Table

    widths = [max([len(name)] + [len(r[i]) for r in rows]) for i, (name, _, _) in enumerate(columns)]
    over = sum(widths) + 2 * (len(widths) - 1) - width
    for i, (_, _, cut) in enumerate(columns):
        if cut and over > 0:
            give = max(0, min(over, widths[i] - 5))
            widths[i] -= give
            over -= give
    t = Table(title=title, title_justify="left", caption=caption, caption_justify="left", box=box.SIMPLE_HEAD,
              pad_edge=False, padding=(0, 1), collapse_padding=True, show_edge=False)
    for (name, right, _), w in zip(columns, widths):
        t.add_column(name, justify="right" if right else "left", no_wrap=True, overflow="ellipsis", width=w)
    for r in rows:
        t.add_row(*r)
    return t


def workers_table(found, width: int = 250):
    """A rich Table of the workers (what `lessor workers` prints): id, host, pid, version, leases held,
    leases past their deadline, last heartbeat age, queues."""
    from lessor.cli.render import plural
    from lessor.scheduler.presence import STALE_MS

    rows = []
    for w in found.rows:
        p = w.presence
        queues = sorted({lease.queue for lease in w.leases}) or ([p.queue] if p else [])
        rows.append([w.worker, p.host if p else "-", str(p.pid) if p else "-", p.version if p else "-",
                     str(len(w.leases)), str(w.overdue(found.now_ms)),
                     _age(max(found.now_ms - w.last_heartbeat_ms, 0)), ", ".join(queues)])
    notes = []
    if found.gone:
        notes.append(f"{found.gone} more not seen for over {STALE_MS // 1000} s (stopped without saying so)")
    if found.live.truncated:
        notes.append(f"{found.live.total} live leases; read {len(found.live.leases)}")
    columns = [("worker", False, False), ("host", False, True), ("pid", True, False), ("version", False, True),
               ("leases", True, False), ("late", True, False), ("heartbeat age", True, False),
               ("queues", False, True)]   # host, then version, then queues give way at a narrow width
    return _table(f"{plural(len(found.rows), 'worker')} (late: leases past their deadline)", columns, rows,
                  "; ".join(notes) or None, width)


def queues_table(found, width: int = 250):
    """A rich Table of the queues (what `lessor queues` prints): depth, oldest waiting age, leases
    held now, leases per second."""
    rows = [[q.row.queue, str(q.row.depth),
             _age(max(found.now_ms - q.row.head_created_ms, 0)) if q.row.head_created_ms else "-",
             str(q.leased), f"{q.per_s:.2f}"] for q in found.rows]
    columns = [("queue", False, False), ("depth", True, False), ("oldest waiting", True, False),
               ("leased now", True, False), (f"leases/s ({found.window_s:.0f} s)", True, False)]
    return _table(f"queues of {found.namespace}", columns, rows,
                  f"{found.delayed} waiting out a retry backoff (all queues)" if found.delayed else None, width)


def _console():
    """A console that never wraps a table row: the terminal's width (or $COLUMNS), else (piped) wide."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(highlight=False, width=250)
    return console


def _show(args: argparse.Namespace, read, to_json, to_table) -> int:
    """Read once (or every --watch seconds) and print as JSON or a table."""
    from lessor.leasing.backend import open_backend

    url = url_of(args)
    console = _console()

    async def main() -> None:
        async with open_backend(url) as backend:
            if args.watch is None:
                found = await read(backend)
                if args.json:
                    print(json.dumps(to_json(found)))
                else:
                    console.print(to_table(found, console.width))
                return
            if args.json:
                while True:
                    print(json.dumps(to_json(await read(backend))), flush=True)
                    await anyio.sleep(args.watch)
            from rich.live import Live

            with Live(to_table(await read(backend), console.width), console=console, auto_refresh=False) as live:
                while True:
                    await anyio.sleep(args.watch)
                    table = to_table(await read(backend), console.width)
                    table.caption = ((table.caption + "; ") if table.caption else "") + \
                        f"refreshed {time.strftime('%H:%M:%S')} every {args.watch:g} s; Ctrl-C to stop"
                    live.update(table, refresh=True)

    anyio.run(main)
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    """`lessor workers [--json] [--watch [S]]`: fleet.workers as a table."""
    from lessor.ui import fleet

    return _show(args, fleet.workers, workers_json, workers_table)


def cmd_queues(args: argparse.Namespace) -> int:
    """`lessor queues [--namespace NS] [--queue Q]... [--json] [--watch [S]]`: fleet.queues as a table."""
    from lessor.core.ids import check_namespace
    from lessor.ui import fleet

    namespace = check_namespace(args.namespace)

    async def read(backend):
        return await fleet.queues(backend, namespace, set(args.queue))

    return _show(args, read, queues_json, queues_table)
