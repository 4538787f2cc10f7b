"""``lessor server`` runs a server to share; ``lessor doctor`` checks one before use."""

from __future__ import annotations

import argparse
import json
import signal
import threading

import anyio

from lessor.cli.options import add_durability, add_url, url_of


def add_commands(sub) -> None:
    """Add `server` and `doctor` to the subparsers ``sub``."""
    p = sub.add_parser("server", help="run an embedded Valkey server in the foreground, print its URL")
    p.add_argument("--appendfsync", choices=["always", "everysec", "no"], default="everysec",
                   help="AOF fsync policy (default everysec: at most ~1 s of writes lost on a crash)")
    p.add_argument("--port", type=int, default=0,
                   help="TCP port on 127.0.0.1 (default: the one this data dir used last, if free, else a "
                        "free one)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--data-dir", "--dir", dest="dir", metavar="DIR",
                       help="where the server keeps its data (AOF), socket and log (default: the user data "
                            "dir, e.g. ~/.local/share/lessor/server; $XDG_DATA_HOME is honoured), so data and "
                            "URL outlive a restart. With --cluster or --sentinel: their data dir (default: a "
                            "temp dir)")
    where.add_argument("--ephemeral", action="store_true",
                       help="a temp dir removed on exit: nothing is kept, and the URL changes every time")
    p.add_argument("--on-crash", choices=["restart", "exit"], default="restart",
                   help="when valkey-server dies by itself: restart it on the same dir, port and socket (it "
                        "reloads its AOF; clients reconnect to the same URL), or exit non-zero at once "
                        "(default restart)")
    p.add_argument("--max-crashes", type=int, default=5, metavar="N",
                   help="with --on-crash restart: exit non-zero at the N-th crash within 60 s (default 5)")
    topology = p.add_mutually_exclusive_group()
    topology.add_argument("--cluster", type=int, metavar="PRIMARIES",
                          help="start a local Redis-compatible Cluster of this many primaries (>= 3) instead, and "
                               "print its redis+cluster:// URL")
    topology.add_argument("--sentinel", action="store_true",
                          help="start a primary, its replicas and the Sentinels watching them instead, and print "
                               "their redis+sentinel:// URL (service lessor)")
    p.add_argument("--replicas", type=int, metavar="N",
                   help="with --cluster: replicas per primary (default 0); with --sentinel: replicas of the "
                        "primary (default 1)")
    p.add_argument("--sentinels", type=int, default=3, metavar="N",
                   help="with --sentinel: how many sentinels (default 3; a majority must agree on a failover)")
    p.set_defaults(handler=cmd_server)

    p = sub.add_parser("doctor", help="check a server before use: version, persistence, ACL, cluster, "
                                      "failover readiness, clocks, layout")
    add_url(p)
    add_durability(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--migrate", action="store_true",
                   help="first move state an older lessor left in an old layout (runs with a hash of their "
                        "own) into today's; run it once every older lessor process has stopped")
    p.set_defaults(handler=cmd_doctor)


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
    if args.sentinel:
        return _serve_sentinel(args)
    if args.max_crashes < 1:
        raise ValueError(f"--max-crashes must be at least 1, got {args.max_crashes}")
    from lessor.server import check_data_dir, default_data_dir, remember_port, remembered_port

    # Ctrl-C and SIGTERM set a flag the supervision loop reads, rather than raising
    # KeyboardInterrupt at an arbitrary point: one raised inside subprocess's wait() can leave
    # its internal lock taken, and stopping the child then waits forever (seen in make test).
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    workdir = None if args.ephemeral else args.dir or default_data_dir()
    port = args.port
    if workdir is not None:
        check_data_dir(workdir)   # a server already on it, or a socket path too long: say so, start nothing
        port = port or remembered_port(workdir)
    server = EmbeddedServer(appendfsync=args.appendfsync, port=port, workdir=workdir,
                            own_process_group=True)
    with server:
        if workdir is not None:
            remember_port(workdir, server.port)
        print(f"lessor server (valkey) ready, appendfsync={args.appendfsync}, on crash: {args.on_crash}",
              flush=True)
        print(f"  export LESSOR_REDIS_URL={server.url}", flush=True)
        kept = "kept: the same URL next time" if workdir is not None else "ephemeral: removed on exit"
        print(f"  tcp: {server.tcp_url}   data: {server.workdir} ({kept})   log: {server.log_path}   "
              "(Ctrl-C to stop)", flush=True)
        supervise(server, on_crash=args.on_crash, max_crashes=args.max_crashes, stop=stop)
    return 0


def _serve_cluster(args: argparse.Namespace) -> int:
    """`lessor server --cluster N [--replicas R]`: a local cluster in the foreground until Ctrl-C/SIGTERM."""
    from lessor.cluster import LocalCluster

    replicas = args.replicas or 0
    cluster = LocalCluster(primaries=args.cluster, replicas=replicas, appendfsync=args.appendfsync,
                           workdir=args.dir)
    with cluster:
        print(f"lessor server: a local cluster of {args.cluster} primaries x {1 + replicas} nodes ready "
              f"(appendfsync={args.appendfsync})", flush=True)
        print(f"  export LESSOR_REDIS_URL={cluster.url}", flush=True)
        print(f"  data: {cluster.workdir}   (Ctrl-C to stop)", flush=True)
        _serve_until_stopped()
    return 0


def _serve_sentinel(args: argparse.Namespace) -> int:
    """`lessor server --sentinel [--replicas R] [--sentinels S]`: in the foreground until Ctrl-C/SIGTERM."""
    from lessor.cluster import LocalSentinel

    replicas = 1 if args.replicas is None else args.replicas
    group = LocalSentinel(replicas=replicas, sentinels=args.sentinels, appendfsync=args.appendfsync,
                          workdir=args.dir)
    with group:
        print(f"lessor server: a primary, {replicas} replica(s) and {args.sentinels} sentinel(s) ready "
              f"(quorum {group.quorum}, appendfsync={args.appendfsync})", flush=True)
        print(f"  export LESSOR_REDIS_URL={group.url}", flush=True)
        print(f"  primary: 127.0.0.1:{group.servers[0].port}   replicas: "
              f"{', '.join(f'127.0.0.1:{s.port}' for s in group.servers[1:]) or 'none'}   data: {group.workdir}"
              "   (Ctrl-C to stop)", flush=True)
        _serve_until_stopped()
    return 0


def _serve_until_stopped() -> None:
    """Block until Ctrl-C or SIGTERM (the caller's ``with`` then stops every process it started)."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass


def _migrate(url: str) -> None:
    """Move old-layout runs onto their root actions, with progress on stderr."""
    import sys

    from lessor.cli.render import plural
    from lessor.leasing.backend import make_redis
    from lessor.leasing.migrate import move_runs

    async def go():
        redis = make_redis(url)
        try:
            return await move_runs(redis, on_progress=lambda n: print(f"moved {n:,} runs ...", file=sys.stderr))
        finally:
            await redis.aclose()

    report = anyio.run(go)
    print(f"migrate: {plural(report.moved, 'run')} moved onto their root action's hash, "
          f"{plural(report.orphans, 'old hash', 'old hashes')} of runs already retired deleted", file=sys.stderr)


def cmd_doctor(args: argparse.Namespace) -> int:
    """`lessor doctor`: read-only checks of the shared server (after ``--migrate``'s move, if
    given); exit 1 if any fails."""
    from lessor.cli.render import print_checks
    from lessor.doctor import as_dicts, run_checks

    if args.migrate:
        _migrate(url_of(args))
    checks = anyio.run(run_checks, url_of(args), args.durability)
    if args.json:
        print(json.dumps(as_dicts(checks), indent=1))
    else:
        print_checks(checks)
    return 1 if any(c.status == "fail" for c in checks) else 0
