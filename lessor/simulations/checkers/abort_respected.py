"""An abort reaches the worker: every renewal after it is answered ABORTED (or STALE), never OK.

Evidence: when the control plane aborted each run and when each renewal ran
on the server, both in true (simulator) time, with what the server answered.
Once a run is aborted, no attempt of it may have its lease extended: a
worker learns of the abort at its next heartbeat, and its work is cancelled.
An abort that a crash or failover rolled back never happened for the server;
the first abort that survived counts.
"""

from __future__ import annotations

from lessor.simulations.checkers import Violation
from lessor.simulations.truth import Truth

NAME = "abort_respected"


def check(entries, truth: Truth) -> list[Violation]:
    """Violations: a renewal of an aborted run's action answered OK or RESUMED."""
    aborted_at = dict(truth.aborted_at_ms)
    if truth.abort_calls:
        aborted_at = {}
        for run_id, at_ms, step, _ in truth.abort_calls:
            if not truth.lost(step):
                aborted_at.setdefault(run_id, at_ms)
    out = []
    for r in truth.reports:
        run_id = r.ref.split("/")[2]
        at = aborted_at.get(run_id)
        if (r.kind == "renew" and at is not None and r.ran_ms is not None and r.ran_ms > at
                and r.answer in ("OK", "RESUMED")):
            out.append(Violation(NAME, r.ref, f"renewal by {r.worker} at t={r.ran_ms} ms answered {r.answer} "
                                              f"after the run was aborted at t={at} ms"))
    return out
