"""No write is accepted after its lease's deadline + grace (guarantee 1, from the rebuilt history).

Evidence: the history (``history.py``): every event placed at the script call
that wrote it, and each lease's deadline as the server held it at that instant,
recomputed from the grant, the renewals it accepted (the truth: on-time renewals
write no event, and a restart, a crash or a failover's lag window loses them) and
the lease_resumed and lease_extended events. The server's own answers are not
read. Judged, each on the server's clock:

- every write applied under a lease: a success, a user failure, a requeue by the
  worker (user error, release), an abort it confirmed, a child submission, a
  resumed lease: at most deadline + grace (at the expiry itself it still holds);
  a lease_resumed also says how late it was: exactly its time minus the deadline;
- every renewal answered OK (the hot path, no event): at most the deadline
  itself; in the grace window a renewal is RESUMED and logged. A new epoch may
  revive a lease past it, but only with a lease_extended in the same call.
"""

from __future__ import annotations

from typing import Iterator

from lessor.core import events as ev
from lessor.simulations.checkers import Violation
from lessor.simulations.checkers.history import History, LeaseHistory, Moment

NAME = "writes_within_lease"


def fenced_writes(history: History) -> Iterator[tuple[ev.ActionEvent, LeaseHistory, Moment]]:
    """Every event a lease holder's write made, with the lease it was made under, and when."""
    for (_, e), moment in zip(history.entries, history.moments):
        if not isinstance(e, ev.ActionEvent) or not e.action:
            continue
        ref = f"{e.ns}/{e.run}/{e.action}"
        if isinstance(e, (ev.ActionSucceeded, ev.LeaseResumed)) or (
                isinstance(e, ev.ActionFailed) and e.reason == "user_error"):
            lease = history.lease(ref, e.token)
        elif isinstance(e, ev.ActionCreated) and e.parent:
            lease = history.lease(f"{e.ns}/{e.run}/{e.parent}", e.parent_token)
        elif (isinstance(e, ev.ActionRequeued) and e.reason in ("user_error", "released")) or isinstance(
                e, ev.ActionAborted):
            # The lease it ends; an abort of a queued action (or after an expiry) ends none.
            lease = history.current(ref, moment)
        else:
            continue
        if lease is not None:
            yield e, lease, moment


def check(history: History) -> list[Violation]:
    """Violations: a write applied, or a renewal answered OK, past its lease's time."""
    out = []
    for e, lease, moment in fenced_writes(history):
        deadline, _ = history.deadline_at(lease, moment)
        expiry = deadline + lease.grace_ms
        if e.ts > expiry:
            out.append(Violation(NAME, lease.ref, f"{e.TYPE} (event {e.id}) under token {lease.token} was applied "
                                                  f"at {e.ts}, {e.ts - expiry} ms after its deadline + grace "
                                                  f"({deadline} + {lease.grace_ms})"))
        elif isinstance(e, ev.LeaseResumed) and e.late_ms != e.ts - deadline:
            out.append(Violation(NAME, lease.ref, f"lease_resumed (event {e.id}) of token {lease.token} says "
                                                  f"{e.late_ms} ms late; its deadline was {deadline}, "
                                                  f"{e.ts - deadline} ms before"))
    return out + _renewals(history)


def _renewals(history: History) -> list[Violation]:
    out = []
    for r in history.truth.reports:
        if r.kind != "renew" or r.answer != "OK" or r.ran_call is None or history.truth.lost(r.ran_step):
            continue
        lease = history.lease(r.ref, r.token)
        if lease is None or not lease.current_at((r.ran_call, -1)):
            continue  # not current: current_token's to judge
        deadline, _ = history.deadline_at(lease, (r.ran_call, -1))
        extended = any(m[0] == r.ran_call and not soft for m, _, soft in lease.deadlines)
        if r.server_ms > deadline and not extended:
            where = "its grace window (a late renewal is RESUMED, and logged)" \
                if r.server_ms <= deadline + lease.grace_ms else "its deadline + grace"
            out.append(Violation(NAME, r.ref, f"{r.worker}'s renewal of token {r.token} was answered OK at "
                                              f"{r.server_ms}, {r.server_ms - deadline} ms after its deadline "
                                              f"{deadline}: in {where}"))
    return out
