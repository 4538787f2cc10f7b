"""A request submitted again with its idempotency key creates nothing new (guarantee 1 for submits).

Evidence: the event log (run_created events, placed at their calls by the
history) and the truth of each resubmit: when it ran and what the server said.

- no run is created twice;
- a resubmit answered "already existed" came after the run's run_created (in
  the final log), and one answered "created" is the run's run_created (its first
  submit was rolled back before it: a crash or failover lost it).

A resubmit made in a step that a crash or failover rolled back is not judged.
"""

from __future__ import annotations

from collections import defaultdict

from lessor.core import events as ev
from lessor.simulations.checkers import Violation
from lessor.simulations.checkers.history import History

NAME = "submits_idempotent"


def check(history: History) -> list[Violation]:
    """Violations: a run created twice, or a resubmit's answer the log contradicts."""
    out = []
    created: dict[str, list[int]] = defaultdict(list)   # run id -> calls of its run_created events
    for (_, e), moment in zip(history.entries, history.moments):
        if isinstance(e, ev.RunCreated):
            created[e.run].append(moment[0])
    for run, calls in sorted(created.items()):
        if len(calls) > 1:
            out.append(Violation(NAME, run, f"created {len(calls)} times"))
    for r in history.truth.resubmits:
        if history.truth.lost(r.step):
            continue
        calls = created.get(r.run, [])
        if r.created and r.call not in calls:
            out.append(Violation(NAME, r.run, f"a resubmit at call {r.call} was answered 'created', but the log's "
                                              f"run_created is from call {calls[0] if calls else None}"))
        elif not r.created and not any(c < r.call for c in calls):
            out.append(Violation(NAME, r.run, f"a resubmit at call {r.call} was answered 'already existed', but the "
                                              "log created no such run before it"))
    return out
