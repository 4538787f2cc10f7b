"""The argument parser of every ``lessor`` subcommand; each command module adds its own."""

from __future__ import annotations

import argparse

from lessor.cli import bench, fairshare, fleet, logs, processes, retention, runs, schedule, server, settings, trigger, ui


def build_parser() -> argparse.ArgumentParser:
    """The ``lessor`` parser; the parsed args carry the command's ``handler``."""
    from lessor import __version__

    parser = argparse.ArgumentParser(
        prog="lessor",
        description="lessor: fenced leases, heartbeats with grace, a reaper and an "
                    "event log in Redis Streams, for workflow control planes.",
        epilog="Run `lessor server` in one terminal and export the LESSOR_REDIS_URL it prints "
               "to share one server between commands.",
    )
    parser.add_argument("--version", action="version", version=f"lessor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (server, logs, runs, fleet, schedule, trigger, settings, processes, retention, fairshare, bench, ui):
        module.add_commands(sub)
    return parser
