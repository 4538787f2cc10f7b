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
