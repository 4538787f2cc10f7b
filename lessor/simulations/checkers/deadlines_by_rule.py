"""Each lease deadline the log records is the one the rule gives (guarantee 2).

Evidence: the log alone, recomputed rather than trusted. A grant, a renewal in
grace (``lease_resumed``) and a new epoch's extension (``lease_extended``) each
set the deadline to the server's time then plus the lease's ttl: the event's
own ``ts`` plus the ``ttl_ms`` of its grant. Every other checker reads the
deadline from these events, so a script that computes it wrong (from the old
deadline, say) would move their yardstick with it; this one holds it to the
rule.
"""

from __future__ import annotations

from lessor.core import events as ev
from lessor.simulations.checkers import Violation

NAME = "deadlines_by_rule"


def check(entries) -> list[Violation]:
    """Violations: a grant, resume or extension whose deadline is not its ts + the lease's ttl."""
    ttl: dict[tuple[str, str, str, int], int] = {}
    out = []
    for _, e in entries:
        if not isinstance(e, (ev.ActionLeased, ev.LeaseResumed, ev.LeaseExtended)):
            continue
        key = (e.ns, e.run, e.action, e.token)
        if isinstance(e, ev.ActionLeased):
            ttl[key] = e.ttl_ms
        if key in ttl and e.deadline_ms != e.ts + ttl[key]:
            out.append(Violation(NAME, f"{e.ns}/{e.run}/{e.action}",
                                 f"{e.TYPE} of token {e.token} at {e.ts} set the deadline to {e.deadline_ms}, "
                                 f"not {e.ts + ttl[key]} (its time + ttl {ttl[key]} ms)"))
    return out
