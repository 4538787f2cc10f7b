"""A lease is expired only after its deadline + grace, judged on the server clock.

Evidence: the lease grant (its deadline) and every renewal the server accepted
(ground truth: the server time it ran), against each lease_expired event.

A renewal that a crash or failover rolled back still counts (guarantee 6: the
first expiry-judging script of the new epoch gives every live lease a full
ttl from then, so the deadline the worker heard is kept). Only when the
server's clock went back after the renewal does the promise shrink, to a ttl
from the lowest the clock read after the loss.
"""

from __future__ import annotations

from lessor.core import events as ev
from lessor.simulations.checkers import Violation
from lessor.simulations.truth import Truth

NAME = "expiry_respected"


def check(entries, truth: Truth, ttl_ms: int) -> list[Violation]:
    """Violations: a lease_expired earlier than the lease's deadline + grace."""
    # Keyed by (action, token): tokens are ordered per partition, so two partitions
    # may issue the same number.
    deadline: dict[tuple[str, int], int] = {}
    for _, e in entries:
        if isinstance(e, ev.ActionLeased):
            deadline[(f"{e.ns}/{e.run}/{e.action}", e.token)] = e.deadline_ms
    # Each accepted renewal sets the deadline to its server time + ttl, in the order
    # they ran (a server clock that went back can make a later deadline earlier).
    renewals = [r for r in truth.reports
                if r.kind == "renew" and r.answer in ("OK", "RESUMED") and r.ran_ms is not None]
    for r in sorted(renewals, key=lambda r: (r.ran_ms, r.ran_step or 0)):
        renewed_ms = r.server_ms
        loss = truth.lost(r.ran_step)
        if loss is not None:
            renewed_ms = min(renewed_ms, truth.min_server_time_from(loss.at_ms, truth.epoch_ms))
        deadline[(r.ref, r.token)] = renewed_ms + ttl_ms
    out = []
    for _, e in entries:
        if isinstance(e, ev.LeaseExpired):
            due = deadline.get((f"{e.ns}/{e.run}/{e.action}", e.token), 0) + e.grace_ms
            if e.ts <= due:
                out.append(Violation(NAME, f"{e.run}/{e.action}", f"lease {e.token} expired at {e.ts}, "
                                                                  f"before its deadline + grace ({due})"))
    return out
