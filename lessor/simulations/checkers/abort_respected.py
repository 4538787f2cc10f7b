"""An abort reaches the worker: every renewal of the aborting attempt after it answers ABORTED.

Evidence: the abort_requested events (server time) and the renewals the
server ran after them (ground truth), so a worker learns of the abort at its
next heartbeat and its work is cancelled then.
"""

from __future__ import annotations

from lessor.core import events as ev
from lessor.simulations.checkers import Violation
from lessor.simulations.truth import Truth

NAME = "abort_respected"


def check(entries, truth: Truth) -> list[Violation]:
    """Violations: a renewal of an aborting attempt that was not answered ABORTED."""
    asked: dict[str, int] = {}
    current: dict[str, int] = {}
    for _, e in entries:
        if isinstance(e, ev.ActionLeased):
            current[f"{e.ns}/{e.run}/{e.action}"] = e.token
        if isinstance(e, ev.AbortRequested) and e.action:
            asked.setdefault(f"{e.ns}/{e.run}/{e.action}", e.ts)
    out = []
    for r in truth.reports:
        at = asked.get(r.ref)
        if (r.kind == "renew" and at is not None and r.server_ms is not None and r.server_ms > at
                and r.token == current.get(r.ref) and r.answer in ("OK", "RESUMED")):
            out.append(Violation(NAME, r.ref, f"renewal by {r.worker} at {r.server_ms} answered {r.answer} "
                                              f"after the abort at {at}"))
    return out
