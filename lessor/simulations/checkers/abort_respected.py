"""An abort reaches every action it covers: after it, no renewal is answered OK, nothing is leased,
requeued or created.

Evidence: the control plane's aborts (the truth: the script call each ran in)
and the log's terminal events, placed at their calls by the history. What an
abort covers is rebuilt, not read from the server's abort_requested events:

- aborting a run covers every action of it, the children included;
- an action that ends (succeeds, fails, is aborted, times out) takes its live
  descendants with it (structured concurrency): its children are covered from
  the call that ended it; a root action's end covers the whole run.

From the covering call on, a renewal of a covered action is answered ABORTED
(or STALE), never OK or RESUMED, and the action is never leased again, nor
requeued (whatever ends its attempt, a failure, a release, an expiry, ends it as
aborted: nothing is retried after an abort), nor created (a parent being aborted
spawns nothing: the abort could not reach a child made after it). An abort that
a crash or failover rolled back never happened for the server; the first that
survived counts.
"""

from __future__ import annotations

from lessor.core import events as ev
from lessor.simulations.checkers import Violation
from lessor.simulations.checkers.history import History

NAME = "abort_respected"
_ENDS = (ev.ActionSucceeded, ev.ActionFailed, ev.ActionAborted, ev.ActionTimedOut, ev.CacheHit)


def covered_from(history: History) -> dict[str, tuple[int, str]]:
    """Action ref -> (the first call from which an abort covers it, why)."""
    run_aborted: dict[str, int] = {}
    for run_id, _, step, _, call in history.truth.abort_calls:
        if not history.truth.lost(step):
            run_aborted.setdefault(run_id, call)
    actions: dict[str, set[str]] = {}   # run ref -> its action ids
    ended: dict[str, int] = {}          # action ref -> the call it ended in
    parent_of: dict[str, str] = {}
    for (_, e), moment in zip(history.entries, history.moments):
        if not isinstance(e, ev.ActionEvent) or not e.action:
            continue
        run_ref, ref = f"{e.ns}/{e.run}", f"{e.ns}/{e.run}/{e.action}"
        if isinstance(e, ev.ActionCreated):
            actions.setdefault(run_ref, set()).add(e.action)
            if e.parent:
                parent_of[ref] = f"{run_ref}/{e.parent}"
        elif isinstance(e, _ENDS):
            ended.setdefault(ref, moment[0])
    out: dict[str, tuple[int, str]] = {}
    for run_ref, ids in actions.items():
        for action in ids:
            ref = f"{run_ref}/{action}"
            causes = []
            if run_ref.split("/")[-1] in run_aborted:
                causes.append((run_aborted[run_ref.split("/")[-1]], "its run was aborted"))
            parent = parent_of.get(ref)
            if parent in ended:
                causes.append((ended[parent], f"its parent {parent.rsplit('/', 1)[1]} ended"))
            root = f"{run_ref}/a0"
            if action != "a0" and root in ended and root != parent:
                causes.append((ended[root], "its run's root action ended"))
            if causes:
                out[ref] = min(causes)
    return out


def check(history: History) -> list[Violation]:
    """Violations: a renewal answered OK or RESUMED, or a lease granted, a requeue or a creation,
    after an abort covered the action."""
    covered = covered_from(history)
    out = []
    for r in history.truth.reports:
        if r.kind != "renew" or r.answer not in ("OK", "RESUMED") or r.ran_call is None:
            continue
        since = covered.get(r.ref)
        if since is not None and r.ran_call > since[0] and not history.truth.lost(r.ran_step):
            out.append(Violation(NAME, r.ref, f"renewal by {r.worker} at t={r.ran_ms} ms answered {r.answer} after "
                                              f"{since[1]} (t={history.call_ms(since[0])} ms)"))
    for (_, e), moment in zip(history.entries, history.moments):
        if isinstance(e, _AFTER_COVER):
            ref = f"{e.ns}/{e.run}/{e.action}"
            since = covered.get(ref)
            if since is not None and moment[0] > since[0]:
                out.append(Violation(NAME, ref, f"{_what(e)} (event {e.id}) after {since[1]} "
                                                f"(t={history.call_ms(since[0])} ms)"))
    return out


# What never happens to an action once an abort covers it.
_AFTER_COVER = (ev.ActionLeased, ev.ActionRequeued, ev.ActionCreated)


def _what(e: ev.ActionEvent) -> str:
    if isinstance(e, ev.ActionLeased):
        return f"leased to {e.worker} (token {e.token})"
    if isinstance(e, ev.ActionRequeued):
        return f"requeued ({e.reason})"
    return f"created by its parent {e.parent} (token {e.parent_token})"
