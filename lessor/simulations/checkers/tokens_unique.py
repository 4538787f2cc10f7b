"""Fencing tokens are never issued twice, and per action they increase in grant order (guarantee 6).

Evidence: the ground truth of every lease grant a worker heard, with the
simulator step its acquire ran in. The event log alone cannot show this once
a crash or failover rolled it back: the grant that was lost is gone from the
log, but the worker that heard it may still hold (and write with) its token.
So this reads what workers heard, across restarts and rollbacks.
"""

from __future__ import annotations

from lessor.simulations.checkers import Violation
from lessor.simulations.truth import Grant, Truth

NAME = "tokens_unique"


def check(truth: Truth) -> list[Violation]:
    """Violations: a (partition, token) granted twice; an action's tokens not increasing in grant order."""
    out = []
    first: dict[tuple[int, int], Grant] = {}
    last: dict[str, Grant] = {}
    for g in sorted(truth.grants, key=lambda g: g.ran_step):
        key = (g.partition, g.token)
        if key in first:
            a = first[key]
            out.append(Violation(NAME, g.ref, f"token {g.token} of partition {g.partition} granted twice: to "
                                              f"{a.worker} for {a.ref} (t={a.ran_ms} ms) and to {g.worker} "
                                              f"(t={g.ran_ms} ms)"))
        first.setdefault(key, g)
        prev = last.get(g.ref)
        if prev is not None and g.token <= prev.token:
            out.append(Violation(NAME, g.ref, f"token {g.token} granted to {g.worker} at t={g.ran_ms} ms does "
                                              f"not increase: {prev.worker} was granted {prev.token} at "
                                              f"t={prev.ran_ms} ms"))
        last[g.ref] = g
    return out
