"""Every write the server accepted carried the token current at that instant (guarantee 1).

Evidence: what each worker sent and the server answered (the truth), judged
against the history rebuilt from the log (``history.py``): which lease of the
action was current just before that call, and what the call itself appended.
An answer of OK is believed only as far as the log bears it out:

- a renewal answered OK or RESUMED: its token was current;
- a completion, failure or release answered OK: its token was current and that
  call ended the lease as the write asks (succeeded; a user error requeued or
  failed, or an abort; released, or an abort), or it repeats the write that
  already ended that token's lease so (a retry whose first answer was lost);
- a child submission answered OK: the parent's token was current.

Writes made in a step a crash or failover rolled back left no evidence: not judged.
"""

from __future__ import annotations

from lessor.simulations.checkers import Violation
from lessor.simulations.checkers.history import History

NAME = "current_token"

# How the log must end a lease for each kind of write (the same sets as durable_acks_survive).
ENDED_BY = {"complete": {"succeeded"}, "fail": {"requeued:user_error", "failed:user_error", "aborted"},
            "release": {"requeued:released", "aborted"}}
_ACCEPTED = {"renew": ("OK", "RESUMED"), "complete": ("OK",), "fail": ("OK",), "release": ("OK",),
             "submit": ("OK",)}


def check(history: History) -> list[Violation]:
    """Violations: a write answered OK whose token was not current, or that the log does not show."""
    out = []
    for r in history.truth.reports:
        if r.answer not in _ACCEPTED.get(r.kind, ()) or r.ran_call is None or history.truth.lost(r.ran_step):
            continue
        before = (r.ran_call, -1)
        current = history.current(r.ref, before)
        lease = history.lease(r.ref, r.token)
        what = f"{r.worker}'s {r.kind} with token {r.token} (t={r.ran_ms} ms) was answered {r.answer}"
        if r.kind in ENDED_BY:
            if lease is not None and lease.ended is not None and lease.how in ENDED_BY[r.kind] and (
                    lease.ended < before or (lease.ended[0] == r.ran_call and current is lease)):
                continue  # applied by this call, or a repeat of the write that ended it
            how = f"the log ends that lease with {lease.how or 'nothing'}" if lease else "the log has no such lease"
            if current is not lease:
                how = f"the current token was {current.token if current else None}; {how}"
            out.append(Violation(NAME, r.ref, f"{what}, but {how}"))
        elif current is None or current.token != r.token:
            out.append(Violation(NAME, r.ref, f"{what}, but the current token was "
                                              f"{current.token if current else None}"))
    return out
