"""With durability fsync, what a client heard acknowledged survives a crash (guarantee 4).

Evidence: the ground truth of what workers and the control plane heard
acknowledged (lease grants, completions, failures, releases, submits, aborts
that changed something) against the final event log. Applies to
``durability="fsync"`` only: ``memory`` acknowledges before the disk has it.

Exempt: anything acknowledged before a ``failover``. ``WAITAOF 1 0`` confirms
the old primary's own disk, not a replica's, so a promoted replica may lack
it (that takes ``fsync+replicas:N``). A ``server_crash`` is a local restart
from the same disk: nothing acknowledged may be missing after it.
Renewals are soft state in every mode and are never waited for (see the
expiry checker for what a lost renewal may and may not cost).
"""

from __future__ import annotations

from lessor.core import events as ev
from lessor.simulations.checkers import Violation
from lessor.simulations.truth import Truth

NAME = "durable_acks_survive"

# How the log must show an attempt ended by each report kind.
_ENDED_BY = {"complete": {"succeeded"}, "fail": {"requeued:user_error", "failed:user_error", "aborted"},
             "release": {"requeued:released", "aborted"}}


def attempt_endings(entries) -> dict[tuple[str, int], str]:
    """(action ref, token) -> how the log ended that lease: succeeded, requeued:<reason>,
    failed:<reason>, aborted, expired, timed_out."""
    current: dict[str, int] = {}
    out: dict[tuple[str, int], str] = {}
    for _, e in entries:
        if not isinstance(e, ev.ActionEvent):
            continue
        ref = f"{e.ns}/{e.run}/{e.action}"
        if isinstance(e, ev.ActionLeased):
            current[ref] = e.token
            continue
        how = {ev.ActionSucceeded: "succeeded", ev.ActionAborted: "aborted", ev.LeaseExpired: "expired",
               ev.ActionTimedOut: "timed_out"}.get(type(e))
        if isinstance(e, (ev.ActionRequeued, ev.ActionFailed)):
            how = f"{'requeued' if isinstance(e, ev.ActionRequeued) else 'failed'}:{e.reason}"
        if how is not None and ref in current:
            out[(ref, current.pop(ref))] = how
    return out


def check(entries, truth: Truth) -> list[Violation]:
    """Violations: an fsync-acknowledged grant, report, submit or abort missing from the final log."""
    if truth.durability != "fsync":
        return []
    leased = {(f"{e.ns}/{e.run}/{e.action}", e.token) for _, e in entries if isinstance(e, ev.ActionLeased)}
    created = {e.run for _, e in entries if isinstance(e, ev.RunCreated)}
    abort_asked = {e.run for _, e in entries if isinstance(e, ev.AbortRequested) and not e.action}
    endings = attempt_endings(entries)
    out = []
    for g in truth.grants:
        if (g.ref, g.token) not in leased and not truth.failover_after(g.ran_step):
            out.append(Violation(NAME, g.ref, f"lease {g.token} granted to {g.worker} at t={g.ran_ms} ms "
                                              "(acknowledged durable) is not in the log"))
    for r in truth.reports:
        if r.kind in _ENDED_BY and r.heard_committed and not truth.failover_after(r.ran_step):
            how = endings.get((r.ref, r.token))
            if how not in _ENDED_BY[r.kind]:
                out.append(Violation(NAME, r.ref, f"{r.worker}'s {r.kind} with token {r.token} at t={r.ran_ms} ms "
                                                  f"was acknowledged durable, but the log ends that lease with "
                                                  f"{how or 'nothing'}"))
    for run, step in truth.submit_steps.items():
        if run not in created and not truth.failover_after(step):
            out.append(Violation(NAME, run, "submit acknowledged durable, but the run is not in the log"))
    for run, at_ms, step, asked, _ in truth.abort_calls:
        if asked and run not in abort_asked and not truth.failover_after(step):
            out.append(Violation(NAME, run, f"abort at t={at_ms} ms acknowledged durable, but not in the log"))
    return out
