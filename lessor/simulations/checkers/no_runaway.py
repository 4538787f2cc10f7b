"""No runaway compute (guarantee 2): a worker stops an attempt before its lease is reaped.

Evidence: each lease_expired event (server time) against the ground truth of
when the holder really stopped computing that attempt (server time too). Holds
under bounded clock drift; beyond it the checker stays silent (overlap time is
reported by no_overlap instead).
"""

from __future__ import annotations

from collections import defaultdict

from lessor.core import events as ev
from lessor.simulations.checkers import Violation
from lessor.simulations.truth import Truth

NAME = "no_runaway"


def check(entries, truth: Truth, drift_within_bound: bool = True, clock_monotonic: bool = True) -> list[Violation]:
    """Violations: an attempt still computing when (or after) its lease expired on the server.

    Compares server times, so it needs a server clock that never went back
    (``clock_monotonic``); otherwise it stays silent, as it does beyond the drift bound.
    """
    if not drift_within_bound or not clock_monotonic:
        return []
    stopped: dict[tuple[str, int], int] = defaultdict(int)
    for x in truth.executions:
        if x.end_server_ms is not None:
            key = (x.ref, x.token)
            stopped[key] = max(stopped[key], x.end_server_ms)
    out = []
    for _, e in entries:
        if isinstance(e, ev.LeaseExpired):
            ref = f"{e.ns}/{e.run}/{e.action}"
            last = stopped.get((ref, e.token))
            if last is not None and last > e.ts:
                out.append(Violation(NAME, ref, f"{e.worker} kept computing token {e.token} until {last}, "
                                                f"{last - e.ts} ms after its lease expired at {e.ts}"))
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
