"""Human-readable rendering of events: one sentence per event, lines and JSON."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from rich.markup import escape

from lessor.core import events as ev


def describe(e: ev.Event) -> str:
    """One plain sentence for an event, in the control plane's words."""
    a = getattr(e, "action", "")
    match e:
        case ev.RunCreated():
            return f"run {e.run} created: task {e.task} on queue {e.queue}"
        case ev.RunCompleted():
            return f"run {e.run} {e.phase}"
        case ev.ActionCreated():
            parent = f" (child of {e.parent})" if e.parent else ""
            return f"action {a} created: task {e.task}{parent}"
        case ev.ActionLeased():
            return f"lease granted: action {a} attempt {e.attempt} to {e.worker}, token {e.token}, ttl {e.ttl_ms} ms + grace {e.grace_ms} ms"
        case ev.LeaseResumed():
            return f"lease resumed in grace: action {a} ({e.worker} renewed {e.late_ms} ms late)"
        case ev.LeaseExpired():
            return f"lease expired for action {a} (attempt {e.attempt}, worker {e.worker}, token {e.token})"
        case ev.ActionRequeued():
            return f"action {a} requeued ({e.reason}): {e.error or ''}".rstrip(": ")
        case ev.ActionSucceeded():
            return f"action {a} succeeded on {e.worker} (attempt {e.attempt}, token {e.token})"
        case ev.ActionFailed():
            return f"action {a} failed ({e.reason}): {e.error or ''}".rstrip(": ")
        case ev.ActionTimedOut():
            return f"action {a} timed out after {e.timeout_ms} ms (attempt {e.attempt})"
        case ev.AbortRequested():
            return f"abort requested for {'run ' + e.run if not a else 'action ' + a}: {e.reason}".rstrip(": ")
        case ev.ActionAborted():
            return f"action {a} aborted: {e.reason}".rstrip(": ")
        case ev.CacheHit():
            return f"action {a} cache hit ({e.cache_key}): completed without running"
        case ev.ReportRejected():
            return (f"stale report refused: {e.kind} for action {a} from {e.worker} with token "
                    f"{e.token} (current {e.current_token})")
    return e.TYPE


def clock_text(ts_ms: int) -> str:
    """HH:MM:SS.mmm of a server timestamp (UTC)."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%H:%M:%S.%f")[:-3]


_STYLES = {"lease_expired": "bold red", "report_rejected": "bold magenta", "action_failed": "red",
           "run_completed": "bold green", "action_succeeded": "green", "lease_resumed": "yellow",
           "action_requeued": "yellow", "action_aborted": "red", "abort_requested": "red"}


class EventPrinter:
    """Prints events as readable lines (rich) or JSON lines."""

    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        from rich.console import Console

        self.console = Console(highlight=False)

    def print(self, partition: int, event: ev.Event, live: bool = False) -> None:
        if self.as_json:
            from lessor.cli import event_to_json

            sys.stdout.write(json.dumps(event_to_json(partition, event)) + "\n")
            sys.stdout.flush()
            return
        self.console.print(
            f"[dim]{clock_text(event.ts)} p{partition}[/dim] [cyan]{event.ns}/{event.run}[/cyan] "
            f"[{_STYLES.get(event.TYPE, 'default')}]{escape(describe(event))}[/]"
        )

    def flush(self) -> None:
        sys.stdout.flush()
