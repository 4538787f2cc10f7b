"""The ``lessor`` command.

Every subcommand takes ``--redis-url`` (default: $LESSOR_REDIS_URL, else a
private embedded server for the life of the command; run ``lessor server`` to
share one between processes). ``--json`` prints what a script would read.
Errors are one line naming what was wrong and what to do; exit codes:
0 ok, 1 check failed (e.g. replay --verify found differences), 2 usage or
lessor error, 3 server unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

import anyio

from lessor.core.phases import Phase
from lessor.errors import LessorError, ServerError


NS_HELP = "project/domain the run lives in (default: proj/development)"


def _add_url(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", metavar="URL",
                   help="the shared server (default: $LESSOR_REDIS_URL; start one with `lessor server`)")


def _add_durability(p: argparse.ArgumentParser) -> None:
    p.add_argument("--durability", default=os.environ.get("LESSOR_DURABILITY", "memory"),
                   metavar="MODE",
                   help="when a write counts as acknowledged: memory (default), fsync (WAITAOF: on the "
                        "server's disk), replicas:N (WAIT: on N replicas) or fsync+replicas:N "
                        "(default: $LESSOR_DURABILITY or memory)")


def shared_url(args: argparse.Namespace) -> str:
    """The URL of the shared server a client command must use; ServerError if none is given.

    A private embedded server would vanish with the command (and a submitted
    run with it), so commands that talk to other processes need a real one.
    """
    from lessor.leasing.backend import resolve_url

    url = resolve_url(getattr(args, "redis_url", None))
    if url is None:
        raise ServerError(
            f"`lessor {args.command}` needs the shared server: start one with `lessor server` and export "
            "the LESSOR_REDIS_URL it prints (or pass --redis-url)")
    return url


def split_run(args: argparse.Namespace) -> tuple[str, str]:
    """(namespace, run id) from ID or a full project/domain/ID as `lessor submit` prints it."""
    parts = args.run_id.split("/")
    if len(parts) == 3:
        return f"{parts[0]}/{parts[1]}", parts[2]
    return args.namespace, args.run_id


def _add_log_commands(sub) -> None:
    """events, replay: reading the log."""
    p = sub.add_parser("events", help="print the event log readably (or as JSON lines)")
    _add_url(p)
    p.add_argument("--run", metavar="ID", help="only this run's events")
    p.add_argument("--namespace", default="proj/development", help=NS_HELP)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--json", action="store_true", help="one JSON object per event")

    p = sub.add_parser("replay", help="rebuild all state from the streams alone")
    _add_url(p)
    p.add_argument("--verify", action="store_true",
                   help="compare with the live projection; exit 1 printing every difference")
    p.add_argument("--json", action="store_true")


def _add_run_commands(sub) -> None:
    """submit, runs, run show, abort: what a control plane does."""
    p = sub.add_parser("submit", help="submit a run (its root action a0 is queued)")
    _add_url(p)
    p.add_argument("task")
    p.add_argument("--inputs", default="null", help="inputs as JSON (a URI or a small value)")
    p.add_argument("--namespace", default="proj/development", help=NS_HELP)
    p.add_argument("--queue", default="default", help="queue the root action waits on (default: default)")
    p.add_argument("--idempotency-key", help="a repeated key returns the first run; nothing is submitted twice")
    _add_durability(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("runs", help="list runs of a namespace, newest first")
    _add_url(p)
    p.add_argument("--namespace", default="proj/development", help=NS_HELP)
    p.add_argument("--phase", choices=[ph.value for ph in Phase])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor", help="cursor printed by the previous page")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="one run: `lessor run show ID` prints its execution tree")
    p.add_argument("verb", choices=["show"], help="show: the execution tree")
    p.add_argument("run_id", metavar="ID", help="run id, or project/domain/id")
    _add_url(p)
    p.add_argument("--namespace", default="proj/development", help=NS_HELP)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("abort", help="abort a run: queued actions now, running ones at their next heartbeat")
    p.add_argument("run_id", metavar="ID", help="run id, or project/domain/id")
    _add_url(p)
    p.add_argument("--namespace", default="proj/development", help=NS_HELP)
    p.add_argument("--reason", default="aborted by user")
    p.add_argument("--json", action="store_true")


def _add_process_commands(sub) -> None:
    """worker, demo, simulate, chaos, reaper: long-running processes."""
    p = sub.add_parser("worker", help="run tasks from a queue (SIGTERM/Ctrl-C: drain, then release)")
    _add_url(p)
    p.add_argument("--app", required=True, metavar="MODULE:REGISTRY",
                   help="where the tasks are, e.g. myapp.tasks:registry")
    p.add_argument("--queue", default="default", help="queue to take work from (default: default)")
    p.add_argument("--namespace", default="proj/development", help=NS_HELP)
    p.add_argument("--concurrency", type=int, default=8, help="actions run at once (default 8)")
    p.add_argument("--worker-id", help="default: w-<host>-<pid>")
    p.add_argument("--ttl-ms", type=int, default=30_000, help="lease time to live (default 30000)")
    p.add_argument("--grace-ms", type=int, default=10_000, help="grace after the deadline (default 10000)")
    p.add_argument("--heartbeat-ms", type=int, help="default: ttl / 3")
    p.add_argument("--margin-ms", type=int,
                   help="self-fence this long before ttl + grace runs out (default: 10%% of ttl + grace)")
    p.add_argument("--drain-s", type=float, default=10.0, help="time running actions get on shutdown")
    _add_durability(p)
    p.add_argument("--no-reap", action="store_true",
                   help="do not reap (by default every worker reaps, one pass per partition per interval "
                        "across the fleet, so leases expire while any worker lives)")
    p.add_argument("--otel", choices=["console", "otlp"], help="turn on OpenTelemetry")
    p.add_argument("--truth-log", metavar="PATH",
                   help="append one JSON line per attempt: when it really ran (evidence for `lessor chaos`)")
    p.add_argument("--no-uvloop", action="store_true")

    p = sub.add_parser("demo", help="the lease story end to end: pause a worker, fail over, refuse its late report")
    p.add_argument("--children", type=int, default=20, help="children of the root action (default 20)")
    p.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    p.add_argument("--quiet", action="store_true", help="only the summary")

    from lessor.simulations import cli as sim_cli

    sim_cli.add_arguments(sub.add_parser(
        "simulate", help="deterministic chaos: hypothesis-generated fault plans on the real server, "
                         "checked from the log; --replay a saved plan"))

    from lessor.simulations.chaos import live as chaos_live

    chaos_live.add_arguments(sub.add_parser(
        "chaos", help="live chaos: real workers through proxies, SIGSTOP/SIGKILL, a server restart; same checkers"))

    p = sub.add_parser("doctor", help="check a server before use: version, persistence, ACL, cluster, clocks")
    _add_url(p)
    _add_durability(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("reaper", help="run the reaper: expire leases past deadline + grace, fail over")
    _add_url(p)
    p.add_argument("--interval-ms", type=int, default=200, help="time between passes (default 200)")
    p.add_argument("--limit", type=int, default=500, help="leases per script call (bounded batches)")
    _add_durability(p)
    p.add_argument("--otel", choices=["console", "otlp"], help="turn on OpenTelemetry")


def _add_bench_commands(sub) -> None:
    """bench ...: numbers as ratios to the server's own limit."""
    bench = sub.add_parser("bench", help="benchmarks (numbers as ratios to the server's own limit)")
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    from lessor.benchmarks import heartbeat as hb_bench
    from lessor.benchmarks import eventlog as log_bench
    from lessor.benchmarks import schedule as sched_bench

    hb_bench.add_arguments(bsub.add_parser("heartbeat", help="lease renewals/s vs the server's limit"))
    log_bench.add_arguments(bsub.add_parser("eventlog", help="event appends/s vs plain XADD"))
    sched_bench.add_arguments(bsub.add_parser("schedule", help="end-to-end actions/s vs the server's limit"))
    from lessor.benchmarks import simulate as sim_bench

    sim_bench.add_arguments(bsub.add_parser("simulate", help="simulated scenarios per minute at a fixed size"))
    from lessor.benchmarks import failover as failover_bench

    failover_bench.add_arguments(bsub.add_parser("failover", help="time until a dead worker's actions run elsewhere"))
    for b in bsub.choices.values():
        _add_url(b)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="lessor",
        description="lessor: fenced leases, heartbeats with grace, a reaper and an "
                    "event log in Redis Streams, for workflow control planes.",
        epilog="Run `lessor server` in one terminal and export the LESSOR_REDIS_URL it prints "
               "to share one server between commands.",
    )
    from lessor import __version__

    parser.add_argument("--version", action="version", version=f"lessor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("server", help="run an embedded Valkey server in the foreground, print its URL")
    p.add_argument("--appendfsync", choices=["always", "everysec", "no"], default="everysec",
                   help="AOF fsync policy (default everysec: at most ~1 s of writes lost on a crash)")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free one)")
    p.add_argument("--dir", help="data dir to keep (default: a temp dir removed on exit)")
    p.add_argument("--on-crash", choices=["restart", "exit"], default="restart",
                   help="when valkey-server dies by itself: restart it on the same dir, port and socket (it "
                        "reloads its AOF; clients reconnect to the same URL), or exit non-zero at once "
                        "(default restart)")
    p.add_argument("--max-crashes", type=int, default=5, metavar="N",
                   help="with --on-crash restart: exit non-zero at the N-th crash within 60 s (default 5)")
    p.add_argument("--cluster", type=int, metavar="PRIMARIES",
                   help="start a local Redis-compatible Cluster of this many primaries (>= 3) instead, and print "
                        "its redis+cluster:// URL")
    p.add_argument("--replicas", type=int, default=0, metavar="N", help="with --cluster: replicas per primary")

    _add_log_commands(sub)
    _add_run_commands(sub)
    _add_process_commands(sub)
    _add_bench_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lessor`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command]
    try:
        return handler(args) or 0
    except ServerError as exc:
        _err(f"lessor: {exc}")
        return 3
    except (LessorError, ValueError) as exc:
        _err(f"lessor: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


def _err(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(message, style="bold red", highlight=False, markup=False, soft_wrap=True)


# --- server -----------------------------------------------------------------------------


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM stops `lessor server` as Ctrl-C does: the server is stopped too


def cmd_server(args: argparse.Namespace) -> int:
    """Run the server in the foreground and watch it: it never sits up silently with a dead child.

    A child that dies by itself is restarted on the same dir, port and socket (or, with
    --on-crash exit, ends the command with exit code 3), one stderr line each; SIGTERM or
    Ctrl-C stops the child and exits 0. The child has its own process group, so a
    terminal's Ctrl-C reaches only this process and is never mistaken for a crash.
    """
    from lessor.server import EmbeddedServer, supervise

    if args.cluster is not None:
        return _serve_cluster(args)
    if args.max_crashes < 1:
        raise ValueError(f"--max-crashes must be at least 1, got {args.max_crashes}")
    server = EmbeddedServer(appendfsync=args.appendfsync, port=args.port, workdir=args.dir,
                            own_process_group=True)
    with server:
        print(f"lessor server (valkey) ready, appendfsync={args.appendfsync}, on crash: {args.on_crash}",
              flush=True)
        print(f"  export LESSOR_REDIS_URL={server.url}", flush=True)
        print(f"  tcp: {server.tcp_url}   data: {server.workdir}   log: {server.log_path}   (Ctrl-C to stop)",
              flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            supervise(server, on_crash=args.on_crash, max_crashes=args.max_crashes)
        except KeyboardInterrupt:
            pass
    return 0


def _serve_cluster(args: argparse.Namespace) -> int:
    """`lessor server --cluster N [--replicas R]`: a local cluster in the foreground until Ctrl-C/SIGTERM."""
    from lessor.cluster import LocalCluster

    cluster = LocalCluster(primaries=args.cluster, replicas=args.replicas, appendfsync=args.appendfsync,
                           workdir=args.dir)
    with cluster:
        print(f"lessor server: a local cluster of {args.cluster} primaries x {1 + args.replicas} nodes ready "
              f"(appendfsync={args.appendfsync})", flush=True)
        print(f"  export LESSOR_REDIS_URL={cluster.url}", flush=True)
        print(f"  data: {cluster.workdir}   (Ctrl-C to stop)", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


# --- events -----------------------------------------------------------------------------


def event_to_json(partition: int, event: Any) -> dict:
    """A JSON-ready dict of an event (blobs decoded as msgpack when they are, else hex)."""
    import dataclasses

    from lessor.scheduler.values import show_value

    out = {"partition": partition, "id": event.id, "type": event.TYPE}
    for f in dataclasses.fields(event):
        if f.name in ("id", "extra"):
            continue
        value = getattr(event, f.name)
        out[f.name] = show_value(value) if isinstance(value, bytes) else value
    if event.extra:
        out["extra"] = {k: repr(v) for k, v in event.extra.items()}
    return out


def cmd_events(args: argparse.Namespace) -> int:
    from lessor.leasing.backend import open_backend
    from lessor.leasing.eventlog import EventLog
    from lessor.scheduler.render import EventPrinter

    async def run() -> None:
        async with open_backend(shared_url(args)) as backend:
            log = EventLog(backend)
            printer = EventPrinter(as_json=args.json)
            if args.run:
                p = backend.keys_for_run(args.namespace, args.run).partition
                found = await log.run_events(args.namespace, args.run)
                if not found and not args.follow:
                    raise ValueError(f"no events of run {args.namespace}/{args.run}: check the id and "
                                     "--namespace (`lessor runs --namespace ...`)")
                for e in found:
                    printer.print(p, e)
            else:
                for entry in await log.read_all():
                    printer.print(entry.partition, entry.event)
            printer.flush()
            if args.follow:
                async for entry in log.follow():
                    if args.run and (entry.event.run != args.run or entry.event.ns != args.namespace):
                        continue
                    printer.print(entry.partition, entry.event, live=True)

    anyio.run(run)
    return 0


# --- replay -----------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    from collections import Counter

    from rich.console import Console

    from lessor.leasing.backend import open_backend
    from lessor.leasing.replay import replay, verify

    async def run() -> int:
        async with open_backend(shared_url(args)) as backend:
            world = await replay(backend)
            diffs = await verify(backend, world) if args.verify else []
        phases = Counter(a.phase.value for a in world.actions.values())
        summary = {"events": world.events, "runs": len(world.runs), "actions": len(world.actions),
                   "action_phases": dict(phases), "verified": args.verify,
                   "differences": [str(d) for d in diffs]}
        if args.json:
            print(json.dumps(summary))
        else:
            console = Console()
            console.print(f"replayed {world.events} events: {len(world.runs)} runs, "
                          f"{len(world.actions)} actions " + ", ".join(f"{k}={v}" for k, v in sorted(phases.items())))
            if args.verify:
                for d in diffs:
                    console.print(f"  DIFF {d}", style="red", markup=False)
                console.print("verify: " + ("live projection equals the fold of the log" if not diffs
                                            else f"{len(diffs)} differences"),
                              style="green" if not diffs else "bold red")
        return 1 if diffs else 0

    return anyio.run(run)


# --- submit -----------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    from lessor.leasing.backend import open_backend
    from lessor.scheduler.submit import submit_run
    from lessor.scheduler.values import pack_value

    try:
        inputs = json.loads(args.inputs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--inputs must be JSON ({exc}); e.g. --inputs '{{\"uri\": \"s3://b/k\"}}'") from None

    async def run() -> None:
        async with open_backend(shared_url(args), durability=args.durability) as backend:
            s = await submit_run(backend, args.task, inputs=pack_value(inputs), namespace=args.namespace,
                                 queue=args.queue, idempotency_key=args.idempotency_key)
        if args.json:
            print(json.dumps({"namespace": s.namespace, "run": s.run_id, "created": s.created}))
        else:
            print(f"{'submitted' if s.created else 'already submitted'}: run {s.run_id} (namespace {s.namespace})")

    anyio.run(run)
    return 0


# --- reaper -----------------------------------------------------------------------------


def cmd_reaper(args: argparse.Namespace) -> int:
    from lessor.leasing.backend import open_backend
    from lessor.leasing.reaper import Reaper

    def report(r) -> None:
        if r.expired or r.timed_out or r.promoted:
            print(f"reaper: expired={r.expired} timed_out={r.timed_out} promoted={r.promoted} "
                  f"lag_ms={r.lag_ms}", flush=True)

    from lessor import telemetry

    telemetry.setup(args.otel)

    async def run() -> None:
        async with open_backend(shared_url(args), durability=args.durability, wait_for_server=True) as backend:
            print(f"reaper on {backend.url}: every {args.interval_ms} ms, {args.limit} per batch, "
                  f"durability {backend.durability}", flush=True)
            await Reaper(backend, limit=args.limit, interval_ms=args.interval_ms, shared=True).run(on_pass=report)

    anyio.run(run)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """`lessor doctor`: read-only checks of the shared server; exit 1 if any fails."""
    from lessor.doctor import as_dicts, run_checks

    checks = anyio.run(run_checks, shared_url(args), args.durability)
    if args.json:
        print(json.dumps(as_dicts(checks), indent=1))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="lessor doctor")
        for col in ("check", "status", "finding"):
            table.add_column(col, overflow="fold")
        colour = {"ok": "green", "warn": "yellow", "fail": "bold red"}
        for c in checks:
            table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail)
        Console().print(table)
    return 1 if any(c.status == "fail" for c in checks) else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from lessor.benchmarks import eventlog as log_bench
    from lessor.benchmarks import heartbeat as hb_bench
    from lessor.benchmarks import schedule as sched_bench

    from lessor.benchmarks import simulate as sim_bench

    from lessor.benchmarks import failover as failover_bench

    mains = {"heartbeat": hb_bench.main, "eventlog": log_bench.main, "schedule": sched_bench.main,
             "simulate": sim_bench.main, "failover": failover_bench.main}
    return mains[args.bench](args)


# --- runs, run show, abort --------------------------------------------------------------


def cmd_runs(args: argparse.Namespace) -> int:
    from lessor.leasing.backend import open_backend
    from lessor.scheduler.query import list_runs
    from lessor.scheduler.render import print_runs, run_to_json

    async def run() -> None:
        async with open_backend(shared_url(args)) as backend:
            page, cursor = await list_runs(backend, args.namespace, args.phase, args.limit, args.cursor)
        if args.json:
            print(json.dumps({"runs": [run_to_json(r) for r in page], "next_cursor": cursor}))
        else:
            print_runs(page, cursor, args.namespace)

    anyio.run(run)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lessor.leasing.backend import open_backend
    from lessor.scheduler.query import get_run, tree
    from lessor.scheduler.render import print_tree, tree_to_json

    async def run() -> None:
        namespace, run_id = split_run(args)
        async with open_backend(shared_url(args)) as backend:
            info = await get_run(backend, namespace, run_id)
            root = await tree(backend, namespace, run_id)
        if args.json:
            print(json.dumps(tree_to_json(info, root)))
        else:
            print_tree(info, root)

    anyio.run(run)
    return 0


def cmd_abort(args: argparse.Namespace) -> int:
    from lessor.leasing.backend import open_backend
    from lessor.scheduler.control import abort_run

    async def run() -> None:
        namespace, run_id = split_run(args)
        async with open_backend(shared_url(args)) as backend:
            out = await abort_run(backend, namespace, run_id, args.reason)
        if args.json:
            print(json.dumps({"aborted_now": out.aborted, "abort_requested": out.requested}))
        else:
            print(f"abort {namespace}/{run_id}: {out.aborted} queued actions aborted, "
                  f"{out.requested} running actions asked to stop")

    anyio.run(run)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from lessor.scheduler.worker_main import run_worker

    return run_worker(args)


def cmd_simulate(args: argparse.Namespace) -> int:
    from lessor.simulations.cli import main as simulate

    return simulate(args)


def cmd_chaos(args: argparse.Namespace) -> int:
    from lessor.simulations.chaos.live import main as chaos

    return chaos(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from lessor.demo import run_demo

    return run_demo(children=args.children, workers=args.workers, quiet=args.quiet)


COMMANDS = {
    "server": cmd_server, "events": cmd_events, "replay": cmd_replay, "submit": cmd_submit,
    "reaper": cmd_reaper, "doctor": cmd_doctor, "bench": cmd_bench, "runs": cmd_runs, "run": cmd_run, "abort": cmd_abort,
    "worker": cmd_worker, "demo": cmd_demo, "simulate": cmd_simulate,
    "chaos": cmd_chaos,
}

if __name__ == "__main__":
    sys.exit(main())
