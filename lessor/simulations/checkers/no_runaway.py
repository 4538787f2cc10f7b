"""No runaway compute (guarantee 2): a worker stops an attempt by its lease's deadline + grace.

Evidence: the ground truth of when each worker really stopped computing each
attempt (server time, and the script calls made before), against the lease's
deadline then as the worker could rely on it, rebuilt by the history
(``history.py``: the grant, every renewal the server accepted, lease_resumed and
lease_extended; a renewal a crash rolled back still counts, as guarantee 6 gives
the lease a full ttl back). Judged against deadline + grace itself, the instant
the server may expire the lease, not against when a reaper happened to come.

Always on: what the plan does to clocks is accounted for, not switched off. A
worker clock slow within the drift bound and server clock jumps within what the
margin leaves allow nothing; beyond that, the excess (``history.allowance_ms``:
a forward jump of the server's clock, a clock slower than the bound) is allowed,
and no more.

And whatever the clocks did: a worker that hears its renewal answered STALE,
ABORTED or UNKNOWN stops that attempt at once (the keeper's contract), so no
stretch of computing it goes on past the moment the answer arrived.
"""

from __future__ import annotations

from lessor.core import events as ev
from lessor.simulations.checkers import Violation
from lessor.simulations.checkers.history import History, allowance_ms
from lessor.simulations.truth import Truth

NAME = "no_runaway"


def check(history: History, plan) -> list[Violation]:
    """Violations: an attempt still computing past its lease's deadline + grace (plus the allowance).

    Attempts whose grant the log does not have (a crash or failover rolled it back)
    are outside guarantee 2: the server forgot the lease.
    """
    out = []
    for x in history.truth.executions:
        # A stretch that ended the instant it began computed nothing (a lease granted while its
        # worker was paused is fenced at once, by the watchdog whose timer came due meanwhile).
        if x.end_server_ms is None or x.end_call is None or x.end_ms == x.start_ms:
            continue
        lease = history.lease(x.ref, x.token)
        if lease is None:
            continue
        deadline, set_at = lease.believed_deadline((x.end_call, -1))
        allowed = allowance_ms(plan, history.truth, x.worker, history.call_ms(set_at[0]), x.end_ms)
        over = x.end_server_ms - (deadline + lease.grace_ms)
        if over > allowed:
            out.append(Violation(NAME, x.ref, f"{x.worker} computed token {x.token} until {x.end_server_ms} "
                                              f"({x.ended}), {over} ms past its deadline + grace "
                                              f"({deadline} + {lease.grace_ms})"
                                              + (f"; the clock faults allow {allowed} ms" if allowed else "")))
    return out + _after_refusal(history.truth)


def _after_refusal(truth: Truth) -> list[Violation]:
    """Attempts still computing after their worker heard a renewal refused."""
    refused: dict[tuple[str, str, int], tuple[int, str]] = {}
    for r in truth.reports:
        if r.kind == "renew" and r.heard_ms is not None and r.answer in ("STALE", "ABORTED", "UNKNOWN"):
            key = (r.worker, r.ref, r.token)
            refused[key] = min(refused.get(key, (r.heard_ms, r.answer)), (r.heard_ms, r.answer))
    out = []
    for x in truth.executions:
        heard = refused.get((x.worker, x.ref, x.token))
        if heard is not None and x.end_ms is not None and x.end_ms > max(heard[0], x.start_ms):
            out.append(Violation(NAME, x.ref, f"{x.worker} computed token {x.token} until t={x.end_ms} ms "
                                              f"({x.ended}), {x.end_ms - heard[0]} ms after it heard its renewal "
                                              f"answered {heard[1]}"))
    return out


def check_wall_clock(entries, truth: Truth, tolerance_ms: int) -> list[Violation]:
    """The live-chaos form: ``truth`` has wall-clock ends (``end_ms``) of real processes on this host.

    A violation is an attempt still running more than ``tolerance_ms`` (timer and
    scheduling slack) after its lease_expired event's server time.
    """
    last: dict[tuple[str, int], int] = {}
    for x in truth.executions:
        last[(x.ref, x.token)] = max(last.get((x.ref, x.token), 0), x.end_ms or 0)
    out = []
    for _, e in entries:
        if isinstance(e, ev.LeaseExpired):
            ref = f"{e.ns}/{e.run}/{e.action}"
            end = last.get((ref, e.token))
            if end is not None and end > e.ts + tolerance_ms:
                out.append(Violation(NAME, ref, f"{e.worker} kept running token {e.token} "
                                                f"{end - e.ts} ms after its lease expired"))
    return out
