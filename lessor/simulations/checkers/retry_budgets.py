"""Retry budgets (guarantee 3): the right budget is spent, by one, and an action fails exactly when it runs out.

Evidence: the event log alone, each action's story in order. The budgets start
at what its action_created gave it (``sys_retries``, ``user_retries``) and are
recomputed at every lease ending; the numbers the events carry are held to the
recomputed ones:

- a lease that expired (lease_expired, then the reaper's decision) spends one
  *system* retry: requeued while one is left (``sys_left`` one lower, ``user_left``
  unchanged), failed with reason lease_expired exactly when none is left;
- a task's error (fail) spends one *user* retry: requeued while one is left
  (``user_left`` one lower, ``sys_left`` unchanged), failed with reason user_error
  exactly when none is left (every error the simulated tasks raise is retryable);
- a timeout spends a user retry the same way; a release spends nothing;
- an abort spends nothing and ends the story;
- attempts are numbered 1, 2, 3, ... in lease order.
"""

from __future__ import annotations

from dataclasses import dataclass

from lessor.core import events as ev
from lessor.simulations.checkers import Violation

NAME = "retry_budgets"

# What each requeue reason spends: (system, user).
_SPENDS = {"lease_expired": (1, 0), "user_error": (0, 1), "timeout": (0, 1), "released": (0, 0)}


@dataclass
class _Budget:
    sys_left: int
    user_left: int
    attempt: int = 0
    expired: bool = False   # a lease_expired came: the next decision is the reaper's


def check(entries) -> list[Violation]:
    """Violations of the retry budgets in ``(partition, event)`` pairs, each partition in log order."""
    out: list[Violation] = []
    budgets: dict[str, _Budget] = {}
    for _, e in entries:
        if not isinstance(e, ev.ActionEvent) or not e.action:
            continue
        ref = f"{e.ns}/{e.run}/{e.action}"
        if isinstance(e, ev.ActionCreated):
            budgets[ref] = _Budget(e.sys_retries, e.user_retries)
            continue
        b = budgets.get(ref)
        if b is None:
            continue
        flag = lambda detail: out.append(Violation(NAME, ref, f"{e.TYPE} (event {e.id}): {detail}"))  # noqa: E731
        if isinstance(e, ev.ActionLeased):
            if e.attempt != b.attempt + 1:
                flag(f"attempt {e.attempt}, after attempt {b.attempt}")
            b.attempt, b.expired = e.attempt, False
        elif isinstance(e, ev.LeaseExpired):
            b.expired = True
        elif isinstance(e, ev.ActionRequeued):
            _requeued(b, e, flag)
        elif isinstance(e, ev.ActionFailed):
            _failed(b, e, flag)
        elif isinstance(e, ev.ActionTimedOut) and b.user_left > 0:
            flag(f"timed out for good with {b.user_left} user retries left")
    return out


def _requeued(b: _Budget, e: ev.ActionRequeued, flag) -> None:
    spends = _SPENDS.get(e.reason)
    if spends is None:
        flag(f"unknown requeue reason {e.reason!r}")
        return
    if (e.reason == "lease_expired") != b.expired:
        flag("a requeue for an expired lease with no lease_expired before it" if not b.expired
             else f"requeued for {e.reason} after its lease expired (the expiry spends a system retry)")
    sys_spent, user_spent = spends
    if (sys_spent and b.sys_left < 1) or (user_spent and b.user_left < 1):
        flag(f"requeued ({e.reason}) with no {'system' if sys_spent else 'user'} retry left "
             f"(system {b.sys_left}, user {b.user_left})")
    want = (b.sys_left - sys_spent, b.user_left - user_spent)
    if (e.sys_left, e.user_left) != want:
        flag(f"{e.reason} leaves system {e.sys_left}, user {e.user_left}; from system {b.sys_left}, "
             f"user {b.user_left} it must leave {want[0]}, {want[1]}")
    b.sys_left, b.user_left, b.expired = e.sys_left, e.user_left, False


def _failed(b: _Budget, e: ev.ActionFailed, flag) -> None:
    if e.reason == "lease_expired":
        if not b.expired:
            flag("failed for an expired lease with no lease_expired before it")
        elif b.sys_left > 0:
            flag(f"failed for good after an expiry with {b.sys_left} system retries left")
    elif e.reason == "user_error":
        if b.expired:
            flag("failed for a user error after its lease expired (the expiry spends a system retry)")
        elif b.user_left > 0:
            flag(f"failed for good on a user error with {b.user_left} user retries left")
    b.expired = False
