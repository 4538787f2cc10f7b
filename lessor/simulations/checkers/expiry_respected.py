"""A lease is expired only after its deadline + grace, judged on the server clock.

Evidence: the lease grant (its deadline) and every renewal the server accepted
(ground truth: the server time it ran), against each lease_expired event.
"""

from __future__ import annotations

from lessor.core import events as ev
from lessor.simulations.checkers import Violation
from lessor.simulations.truth import Truth

NAME = "expiry_respected"


def check(entries, truth: Truth, ttl_ms: int) -> list[Violation]:
    """Violations: a lease_expired earlier than the lease's deadline + grace."""
    deadline: dict[int, int] = {}
    for _, e in entries:
        if isinstance(e, ev.ActionLeased):
            deadline[e.token] = e.deadline_ms
    for r in truth.reports:
        if r.kind == "renew" and r.answer in ("OK", "RESUMED") and r.server_ms is not None:
            deadline[r.token] = max(deadline.get(r.token, 0), r.server_ms + ttl_ms)
    out = []
    for _, e in entries:
        if isinstance(e, ev.LeaseExpired) and e.ts <= deadline.get(e.token, 0) + e.grace_ms:
            out.append(Violation(NAME, f"{e.run}/{e.action}",
                                 f"lease {e.token} expired at {e.ts}, before deadline + grace "
                                 f"({deadline.get(e.token, 0)} + {e.grace_ms})"))
    return out
