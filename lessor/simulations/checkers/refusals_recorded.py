"""Every refused write was recorded, and every recorded refusal was a real refused write.

Evidence: the ground truth of what each worker sent and what the server
answered, against the report_rejected events of the log. Renewals are recorded
once per token; every other refused write (complete, fail, release) each time.
A refusal made in a step that a crash or failover rolled back is gone with its
record, so it is not counted.
"""

from __future__ import annotations

from collections import Counter

from lessor.core import events as ev
from lessor.simulations.checkers import Violation
from lessor.simulations.truth import Truth

NAME = "refusals_recorded"


def check(entries, truth: Truth) -> list[Violation]:
    """Violations: refusals the server gave but did not log, or logged ones nobody sent."""
    logged = Counter()
    for _, e in entries:
        if isinstance(e, ev.ReportRejected):
            logged[(e.run, e.action, e.token, e.kind, e.worker)] += 1
    refused = Counter()
    for r in truth.reports:
        if r.answer == "STALE" and not truth.lost(r.ran_step):
            _, _, run, action = r.ref.split("/")
            refused[(run, action, r.token, r.kind, r.worker)] += 1
    out = []
    for key, n in refused.items():
        want = 1 if key[3] == "renew" else n
        if logged[key] < want:
            out.append(Violation(NAME, f"{key[0]}/{key[1]}", f"{key[4]}'s {key[3]} with token {key[2]} was refused "
                                                             f"{n} times but recorded {logged[key]} times"))
    for key, n in logged.items():
        if refused[key] == 0:
            out.append(Violation(NAME, f"{key[0]}/{key[1]}", f"report_rejected for {key[4]}'s {key[3]} with token "
                                                             f"{key[2]}, but no such write was refused"))
    return out
