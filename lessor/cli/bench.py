"""``lessor bench ...``: benchmarks, their numbers as ratios to the server's own limit."""

from __future__ import annotations

import argparse

from lessor.cli.options import add_url


def benches() -> dict:
    """name: (module with add_arguments and main, help line), in the order --help lists them."""
    from lessor.benchmarks import (defaults, eventlog, failover, fairness, heartbeat, reapstorm, retention, schedule,
                                   simulate)

    return {"heartbeat": (heartbeat, "lease renewals/s vs the server's limit"),
            "eventlog": (eventlog, "event appends/s vs plain XADD"),
            "schedule": (schedule, "end-to-end actions/s vs the server's limit"),
            "simulate": (simulate, "simulated scenarios per minute at a fixed size"),
            "failover": (failover, "time until a dead worker's actions run elsewhere"),
            "reap-storm": (reapstorm, "reaping 100k expired leases: call ms, clear time, p99s vs before"),
            "retention": (retention, "memory while runs flow through with retention: the plateau, verify time"),
            "defaults": (defaults, "CPU per submit with settings defaults (cached, uncached) and per trigger "
                                   "fire, vs a plain submit"),
            "fairness": (fairness, "fair share: starvation rounds, shares vs weights, acquire cost vs main's")}


def add_commands(sub) -> None:
    """Add `bench` and one subcommand per benchmark to the subparsers ``sub``."""
    bench = sub.add_parser("bench", help="benchmarks (numbers as ratios to the server's own limit)")
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (module, text) in benches().items():
        b = bsub.add_parser(name, help=text)
        module.add_arguments(b)
        add_url(b)
    bench.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """`lessor bench NAME`: that benchmark's main."""
    return benches()[args.bench][0].main(args)
