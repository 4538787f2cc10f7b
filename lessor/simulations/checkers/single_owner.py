"""Guarantee 1 from the event log: single accepted result, current-token writes, increasing tokens.

Checks, per action:
- at most one result is accepted (one action_succeeded / cache_hit, and nothing
  but refusals after the action is terminal);
- every accepted write carried the token current at that moment: a success,
  a user failure, a resumed lease and a child submission name the token of the
  latest lease, and no lease is current after it expired or ended;
- lease tokens strictly increase per action and per partition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from lessor.core import events as ev
from lessor.simulations.checkers import Violation

NAME = "single_owner"
_ENDS_LEASE = (ev.LeaseExpired, ev.ActionRequeued, ev.ActionSucceeded, ev.ActionFailed, ev.ActionTimedOut,
               ev.ActionAborted)
_RESULTS = (ev.ActionSucceeded, ev.CacheHit)
_TERMINAL = (ev.ActionSucceeded, ev.CacheHit, ev.ActionFailed, ev.ActionTimedOut, ev.ActionAborted)


@dataclass
class _Action:
    current: int | None = None
    last_token: int = 0
    results: int = 0
    terminal: bool = False


@dataclass
class _Scan:
    actions: dict[str, _Action] = field(default_factory=dict)
    partition_tokens: dict[int, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)

    def flag(self, subject: str, detail: str) -> None:
        self.violations.append(Violation(NAME, subject, detail))


def check(entries: Iterable[tuple[int, ev.Event]]) -> list[Violation]:
    """Violations of guarantee 1 in ``(partition, event)`` pairs, each partition in log order."""
    scan = _Scan()
    for partition, e in entries:
        if isinstance(e, ev.ActionEvent) and e.action:
            _check_event(scan, partition, e)
    return scan.violations


def _check_event(scan: _Scan, partition: int, e: ev.ActionEvent) -> None:
    ref = f"{e.ns}/{e.run}/{e.action}"
    a = scan.actions.setdefault(ref, _Action())
    if isinstance(e, ev.ReportRejected):
        if a.current is not None and e.token == a.current:
            scan.flag(ref, f"a report with the current token {e.token} was refused ({e.kind})")
        return
    if a.terminal and not isinstance(e, ev.AbortRequested):
        scan.flag(ref, f"{e.TYPE} (event {e.id}) after the action was already terminal")
    if isinstance(e, ev.ActionLeased):
        _check_lease(scan, partition, ref, a, e)
    elif isinstance(e, (ev.ActionSucceeded, ev.LeaseResumed, ev.LeaseExtended, ev.ActionTimedOut, ev.LeaseExpired)) or (
            isinstance(e, ev.ActionFailed) and e.token):
        if e.token != a.current:
            scan.flag(ref, f"{e.TYPE} (event {e.id}) carried token {e.token}, current was {a.current}")
    if isinstance(e, ev.ActionCreated) and e.parent:
        parent = scan.actions.get(f"{e.ns}/{e.run}/{e.parent}")
        if parent is None or parent.current != e.parent_token:
            scan.flag(ref, f"submitted by {e.parent} with token {e.parent_token}, "
                           f"current was {parent.current if parent else None}")
    if isinstance(e, _RESULTS):
        a.results += 1
        if a.results > 1:
            scan.flag(ref, f"{a.results} results accepted (event {e.id})")
    if isinstance(e, _ENDS_LEASE):
        a.current = None
    if isinstance(e, _TERMINAL):
        a.terminal = True


def _check_lease(scan: _Scan, partition: int, ref: str, a: _Action, e: ev.ActionLeased) -> None:
    if a.current is not None:
        scan.flag(ref, f"leased to {e.worker} (token {e.token}) while token {a.current} was still current")
    if e.token <= a.last_token:
        scan.flag(ref, f"token {e.token} does not increase (previous {a.last_token})")
    if e.token <= scan.partition_tokens.get(partition, 0):
        scan.flag(f"partition {partition}", f"token {e.token} issued after {scan.partition_tokens[partition]}")
    a.current = a.last_token = e.token
    scan.partition_tokens[partition] = max(e.token, scan.partition_tokens.get(partition, 0))
