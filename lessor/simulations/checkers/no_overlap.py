"""No two workers execute the same action at the same instant (guarantee 2, from ground truth).

Evidence: the ground truth of when each worker really computed each attempt.
An older attempt may compute on past its lease only as far as the plan's clock
faults allow (``history.allowance_ms``: 0 while drift stays within its bound
and server clock jumps within what the margin leaves), so two attempts of one
action may overlap by that much and no more: the check stays on whatever the
plan does to clocks, with a bound that accounts for it.

A grant that a crash or failover rolled back (the worker heard it, the log no
longer has it) is outside guarantee 2: the server forgot the lease, so the
action may be leased again while that worker still computes until its next
renewal is refused. Such attempts are left out (``excused``); whether the
durability mode allowed losing the grant is durable_acks_survive's question.
"""

from __future__ import annotations

from collections import defaultdict

from lessor.simulations.checkers import Violation
from lessor.simulations.checkers.history import History, allowance_ms
from lessor.simulations.truth import Execution, Truth

NAME = "no_overlap"


def overlap_ms(truth: Truth, excused: frozenset[tuple[str, int]] | set = frozenset()) -> dict[str, int]:
    """Per action: total time two different attempts were computing at once (``excused``
    (ref, token) attempts left out)."""
    out = {}
    for ref, pairs in _overlapping(truth, excused).items():
        total = sum(ms for _, _, ms in pairs)
        if total:
            out[ref] = total
    return out


def _overlapping(truth: Truth, excused) -> dict[str, list[tuple[Execution, Execution, int]]]:
    by_action = defaultdict(list)
    for x in truth.executions:
        if x.end_ms is not None and x.end_ms > x.start_ms and (x.ref, x.token) not in excused:
            by_action[x.ref].append(x)
    out: dict[str, list] = {}
    for ref, xs in by_action.items():
        for i, a in enumerate(xs):
            for b in xs[i + 1:]:
                ms = min(a.end_ms, b.end_ms) - max(a.start_ms, b.start_ms)
                if a.token != b.token and ms > 0:
                    older, newer = (a, b) if a.token < b.token else (b, a)
                    out.setdefault(ref, []).append((older, newer, ms))
    return out


def check(history: History, plan, excused: frozenset[tuple[str, int]] | set = frozenset()) -> list[Violation]:
    """Violations: two attempts computing at once for longer than the older one's allowance."""
    out = []
    for ref, pairs in sorted(_overlapping(history.truth, excused).items()):
        for older, newer, ms in pairs:
            allowed = _allowance(history, plan, older)
            if ms > allowed:
                out.append(Violation(NAME, ref, f"{older.worker} (token {older.token}) and {newer.worker} (token "
                                                f"{newer.token}) executed at once for {ms} ms"
                                                + (f"; the clock faults allow {allowed} ms" if allowed else "")))
    return out


def _allowance(history: History, plan, x: Execution) -> int:
    lease = history.lease(x.ref, x.token)
    if lease is None or x.end_call is None:
        return 0
    _, set_at = lease.believed_deadline((x.end_call, -1))
    return allowance_ms(plan, history.truth, x.worker, history.call_ms(set_at[0]), x.end_ms)
