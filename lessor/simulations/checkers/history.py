"""The history of one simulation, rebuilt from the event log and the ground truth.

Not a checker: what several checkers judge against, so that none of them has to
trust an answer the server gave. The log says what the server accepted, in
order, per partition; the truth says when each script call ran (the step, the
true time, the server's clock) and where each partition's stream ended just
before it (``Truth.calls``). Together they place every event of the final log at
the call that wrote it, and so at an instant, which the log alone cannot do
(renewals on time write no event, and the server's clock may jump).

From that, per lease (action, token):

- its grant, its end (the event that ended it, and how), its ttl and grace;
- every change of its deadline, in the order they happened: the grant,
  ``lease_resumed`` and ``lease_extended`` from the log, and the renewals the
  server accepted on time, from the truth (no event: the hot path);
- ``deadline_at(before)``: the deadline as the server held it just before a
  moment. On-time renewals are soft state: never in the AOF, so a restart or a
  crash (``Truth.resets``) forgets every one made before it, and a failover
  those of its lag window (``Truth.data_loss``). Events in the final log
  survived by definition.
- ``believed_deadline(before)``: the deadline a worker may rely on: every
  renewal counts, lost or not, because the first expiry-judging script of a new
  epoch gives each live lease a full ttl again (guarantee 6).

Moments are ordered by ``(call, index)``: the script call, then the position of
an event in its partition's stream (``-1``: before anything that call wrote).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lessor.core import events as ev
from lessor.simulations.truth import Truth

Moment = tuple[int, int]  # (script call, stream index; -1 = before the call wrote anything)

_ENDS = {ev.LeaseExpired: "expired", ev.ActionSucceeded: "succeeded", ev.ActionAborted: "aborted",
         ev.ActionTimedOut: "timed_out"}


@dataclass
class LeaseHistory:
    """One lease: an attempt of an action under one token, as the log and the truth tell it."""

    ref: str
    token: int
    partition: int
    worker: str
    ttl_ms: int
    grace_ms: int
    granted: Moment
    # (moment, deadline, memory only: an on-time renewal, lost with the server's memory)
    deadlines: list[tuple[Moment, int, bool]] = field(default_factory=list)
    ended: Moment | None = None
    how: str = ""          # succeeded, requeued:<reason>, failed:<reason>, aborted, expired, timed_out

    def current_at(self, before: Moment) -> bool:
        """True if this lease was the action's current one just before ``before``."""
        return self.granted < before and (self.ended is None or self.ended >= before)

    def deadline_at(self, before: Moment, survives) -> tuple[int, Moment]:
        """The deadline the server held just before ``before``, and when it was set.
        ``survives(moment, before)`` says whether a memory-only write then was still there."""
        best = self.deadlines[0]
        for moment, deadline, soft in self.deadlines:
            if moment < before and (not soft or survives(moment, before)):
                best = (moment, deadline, soft)
        return best[1], best[0]

    def believed_deadline(self, before: Moment) -> tuple[int, Moment]:
        """The deadline a worker may rely on just before ``before`` (every accepted renewal counts)."""
        return self.deadline_at(before, lambda moment, at: True)


@dataclass
class History:
    """Every event's call, every lease, and what was current when."""

    truth: Truth
    entries: list[tuple[int, ev.Event]]
    moments: list[Moment]                         # per entry: (call, stream index)
    leases: dict[tuple[str, int], LeaseHistory]
    by_ref: dict[str, list[LeaseHistory]]

    def misplaced(self) -> list[str]:
        """Entries whose time is not the server clock of the call the history places them at
        (each script reads the clock once and stamps every event it writes with it): empty
        unless the placement, or a script's clock, is wrong."""
        return [f"{e.TYPE} (event {e.id}) at {e.ts}, placed at call {c} (server clock "
                f"{self.truth.calls[c].server_ms if c >= 0 else None})"
                for (_, e), (c, _) in zip(self.entries, self.moments)
                if c < 0 or self.truth.calls[c].server_ms != e.ts]

    def lease(self, ref: str, token: int) -> LeaseHistory | None:
        return self.leases.get((ref, token))

    def current(self, ref: str, before: Moment) -> LeaseHistory | None:
        """The action's lease in force just before ``before`` (None: not running then)."""
        for lease in reversed(self.by_ref.get(ref, ())):
            if lease.granted < before:
                return lease if lease.current_at(before) else None
        return None

    def call_ms(self, call: int) -> int:
        """The true time a call ran."""
        return self.truth.calls[call].true_ms if 0 <= call < len(self.truth.calls) else 0

    def call_step(self, call: int) -> int:
        return self.truth.calls[call].step if 0 <= call < len(self.truth.calls) else 0

    def survives(self, moment: Moment, before: Moment) -> bool:
        """Did a memory-only write (an on-time renewal) made at ``moment`` still hold at ``before``?
        Not after a restart or crash in between, nor if a failover's lag window took it."""
        made, at = moment[0], before[0]
        if any(made < reset <= at for reset in self.truth.resets):
            return False
        made_step, at_step = self.call_step(made), self.call_step(at)
        return not any(d.lost(made_step) and d.at_step <= at_step for d in self.truth.data_loss)

    def deadline_at(self, lease: LeaseHistory, before: Moment) -> tuple[int, Moment]:
        """The lease's deadline as the server held it just before ``before``."""
        return lease.deadline_at(before, self.survives)


def build(entries, truth: Truth, partitions: int) -> History:
    """The history of a simulation from its ``(partition, event)`` pairs (each partition in log
    order) and its truth. Accepted renewals of leases the log does not have are left out."""
    moments = _moments(entries, truth, partitions)
    leases: dict[tuple[str, int], LeaseHistory] = {}
    by_ref: dict[str, list[LeaseHistory]] = {}
    for (partition, e), moment in zip(entries, moments):
        if isinstance(e, ev.ActionEvent) and e.action:
            _apply(leases, by_ref, partition, e, moment)
    for r in truth.reports:
        lease = leases.get((r.ref, r.token))
        if r.kind == "renew" and r.answer == "OK" and r.ran_call is not None and lease is not None:
            lease.deadlines.append(((r.ran_call, -1), r.server_ms + lease.ttl_ms, True))
    for lease in leases.values():
        lease.deadlines.sort(key=lambda d: d[0])
    return History(truth, list(entries), moments, leases, by_ref)


def _apply(leases, by_ref, partition: int, e: ev.ActionEvent, moment: Moment) -> None:
    ref = f"{e.ns}/{e.run}/{e.action}"
    if isinstance(e, ev.ActionLeased):
        lease = LeaseHistory(ref, e.token, partition, e.worker, e.ttl_ms, e.grace_ms, moment,
                             [(moment, e.deadline_ms, False)])
        leases[(ref, e.token)] = lease
        by_ref.setdefault(ref, []).append(lease)
        return
    current = by_ref.get(ref, [None])[-1]
    if current is None or current.ended is not None:
        return
    if isinstance(e, (ev.LeaseResumed, ev.LeaseExtended)) and e.token == current.token:
        current.deadlines.append((moment, e.deadline_ms, False))
        return
    how = _ENDS.get(type(e))
    if isinstance(e, (ev.ActionRequeued, ev.ActionFailed)):
        how = f"{'requeued' if isinstance(e, ev.ActionRequeued) else 'failed'}:{e.reason}"
    if how is not None:
        current.ended, current.how = moment, how


def _moments(entries, truth: Truth, partitions: int) -> list[Moment]:
    """Per event, the call that appended it: the latest call before which its partition's
    stream (counted in stream entries: an entry holds one call's events) was no longer than
    the event's entry's position. Rollbacks (a crash, a failover) cut the stream back at a call
    boundary, so this holds across them too. A moment's index counts events, to order the
    events of one entry."""
    index: list[int] = []
    entry: list[int] = []
    counts = [0] * partitions      # entries so far, per partition
    events = [0] * partitions      # events so far, per partition
    for partition, e in entries:
        if e.index == 0:
            counts[partition] += 1
        entry.append(counts[partition] - 1)
        index.append(events[partition])
        events[partition] += 1
    call_of = [[-1] * n for n in counts]
    for p in range(partitions):
        lowest = counts[p]
        for c in range(len(truth.calls) - 1, -1, -1):
            length = truth.calls[c].stream_lens[p]
            if length < lowest:
                for i in range(length, lowest):
                    call_of[p][i] = c
                lowest = length
    return [(call_of[p][k], i) for (p, _), k, i in zip(entries, entry, index)]


def allowance_ms(plan, truth: Truth, worker: str, from_ms: int, to_ms: int) -> int:
    """How long past its lease's expiry (server clock) a worker may compute without breaking
    guarantee 2, given what the plan did to the clocks between ``from_ms`` (true time the
    deadline was last set) and ``to_ms`` (when it stopped).

    A worker stops ``ttl + grace - margin`` after the last renewal it heard, on its own clock;
    the server expires the lease ``ttl + grace`` after that renewal ran, on its clock. The
    margin covers the difference: a worker clock slow by rate r adds ``(ttl + grace - margin)
    * (1/r - 1)``, and a forward jump of the server's clock adds the jump. Whatever exceeds
    the margin is the allowance: 0 while drift stays within its bound and no jump exceeds
    what the margin has left (the exact timer of the watchdog adds at most 1 ms, rounding).
    """
    c = plan.config
    index = int(worker[1:].split("-", 1)[0])
    rates = [1.0] + [f.rate for f in plan.faults if f.kind == "drift" and f.worker == index and f.at_ms <= to_ms]
    earlier = [f for f in plan.faults if f.kind == "drift" and f.worker == index and f.at_ms <= from_ms]
    if earlier:  # the rate in force at from_ms replaces the initial 1.0
        rates = [max(earlier, key=lambda f: f.at_ms).rate] + [
            f.rate for f in plan.faults if f.kind == "drift" and f.worker == index and from_ms < f.at_ms <= to_ms]
    slowest = min(rates)
    drift = (c.ttl_ms + c.grace_ms - c.margin_ms) * (1 / slowest - 1) if slowest < 1 else 0.0
    offsets = truth.clock_offsets
    jumps = sum(max(0, off - prev) for (at, off), (_, prev) in zip(offsets[1:], offsets) if from_ms <= at <= to_ms)
    return max(0, math.ceil(jumps + drift - c.margin_ms) + 1)
