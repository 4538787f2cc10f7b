"""Options several ``lessor`` commands share, and the server URL they resolve to."""

from __future__ import annotations

import argparse
import os

NS_HELP = "project/domain the run lives in (default: proj/development)"


def add_url(p: argparse.ArgumentParser) -> None:
    """--redis-url: the shared server (url_of resolves it)."""
    p.add_argument("--redis-url", metavar="URL",
                   help="the shared server (default: $LESSOR_REDIS_URL; start one with `lessor server`)")


def add_namespace(p: argparse.ArgumentParser) -> None:
    """--namespace: project/domain, default proj/development."""
    p.add_argument("--namespace", default="proj/development", help=NS_HELP)


def add_durability(p: argparse.ArgumentParser) -> None:
    """--durability MODE, default $LESSOR_DURABILITY or memory (checked where it is used)."""
    p.add_argument("--durability", default=os.environ.get("LESSOR_DURABILITY", "memory"),
                   metavar="MODE",
                   help="when a write counts as acknowledged: memory (default), fsync (WAITAOF: on the "
                        "server's disk), replicas:N (WAIT: on N replicas) or fsync+replicas:N "
                        "(default: $LESSOR_DURABILITY or memory)")


def url_of(args: argparse.Namespace) -> str:
    """The shared server's URL for this command: --redis-url, else $LESSOR_REDIS_URL.

    Raises ServerError saying how to start one if neither is given.
    """
    from lessor.leasing.urls import shared_url

    return shared_url(getattr(args, "redis_url", None), args.command)
