"""Long-running processes: ``lessor worker``, ``reaper``, ``demo``, ``simulate`` and ``chaos``."""

from __future__ import annotations

import argparse
import os

import anyio

from lessor.cli.options import add_durability, add_url, url_of


def add_commands(sub) -> None:
    """Add `worker`, `reaper`, `demo`, `simulate` and `chaos` to the subparsers ``sub``."""
    _add_worker(sub)

    p = sub.add_parser("reaper", help="run the reaper: expire leases past deadline + grace, fail over")
    add_url(p)
    p.add_argument("--interval-ms", type=int, default=200, help="time between passes (default 200)")
    p.add_argument("--limit", type=int, default=500, help="leases per script call (bounded batches)")
    p.add_argument("--budget-ms", type=float, default=2.0,
                   help="server CPU a reap call may use before it stops and is called again (default 2)")
    p.add_argument("--in-flight", type=int, default=1,
                   help="reap calls outstanding at once (default 1; on a Cluster, up to the primaries)")
    p.add_argument("--archive", help="also compact the log: archive events to this directory (gzip JSON lines), "
                                     "snapshot the state, trim the stream (see docs/retention.md)")
    p.add_argument("--keep-window", default="60s", help="with --archive: never trim the newest events of this "
                                                        "window, so slow followers keep their place (default 60s)")
    add_durability(p)
    p.add_argument("--otel", choices=["console", "otlp"], help="turn on OpenTelemetry")
    p.set_defaults(handler=cmd_reaper)

    p = sub.add_parser("demo", help="the lease story end to end: pause a worker, fail over, refuse its late report")
    p.add_argument("--children", type=int, default=20, help="children of the root action (default 20)")
    p.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    p.add_argument("--quiet", action="store_true", help="only the summary")
    p.add_argument("--redis-url", metavar="URL",
                   help="tell the story on this server (redis://, redis+cluster://, redis+sentinel://...) instead "
                        "of a private embedded one; its runs stay there, in namespace demo/development")
    p.set_defaults(handler=cmd_demo)

    from lessor.simulations import cli as sim_cli

    p = sub.add_parser("simulate", help="deterministic chaos: hypothesis-generated fault plans on the real server, "
                                        "checked from the log; --replay a saved plan")
    sim_cli.add_arguments(p)
    p.set_defaults(handler=sim_cli.main)

    from lessor.simulations.chaos import live as chaos_live

    p = sub.add_parser("chaos", help="live chaos: real workers through proxies, SIGSTOP/SIGKILL, a server "
                                     "restart; same checkers")
    chaos_live.add_arguments(p)
    p.set_defaults(handler=chaos_live.main)


def _add_worker(sub) -> None:
    p = sub.add_parser("worker", help="run tasks from a queue (SIGTERM/Ctrl-C: drain, then release)")
    add_url(p)
    p.add_argument("--app", required=True, metavar="MODULE:REGISTRY",
                   help="where the tasks are, e.g. myapp.tasks:registry")
    p.add_argument("--queue", default="default", help="queue to take work from (default: default)")
    p.add_argument("--namespace", default="proj/development",
                   help="project/domain to take work from (default proj/development), or '*' for every "
                        "namespace of the queue by fair share (lessor fairshare)")
    p.add_argument("--concurrency", type=int, default=8, help="actions run at once (default 8)")
    p.add_argument("--worker-id", help="default: w-<host>-<pid>")
    p.add_argument("--ttl-ms", type=int, default=30_000, help="lease time to live (default 30000)")
    p.add_argument("--grace-ms", type=int, default=10_000, help="grace after the deadline (default 10000)")
    p.add_argument("--heartbeat-ms", type=int, help="default: ttl / 3")
    p.add_argument("--margin-ms", type=int,
                   help="self-fence this long before ttl + grace runs out (default: 10%% of ttl + grace)")
    p.add_argument("--drain-s", type=float, default=10.0, help="time running actions get on shutdown")
    add_durability(p)
    p.add_argument("--no-reap", action="store_true",
                   help="do not reap (by default every worker reaps, one pass per partition per interval "
                        "across the fleet, so leases expire while any worker lives)")
    p.add_argument("--otel", choices=["console", "otlp"], help="turn on OpenTelemetry")
    p.add_argument("--truth-log", metavar="PATH",
                   help="append one JSON line per attempt: when it really ran (evidence for `lessor chaos`)")
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="the log on stdout, with one line per task start and end: text (default), or json: one "
                        "object per line (ts, event, namespace, run, action, task, attempt, token, worker; at the "
                        "end duration_ms and outcome)")
    p.add_argument("--no-task-log", action="store_true",
                   help="no per-task lines (they cost a few us per action; benchmarks turn them off)")
    p.add_argument("--no-uvloop", action="store_true")
    p.set_defaults(handler=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    """`lessor worker`: scheduler/worker_main.py runs it until SIGTERM/Ctrl-C."""
    from lessor.scheduler.worker_main import run_worker

    return run_worker(args)


def cmd_reaper(args: argparse.Namespace) -> int:
    """`lessor reaper`: reap every interval until stopped, one line per pass that changed something."""
    from lessor import telemetry
    from lessor.leasing.backend import open_backend
    from lessor.leasing.archive import Archive
    from lessor.leasing.housekeeping import Housekeeper
    from lessor.leasing.reaper import Reaper
    from lessor.leasing.retention import parse_duration
    from lessor.scheduler.schedules import Ticker

    archive = Archive(args.archive) if args.archive else None

    def report(r) -> None:
        if r.expired or r.timed_out or r.promoted:
            print(f"reaper: expired={r.expired} timed_out={r.timed_out} promoted={r.promoted} "
                  f"lag_ms={r.lag_ms} max_call_ms={r.max_call_ms:.1f}", flush=True)

    telemetry.setup(args.otel)

    async def run() -> None:
        async with open_backend(url_of(args), durability=args.durability, wait_for_server=True) as backend:
            print(f"reaper on {backend.url}: every {args.interval_ms} ms, {args.limit} per batch, "
                  f"durability {backend.durability}"
                  + (f", archiving to {archive.directory}" if archive else ""), flush=True)
            keeper = Housekeeper(backend, archive, keep_window_ms=parse_duration(args.keep_window))
            async with anyio.create_task_group() as tg:
                tg.start_soon(keeper.run)   # retention (and compaction, with --archive)
                tg.start_soon(Ticker(backend, f"reaper-{os.getpid()}").run)   # schedules
                await Reaper(backend, limit=args.limit, interval_ms=args.interval_ms, shared=True,
                             budget_ms=args.budget_ms, max_in_flight=args.in_flight).run(on_pass=report)

    anyio.run(run)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`lessor demo` (make demo): cli/demo.py; exit 1 if any of its checks failed."""
    from lessor.cli.demo import run_demo

    return run_demo(children=args.children, workers=args.workers, quiet=args.quiet, url=args.redis_url)
