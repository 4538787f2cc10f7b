"""No two workers execute the same action at the same instant (guarantee 2, from ground truth).

Holds while every worker's clock drift stays within the configured bound;
when a plan pushes drift past it, overlaps are measured and reported as
overlap time instead of violations.

A grant that a crash or failover rolled back (the worker heard it, the log no
longer has it) is outside guarantee 2: the server forgot the lease, so the
action may be leased again while that worker still computes until its next
renewal is refused. Such attempts are left out (``excused``); whether the
durability mode allowed losing the grant is durable_acks_survive's question.
"""

from __future__ import annotations

from collections import defaultdict

from lessor.simulations.checkers import Violation
from lessor.simulations.truth import Truth

NAME = "no_overlap"


def overlap_ms(truth: Truth, excused: frozenset[tuple[str, int]] | set = frozenset()) -> dict[str, int]:
    """Per action: total time two different attempts were computing at once (``excused``
    (ref, token) attempts left out)."""
    by_action = defaultdict(list)
    for x in truth.executions:
        if x.end_ms is not None and x.end_ms > x.start_ms and (x.ref, x.token) not in excused:
            by_action[x.ref].append(x)
    out = {}
    for ref, xs in by_action.items():
        total = 0
        for i, a in enumerate(xs):
            for b in xs[i + 1:]:
                if a.token != b.token:
                    total += max(0, min(a.end_ms, b.end_ms) - max(a.start_ms, b.start_ms))
        if total:
            out[ref] = total
    return out


def check(truth: Truth, drift_within_bound: bool = True,
          excused: frozenset[tuple[str, int]] | set = frozenset()) -> list[Violation]:
    """Violations (only when drift stayed within its bound)."""
    if not drift_within_bound:
        return []
    return [Violation(NAME, ref, f"two attempts executed at once for {ms} ms")
            for ref, ms in sorted(overlap_ms(truth, excused).items())]
