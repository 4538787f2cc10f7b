"""``lessor ui``: the web dashboard (``lessor/ui``), served by uvicorn."""

from __future__ import annotations

import argparse
import signal
import sys

from lessor.cli.options import add_namespace, add_url, url_of


def add_commands(sub) -> None:
    """Add `ui` to the subparsers ``sub``."""
    p = sub.add_parser("ui", help="a web dashboard: runs, run trees and lease timelines, workers, queues, "
                                  "retries and failovers, a live event tail (read-only unless --allow-abort)")
    add_url(p)
    add_namespace(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                                                       "the dashboard has no login)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--allow-abort", action="store_true", help="show an Abort button on running runs")
    p.set_defaults(handler=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    """`lessor ui`: serve the dashboard until Ctrl-C (or SIGTERM)."""
    from lessor.leasing.urls import redact
    from lessor.ui.app import is_loopback, serve

    url = url_of(args)
    mode = "abort enabled" if args.allow_abort else "read-only"
    print(f"lessor ui: http://{args.host}:{args.port}/ ({mode}) on {redact(url)}; Ctrl-C stops it",
          flush=True)
    if not is_loopback(args.host):
        print(f"lessor ui: listening on {args.host}: anyone who can reach it can read every run"
              + (" and abort runs" if args.allow_abort else ""), file=sys.stderr, flush=True)
    # uvicorn shuts down gracefully on SIGTERM and then raises it again in this process: with a
    # handler that returns, that ends in exit code 0 (as `lessor server` does) instead of death by signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    serve(url, host=args.host, port=args.port, namespace=args.namespace, allow_abort=args.allow_abort)
    return 0
