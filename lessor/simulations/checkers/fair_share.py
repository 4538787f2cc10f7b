"""Fair share: while namespaces are saturated, each gets its weight's share of the leases.

Evidence: the event log alone, per partition and queue (fairness is kept per
partition: leasing/fairshare.py). From the log, a namespace is *backlogged* while it
has an action that was queued ready to run (created, or requeued with no backoff) and
not yet leased, aborted or served from the cache. An action requeued with a backoff is
left out until it is leased: it joins the queue when the reaper moves it, which the
log does not show, so the backlog read from the log is never more than the real one
and a window it calls saturated really was.

The bound (stride scheduling): over any stretch of leases in which namespaces i and j
are both backlogged all the time, with L leases each and weights w,

    | L_i / w_i  -  L_j / w_j |  <=  1 / w_i  +  1 / w_j

Why: acquire.lua always takes the lowest pass and advances it by 1/w per lease, so
every namespace in the rotation has a pass within one of its own strides of the
lowest; the difference of two passes stays within (-1/w_j, 1/w_i), and each pass
moves by exactly L/w. For weights 3:1 that is at most 1.33 leases of 1/w-weighted
lag, whatever the length of the stretch: the shares converge to the weights.

It holds for queues served by workers of every namespace (``*``) with no running
limit reached (a namespace at its limit steps aside by design). A queue in which a
queued action got an abort request (its entry is popped and skipped later, at a
time the log does not show) is not judged after that point.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations

from lessor.core import events as ev
from lessor.simulations.checkers import Violation

NAME = "fair_share"
_EPS = 1e-9   # float passes in Lua: a stride rounding


def bound(w_i: float, w_j: float) -> float:
    """The largest lag allowed between two saturated namespaces of weights ``w_i``, ``w_j``."""
    return 1 / w_i + 1 / w_j


class _Queue:
    """One partition's queue, read in log order."""

    def __init__(self) -> None:
        self.ready: dict[str, set[str]] = defaultdict(set)   # ns -> queued, ready action refs
        self.served: dict[str, float] = defaultdict(float)   # ns -> leases / weight so far
        self.spans: dict[tuple[str, str], tuple[float, float]] = {}  # pair -> (min, max) of the lag
        self.judged = True
        self.judged_leases = 0   # leases counted in an open lag span (what the bound was checked on)

    def lease(self, ns: str, ref: str, weight: float, weight_of) -> list[tuple[str, str, float]]:
        """Count a lease; the pairs whose lag span now passes the bound."""
        self.ready[ns].discard(ref)
        self.served[ns] += 1 / weight
        out = []
        self.judged_leases += any(ns in pair for pair in self.spans)
        for pair, (low, high) in list(self.spans.items()):
            if ns in pair:
                lag = self.served[pair[0]] - self.served[pair[1]]
                low, high = min(low, lag), max(high, lag)
                self.spans[pair] = (low, high)
                if high - low > bound(weight_of(pair[0]), weight_of(pair[1])) + _EPS:
                    out.append((pair[0], pair[1], high - low))
                    del self.spans[pair]   # reported once per stretch
        return out

    def refresh(self) -> None:
        """Open a lag span for every pair now both backlogged; close the others."""
        busy = sorted(ns for ns, refs in self.ready.items() if refs)
        pairs = set(combinations(busy, 2))
        for pair in list(self.spans):
            if pair not in pairs:
                del self.spans[pair]
        for pair in pairs - set(self.spans):
            lag = self.served[pair[0]] - self.served[pair[1]]
            self.spans[pair] = (lag, lag)


def check(entries, weights: dict[tuple[str, str], float] | None = None,
          queues: set[str] | None = None) -> list[Violation]:
    """Violations of the bound above in ``entries`` ((partition, event) pairs in log order).

    ``weights``: (queue, namespace) -> weight (missing = 1); ``queues``: the queues
    served by fair share (None = all). One violation per pair and saturated stretch.
    """
    return _scan(entries, weights, queues)[0]


def judged_leases(entries, weights: dict[tuple[str, str], float] | None = None,
                  queues: set[str] | None = None) -> int:
    """How many leases ``check`` judged: leased while their namespace and another were both
    backlogged. Zero means the check saw nothing to share (a blind spot, not a pass)."""
    return _scan(entries, weights, queues)[1]


def _scan(entries, weights, queues) -> tuple[list[Violation], int]:
    weights = weights or {}
    where: dict[str, tuple[int, str]] = {}        # action ref -> (partition, queue)
    state: dict[tuple[int, str], _Queue] = defaultdict(_Queue)
    out: list[Violation] = []
    for partition, e in entries:
        if not isinstance(e, ev.ActionEvent) or not getattr(e, "action", ""):
            continue
        ref = f"{e.ns}/{e.run}/{e.action}"
        if isinstance(e, ev.ActionCreated):
            if queues is None or e.queue in queues:
                where[ref] = (partition, e.queue)
        if ref not in where:
            continue
        q = state[where[ref]]
        if not q.judged:
            continue
        queue = where[ref][1]
        if isinstance(e, ev.ActionCreated) or (isinstance(e, ev.ActionRequeued) and e.ready_at_ms <= e.ts):
            q.ready[e.ns].add(ref)
        elif isinstance(e, ev.ActionLeased):
            for i, j, lag in q.lease(e.ns, ref, weights.get((queue, e.ns), 1.0),
                                     lambda ns: weights.get((queue, ns), 1.0)):
                out.append(Violation(NAME, f"p{partition}/{queue}", (
                    f"{i} and {j} were both backlogged, yet their weighted lease counts drifted {lag:.2f} "
                    f"apart (bound {bound(weights.get((queue, i), 1.0), weights.get((queue, j), 1.0)):.2f}), "
                    f"at the lease of {ref} (stream order)")))
        elif isinstance(e, ev.AbortRequested) and ref in q.ready[e.ns]:
            q.judged = False
            continue
        else:
            q.ready[e.ns].discard(ref)   # aborted, cached, or requeued with a backoff
        q.refresh()
    return out, sum(q.judged_leases for q in state.values())
