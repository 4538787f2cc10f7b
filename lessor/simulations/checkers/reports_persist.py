"""A report that gets no answer is not given up while it may still count (guarantee 6).

Evidence: the ground truth of each report (complete, fail, release) over all
its tries with the same token: how it ended and when, on the worker's own
clock, against two deadlines. The lease's self-fence deadline: until then the
lease cannot have been reaped, so the server either has the report or will take
it again with the same token, and giving up drops work that was done (the lease
expires and the action runs again elsewhere). The report timeout (a worker's
``report_timeout``, from the first try): past the self-fence deadline a server
back from a restart or failover has given the lease a full ttl again, so a
report that keeps trying still commits, and a late one is refused by its token.
Stated reasons to stop earlier: an answer (committed, refused), the worker died
(crashed), the simulation ended (pending).
"""

from __future__ import annotations

from lessor.simulations.checkers import Violation
from lessor.simulations.truth import Truth

NAME = "reports_persist"

_STATED = ("committed", "refused", "crashed", "pending")


def check(truth: Truth, report_timeout_ms: int) -> list[Violation]:
    """Violations: a report a live worker abandoned before its self-fence deadline or its timeout."""
    out = []
    for c in truth.chains:
        if c.outcome in _STATED or c.ended_worker_ms is None:
            continue
        due = c.started_worker_ms + report_timeout_ms
        what = f"its report timeout ({report_timeout_ms} ms from the first try)"
        if c.fence_deadline_worker_ms is not None and c.fence_deadline_worker_ms > due:
            due, what = c.fence_deadline_worker_ms, "the lease's self-fence deadline"
        left_ms = due - c.ended_worker_ms
        if left_ms <= 0:
            continue
        again = sorted({x.token for x in truth.executions if x.ref == c.ref and x.token != c.token
                        and x.start_ms >= (c.ended_ms or 0)})
        rerun = f"; the action ran again (token {again[0]})" if again else ""
        out.append(Violation(NAME, c.ref, f"{c.worker} gave up on its {c.kind} with token {c.token} at "
                                          f"t={c.ended_ms} ms after {c.tries} tries ({c.outcome}), {left_ms:.0f} ms "
                                          f"before {what}{rerun}"))
    return out
