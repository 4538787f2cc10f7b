"""``lessor events`` and ``lessor replay``: reading the event log."""

from __future__ import annotations

import argparse
import json

import anyio

from lessor.cli.options import DEFAULT_NAMESPACE, add_url, url_of


def add_commands(sub) -> None:
    """Add `events` and `replay` to the subparsers ``sub``."""
    p = sub.add_parser("events", help="print the event log readably (or as JSON lines)")
    add_url(p)
    p.add_argument("--run", metavar="ID", help="only this run's events")
    p.add_argument("--namespace", help="only this project/domain's events (with --run: the run's namespace, "
                                       "default proj/development)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--archive", metavar="DIR", help="with --run: read the run's archived events from DIR first "
                                                    "(history that compaction trimmed from the server)")
    p.set_defaults(handler=cmd_events)

    p = sub.add_parser("replay", help="rebuild all state from the streams alone")
    add_url(p)
    p.add_argument("--verify", action="store_true",
                   help="compare with the live projection; exit 1 printing every difference")
    p.add_argument("--archive", metavar="DIR", help="where to rebuild a partition whose snapshots do not decode "
                                                    "(the archive compaction writes; see docs/retention.md)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_replay)


def cmd_events(args: argparse.Namespace) -> int:
    """`lessor events`: every run's events (or --run's), then with --follow every new one (Client.entries)."""
    import lessor
    from lessor.cli.render import EventPrinter
    from lessor.leasing.archive import Archive

    if args.archive and not args.run:
        raise ValueError("--archive reads one run's history: give --run ID")
    namespace = args.namespace or DEFAULT_NAMESPACE
    if args.namespace:
        from lessor.core.ids import check_namespace

        check_namespace(args.namespace)

    async def run() -> None:
        printer = EventPrinter(as_json=args.json)
        shown = 0
        async with lessor.connect(url_of(args)) as client:
            seen: set[tuple[str, int]] = set()   # (entry id, index): an entry holds one call's events
            if args.archive:   # archived first (older), then what the server still holds
                partition = client.backend.keys_for_run(namespace, args.run).partition
                for event in Archive(args.archive).run_events(namespace, args.run, partition):
                    printer.print(partition, event)
                    seen.add((event.id, event.index))
                    shown += 1
            async for entry in client.entries(args.run, namespace=namespace, follow=args.follow):
                # Without --run every namespace's events come; --namespace keeps one's.
                if (entry.event.id, entry.event.index) not in seen and (args.run or not args.namespace or entry.event.ns == namespace):
                    printer.print(entry.partition, entry.event)
                    shown += 1
        if args.run and not shown:
            raise ValueError(f"no events of run {namespace}/{args.run}: check the id and "
                             "--namespace (`lessor runs --namespace ...`)")

    anyio.run(run)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """`lessor replay [--verify]`: fold the streams; with --verify, exit 1 if the live state differs."""
    from lessor.cli.render import print_replay, replay_to_json
    from lessor.leasing.backend import open_backend
    from lessor.leasing.archive import Archive
    from lessor.leasing.replay import replay, verify

    async def run() -> dict:
        async with open_backend(url_of(args)) as backend:
            world = await replay(backend, Archive(args.archive) if args.archive else None)
            diffs = await verify(backend, world) if args.verify else []
        return replay_to_json(world, args.verify, diffs)

    summary = anyio.run(run)
    if args.json:
        print(json.dumps(summary))
    else:
        print_replay(summary)
    return 1 if summary["differences"] else 0
