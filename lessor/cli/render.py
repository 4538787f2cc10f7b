"""What the ``lessor`` command prints: one sentence per event, tables of runs and checks,
execution trees, and the JSON ``--json`` prints instead."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from datetime import datetime, timezone
from typing import Any

from rich.markup import escape

from lessor.core import events as ev
from lessor.core.limits import MAX_TRACEBACK


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
        case ev.SettingsChanged():
            return f"settings of {e.ns} changed to version {e.version}: {e.document}"
        case ev.TriggerCreated():
            return f"trigger {e.trigger} created: task {e.task} on queue {e.queue}, window {e.window_ms} ms"
        case ev.TriggerFired():
            return f"trigger {e.trigger} fired (dedup key {e.dedup_key}): run {e.run}"
        case ev.TriggerDeleted():
            return f"trigger {e.trigger} deleted"
    return e.TYPE


def clock_text(ts_ms: int) -> str:
    """HH:MM:SS.mmm of a server timestamp (UTC)."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%H:%M:%S.%f")[:-3]


# --- events ------------------------------------------------------------------------------

_STYLES = {"lease_expired": "bold red", "report_rejected": "bold magenta", "action_failed": "red",
           "run_completed": "bold green", "action_succeeded": "green", "lease_resumed": "yellow",
           "action_requeued": "yellow", "action_aborted": "red", "abort_requested": "red"}


def event_to_json(partition: int, event: Any) -> dict:
    """A JSON-ready dict of an event (blobs decoded as msgpack when they are, else hex)."""
    from lessor.scheduler.values import show_value

    # id and index together name an event: a stream entry holds the events of one script call.
    out = {"partition": partition, "id": event.id, "index": event.index, "type": event.TYPE}
    for f in dataclasses.fields(event):
        if f.name in ("id", "index", "extra"):
            continue
        value = getattr(event, f.name)
        out[f.name] = show_value(value) if isinstance(value, bytes) else value
    if event.extra:
        out["extra"] = {k: repr(v) for k, v in event.extra.items()}
    return out


class EventPrinter:
    """Prints events as readable lines (rich) or JSON lines, each flushed as it is printed."""

    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        from rich.console import Console

        self.console = Console(highlight=False)

    def print(self, partition: int, event: ev.Event) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(event_to_json(partition, event)) + "\n")
            sys.stdout.flush()
            return
        self.console.print(
            f"[dim]{clock_text(event.ts)} p{partition}[/dim] [cyan]{event.ns}/{event.run}[/cyan] "
            f"[{_STYLES.get(event.TYPE, 'default')}]{escape(describe(event))}[/]", soft_wrap=True
        )


# --- runs and trees ------------------------------------------------------------------

_PHASE_STYLE = {"succeeded": "green", "failed": "red", "aborted": "red", "timed_out": "red",
                "running": "cyan", "queued": "yellow"}


def action_to_json(a) -> dict:
    """A JSON-ready dict of an ActionInfo."""
    from lessor.scheduler.values import show_value

    return {"action": a.action_id, "task": a.task, "phase": a.phase.value, "attempt": a.attempt,
            "token": a.token, "worker": a.worker or None, "parent": a.parent, "error": a.error,
            "traceback": a.traceback,
            "result": show_value(a.result_bytes) if a.result_bytes else None,
            "expirations": a.expirations, "refused_reports": a.rejected, "created_ms": a.created_ms}


def run_status(r) -> str:
    """What `lessor runs` shows and `--phase` filters: ``queued`` until an attempt of the run's root
    has started (its own phase is ``running`` from submit on), then ``running``, then how it ended."""
    if r.done:
        return r.phase.value
    return "queued" if r.root is None or r.root.attempt == 0 else "running"


def run_to_json(r) -> dict:
    """A JSON-ready dict of a RunInfo (``phase``: the run's own; ``status``: as ``run_status``)."""
    return {"namespace": r.namespace, "run": r.run_id, "task": r.task, "queue": r.queue, "phase": r.phase.value,
            "status": run_status(r), "created_ms": r.created_ms, "aborting": r.aborting,
            "root": action_to_json(r.root) if r.root else None}


def tree_to_json(info, node) -> dict:
    """The run and its execution tree as nested JSON."""
    def walk(n) -> dict:
        return action_to_json(n.info) | {"children": [walk(c) for c in n.children]}

    return run_to_json(info) | {"tree": walk(node)}


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 run``, ``2 runs``, ``1,000 runs`` (``words``: the plural, if not ``word`` + s)."""
    return f"1 {word}" if n == 1 else f"{n:,} {words or word + 's'}"


def print_runs(runs, cursor, namespace: str = "") -> None:
    """A table of runs, one line each, whatever the width.

    At the terminal's width (or $COLUMNS) the error, then the task and queue,
    are cut short with "…" (`lessor run show ID` has them whole); the run id,
    phase, time and attempts never are. Piped without $COLUMNS, nothing is cut.
    """
    from rich.console import Console

    console = Console(highlight=False)
    width = console.width if console.is_terminal or os.environ.get("COLUMNS") else None
    rows = [(r.run_id, r.task, r.queue, run_status(r), clock_text(r.created_ms),
             str(r.root.attempt) if r.root else "", _one_line(r.root.error or "") if r.root else "") for r in runs]
    widths = _fit([max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(_RUN_COLUMNS)], width)
    title = f"{plural(len(runs), 'run')} in {namespace}" if namespace else plural(len(runs), "run")
    console.print(title, style="bold", markup=False, soft_wrap=True)
    console.print(_line(_RUN_COLUMNS, widths), style="bold", markup=False, soft_wrap=True)
    phase_at = sum(widths[:3]) + 2 * 3
    for row in rows:
        text = _line(row, widths)
        phase_end = phase_at + widths[3]
        console.print(f"{escape(text[:phase_at])}[{_PHASE_STYLE.get(row[3], 'default')}]"
                      f"{escape(text[phase_at:phase_end])}[/]{escape(text[phase_end:])}", soft_wrap=True)
    if cursor:
        console.print(f"next page: --cursor {cursor}", style="dim", markup=False, soft_wrap=True)


_RUN_COLUMNS = ("run", "task", "queue", "phase", "created UTC", "attempt", "error")
# (column, narrowest) in the order they give way: the error, then task and queue, then all three further.
_SHRINK = ((6, 24), (1, 12), (2, 8), (6, 5), (1, 6), (2, 5))


def _fit(widths: list[int], width: int | None) -> list[int]:
    """Column widths (2 spaces apart) cut down to ``width``, shrinking only the _SHRINK columns."""
    widths = list(widths)
    if width is None:
        return widths
    over = sum(widths) + 2 * (len(widths) - 1) - width
    for column, narrowest in _SHRINK:
        cut = max(0, min(over, widths[column] - narrowest))
        widths[column] -= cut
        over -= cut
    return widths


def _line(cells, widths: list[int]) -> str:
    """One table line: each cell padded (or cut with "…") to its width; no trailing blanks."""
    out = []
    for cell, w in zip(cells, widths):
        out.append(cell.ljust(w) if len(cell) <= w else cell[:max(0, w - 1)] + "…")
    return "  ".join(out).rstrip()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def print_outcome(info) -> None:
    """How a run ended (`submit --wait`): its phase, then its result (JSON) or its error."""
    from rich.console import Console

    from lessor.scheduler.values import show_value

    status = run_status(info)
    root = info.root
    if info.phase.value == "succeeded":
        value = show_value(root.result_bytes) if root and root.result_bytes else None
        detail = json.dumps(value, default=str)
    else:
        detail = (root.error if root else None) or ""
    Console(highlight=False).print(f"run {info.namespace}/{info.run_id} [{_PHASE_STYLE.get(status, 'default')}]{status}[/]"
                                   f"{': ' + escape(detail) if detail else ''}", soft_wrap=True)


def node_label(a) -> str:
    """One tree line for an action: id, task, phase, attempt, token, worker, notes."""
    style = _PHASE_STYLE.get(a.phase.value, "")
    parts = [f"[bold]{a.action_id}[/bold] {escape(a.task)}", f"[{style}]{a.phase.value}[/]",
             f"attempt {a.attempt}" if a.attempt else "not started"]
    if a.token:
        parts.append(f"token {a.token}")
    if a.worker:
        parts.append(f"on {escape(a.worker)}")
    if a.expirations:
        parts.append(f"[red]lease expired {plural(a.expirations, 'time').replace('1 time', 'once')}[/red]")
    if a.rejected:
        parts.append(f"[magenta]{plural(a.rejected, 'stale report')} refused[/magenta]")
    if a.error and a.phase.value != "succeeded":
        parts.append(f"[red]{escape(a.error)}[/red]")
    return " · ".join(parts)


def print_tree(info, root) -> None:
    """The execution tree of a run, as a rich tree."""
    from rich.console import Console
    from rich.tree import Tree

    style = _PHASE_STYLE.get(info.phase.value, "")
    top = Tree(f"run [cyan]{info.namespace}/{info.run_id}[/cyan] [{style}]{info.phase.value}[/]")

    def add(branch, node) -> None:
        child = branch.add(node_label(node.info))
        for c in node.children:
            add(child, c)

    add(top, root)
    console = Console()
    console.print(top)
    for a in _walk(root):
        if a.traceback and a.phase.value != "succeeded":
            # After the tree, unwrapped: a traceback is read (and copied) whole.
            console.print(f"\ntraceback of {a.action_id} {a.task} (its last failed attempt; the last "
                          f"{MAX_TRACEBACK // 1024} KiB are kept):", style="bold red", markup=False, highlight=False)
            console.print(a.traceback.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)


def _walk(node):
    """The ActionInfo of ``node`` and of every descendant, depth first."""
    yield node.info
    for c in node.children:
        yield from _walk(c)


# --- replay and doctor -------------------------------------------------------------------


def replay_to_json(world, verified: bool, diffs: list) -> dict:
    """What ``lessor replay --json`` prints: counts of the rebuilt state and every difference."""
    from collections import Counter

    return {"events": world.events, "runs": len(world.runs), "actions": len(world.actions),
            "action_phases": dict(Counter(a.phase.value for a in world.actions.values())), "verified": verified,
            "fell_back": list(world.fell_back), "differences": [str(d) for d in diffs]}


def print_replay(summary: dict) -> None:
    """The replay summary in a sentence, then (with --verify) every difference and the verdict."""
    from rich.console import Console

    console = Console()
    phases = summary["action_phases"]
    console.print(f"replayed {plural(summary['events'], 'event')}: {plural(summary['runs'], 'run')}, "
                  f"{plural(summary['actions'], 'action')} " + ", ".join(f"{k}={v}" for k, v in sorted(phases.items())))
    for note in summary.get("fell_back", ()):
        console.print(f"  snapshot unusable, fell back: {note}", style="yellow", markup=False)
    if summary["verified"]:
        diffs = summary["differences"]
        for d in diffs:
            console.print(f"  DIFF {d}", style="red", markup=False)
        console.print("verify: " + ("live projection equals the fold of the log" if not diffs
                                    else f"{len(diffs)} differences"),
                      style="green" if not diffs else "bold red")


def print_checks(checks) -> None:
    """The doctor's findings as a table: check, status (ok, warn, fail), finding."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lessor doctor")
    for col in ("check", "status", "finding"):
        table.add_column(col, overflow="fold")
    colour = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    for c in checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail)
    Console().print(table)
