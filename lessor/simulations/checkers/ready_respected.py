"""Backoff (guarantee 3): a retried action waits out its backoff, and the backoff is the promised one.

Evidence: the event log and, for "when", the history (``history.py``: the true
time of each event's call) with the truth's record of the server's clock. For
every requeue after a user error:

- its ``ready_at_ms`` is recomputed: ``backoff_ms * 2^(attempt - 1)`` (capped at
  10 minutes) times a jitter in [0.5, 1.5), from the requeue's own time;
- the next lease of that action comes no earlier than the instant the server's
  clock first read ``ready_at_ms`` after the requeue (in true time, so a clock
  that jumps back later cannot excuse, nor frame, an early lease).
"""

from __future__ import annotations

from lessor.core import events as ev
from lessor.simulations.checkers import Violation
from lessor.simulations.checkers.history import History

NAME = "ready_respected"
MAX_BACKOFF_MS = 600_000


def check(history: History) -> list[Violation]:
    """Violations: a backoff other than the promised one, or a lease before its action was ready."""
    out = []
    backoff: dict[str, int] = {}
    attempt: dict[str, int] = {}
    waiting: dict[str, tuple[ev.ActionRequeued, int]] = {}   # ref -> (requeue, true ms it is ready)
    for (_, e), moment in zip(history.entries, history.moments):
        if not isinstance(e, ev.ActionEvent) or not e.action:
            continue
        ref = f"{e.ns}/{e.run}/{e.action}"
        if isinstance(e, ev.ActionCreated):
            backoff[ref] = e.backoff_ms
        elif isinstance(e, ev.ActionLeased):
            attempt[ref] = e.attempt
            requeue, ready_ms = waiting.pop(ref, (None, 0))
            at_ms = history.call_ms(moment[0])
            if requeue is not None and at_ms < ready_ms:
                out.append(Violation(NAME, ref, f"leased at t={at_ms} ms (server {e.ts}), before it was ready: "
                                                f"the server clock first read ready_at_ms {requeue.ready_at_ms} "
                                                f"at t={ready_ms} ms"))
        elif isinstance(e, ev.ActionRequeued) and e.reason == "user_error" and ref in backoff:
            base = min(backoff[ref] * 2 ** (attempt.get(ref, 1) - 1), MAX_BACKOFF_MS)
            low, high = int(base * 0.5), int(base * 1.5)
            if not low <= e.ready_at_ms - e.ts <= high:
                out.append(Violation(NAME, ref, f"requeued after attempt {attempt.get(ref)} with ready_at_ms "
                                                f"{e.ready_at_ms}, {e.ready_at_ms - e.ts} ms on; the backoff of "
                                                f"{base} ms jittered is {low}..{high} ms"))
            if e.ready_at_ms > e.ts:
                waiting[ref] = (e, _first_true_ms(history, history.call_ms(moment[0]), e.ready_at_ms))
    return out


def _first_true_ms(history: History, from_ms: int, server_ms: int) -> int:
    """The first true time at or after ``from_ms`` at which the server's clock read ``server_ms`` or more."""
    truth = history.truth
    epoch = truth.epoch_ms
    points = [from_ms] + sorted(at for at, _ in truth.clock_offsets if at > from_ms)
    for i, start in enumerate(points):
        offset = truth.server_time(start, epoch) - epoch - start
        t = max(start, server_ms - epoch - offset)
        if i + 1 == len(points) or t < points[i + 1]:
            return t
    return points[-1]
