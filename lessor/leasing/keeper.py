"""The worker-side lease keeper: batched heartbeats and self-fencing.

One keeper per worker renews every held lease in one batched call every
``heartbeat_ms`` (coalescing: whatever is held at send time is sent, once).
Each lease's work runs in its own anyio cancel scope, registered here.

Self-fencing (guarantee 2): for each lease the keeper remembers the *send*
time, on the worker's own monotonic clock, of the last renewal that succeeded.
Once ``ttl + grace - margin`` has passed since then without another success,
the work is cancelled, its result dropped, and the token is never used again.
Because the server set the deadline no earlier than that send time, the worker
stops before the server could reap, as long as the two clocks' rates differ by
less than the margin allows. A renewal answering ABORTED or STALE (or UNKNOWN)
cancels at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Awaitable, Callable

import logging

import anyio

from lessor import telemetry
from lessor.core.clock import MonotonicClock, SystemMonotonicClock
from lessor.leasing.client import Lease, LeaseClient
from lessor.leasing.codes import Code
from lessor.leasing.outage import Outage


class FenceReason(str, Enum):
    """Why the keeper stopped a lease's work."""

    SELF_FENCED = "self_fenced"   # no successful renewal for ttl + grace - margin
    ABORTED = "aborted"           # the server said the action was aborted
    STALE = "stale"               # the server said the token is no longer current
    UNKNOWN = "unknown"           # the server does not know the action


log = logging.getLogger("lessor.keeper")

_CODE_TO_REASON = {Code.ABORTED: FenceReason.ABORTED, Code.STALE: FenceReason.STALE,
                   Code.UNKNOWN: FenceReason.UNKNOWN}


@dataclass
class HeldLease:
    """A lease this worker holds, with its work's cancel scope and renewal bookkeeping."""

    lease: Lease
    scope: anyio.CancelScope | None
    last_ok_send_ms: float
    fenced: FenceReason | None = None
    fenced_at_ms: float | None = None
    resumed: int = 0
    work_ended_ms: float | None = None   # when its work ended (its report is on the way); None: running


@dataclass(frozen=True)
class KeeperStatistics:
    """Totals since the keeper started."""

    held: int
    renew_calls: int
    renew_failures: int
    renewed: int
    resumed: int
    fenced: dict = field(default_factory=dict)


class LeaseKeeper:
    """Keeps a worker's leases alive, or stops their work when it cannot."""

    def __init__(self, client: LeaseClient, clock: MonotonicClock | None = None,
                 on_fence: Callable[[HeldLease], None] | None = None,
                 renew_timeout_ms: int | None = None) -> None:
        self.client = client
        self.config = client.config
        self.clock = clock or SystemMonotonicClock()
        self.on_fence = on_fence
        # A renewal that has not answered by the next heartbeat is a failed one.
        self.renew_timeout_ms = renew_timeout_ms or self.config.heartbeat_ms
        self.held: dict[str, HeldLease] = {}
        self.outage = Outage(f"lease keeper {client.worker_id}", client.backend.url, clock=self.clock, log=log)
        self._stats = dict(renew_calls=0, renew_failures=0, renewed=0, resumed=0)
        self._fenced_counts: dict[str, int] = {}

    def hold(self, lease: Lease, scope: anyio.CancelScope | None, acquired_send_ms: float) -> HeldLease:
        """Start keeping ``lease``; ``acquired_send_ms`` = when the acquire call was sent. The
        returned lease is already fenced (``fenced`` set) if it arrived past its self-fence deadline."""
        held = HeldLease(lease, scope, last_ok_send_ms=acquired_send_ms)
        self.held[lease.ref] = held
        # A grant heard after its own self-fence deadline (the acquire's reply was slow, or this
        # process was paused while it came): the server may already have given the action to
        # another worker, so it is fenced on arrival and must not start (callers check fenced).
        if self.clock.now_ms() - acquired_send_ms >= self.config.self_fence_after_ms:
            self.fence(held, FenceReason.SELF_FENCED)
        return held

    def drop(self, ref: str, token: int) -> None:
        """Stop keeping the lease of ``ref`` with ``token`` (its attempt ended); a different token
        held for ``ref`` stays: an old attempt ending late must not drop a newer lease of the
        same action. Workers call it through ``scheduler.outcome.end_attempt``."""
        held = self.held.get(ref)
        if held is not None and held.lease.token == token:
            del self.held[ref]

    def work_ended(self, held: HeldLease) -> None:
        """The work of ``held`` is over and its report is on the way.

        A renewal sent now would race the report, and lose: the server answers it
        STALE once the report has landed (and records it as refused). So the
        heartbeats leave the lease out while the report is young (one heartbeat);
        and an answer that comes back not OK fences nothing (there is nothing left
        to stop), the report's own answer tells how the attempt ended.
        """
        held.work_ended_ms = self.clock.now_ms()

    def usable(self, ref: str) -> bool:
        """True while the lease is held and not fenced: only then may the worker report with it."""
        held = self.held.get(ref)
        return held is not None and held.fenced is None

    def fence(self, held: HeldLease, reason: FenceReason) -> None:
        """Stop the work of ``held`` for good: cancel its scope, never use its token again."""
        if held.fenced is not None:
            return
        held.fenced = reason
        held.fenced_at_ms = self.clock.now_ms()
        self._fenced_counts[reason.value] = self._fenced_counts.get(reason.value, 0) + 1
        if held.scope is not None:
            held.scope.cancel()
        if self.on_fence is not None:
            self.on_fence(held)

    def check_self_fence(self) -> list[HeldLease]:
        """Fence every lease whose last successful renewal was sent too long ago."""
        now = self.clock.now_ms()
        late = [h for h in self.held.values()
                if h.fenced is None and now - h.last_ok_send_ms >= self.config.self_fence_after_ms]
        for h in late:
            self.fence(h, FenceReason.SELF_FENCED)
        return late

    async def heartbeat(self, renew: Callable[[list[Lease]], Awaitable[dict[str, Code]]] | None = None) -> None:
        """One heartbeat: renew every live lease in one batched call, then apply the answers.

        A lease not yet fenced is sent even if its self-fence deadline passed
        while this process was paused: the server judges it (a reaped lease
        answers STALE, and the late renewal is recorded as refused). The
        self-fence check follows, so nothing is sent for it again.
        """
        live, sent_ms = self.begin_heartbeat()
        codes = None
        if live:
            timeout_s = self.renew_timeout_ms / 1000
            with anyio.move_on_after(timeout_s):
                try:
                    if renew is None:   # each partition's call bounded apart: a silent node drops only its own
                        codes = await self.client.renew([h.lease for h in live], timeout_s=0.9 * timeout_s)
                    else:
                        codes = await renew([h.lease for h in live])
                    self.outage.ok()
                except Exception as exc:  # any failure is a failed renewal: self-fencing covers it
                    self.outage.failed(exc)  # one line per outage, not one per heartbeat
        self.finish_heartbeat(live, codes, sent_ms)

    def begin_heartbeat(self) -> tuple[list[HeldLease], float]:
        """First half of a heartbeat: the leases to renew and the send time.

        With ``finish_heartbeat`` this lets a simulator put its own network
        between the send and the answer while running the same logic.
        """
        now = self.clock.now_ms()
        young = now - self.config.heartbeat_ms   # a report sent after this needs no renewal yet
        return [h for h in self.held.values()
                if h.fenced is None and (h.work_ended_ms is None or h.work_ended_ms <= young)], now

    def finish_heartbeat(self, live: list[HeldLease], codes: dict[str, Code] | None, sent_ms: float) -> None:
        """Second half: apply the answers (None = no answer), then the self-fence check."""
        if live:
            self._stats["renew_calls"] += 1
            if codes is None:
                self._stats["renew_failures"] += 1
            else:
                meters = telemetry.instruments()
                meters.renewal_latency_ms.record(self.clock.now_ms() - sent_ms)
                meters.renewals.add(len(live))
                self._apply(live, codes, sent_ms)
        self.check_self_fence()

    def _apply(self, live: list[HeldLease], codes: dict[str, Code], sent_ms: float) -> None:
        for h in live:
            code = codes.get(h.lease.ref)
            if code in (Code.OK, Code.RESUMED):
                h.last_ok_send_ms = sent_ms
                self._stats["renewed"] += 1
                if code is Code.RESUMED:
                    h.resumed += 1
                    self._stats["resumed"] += 1
            elif code is not None and h.work_ended_ms is None:
                self.fence(h, _CODE_TO_REASON[code])

    async def run(self) -> None:
        """Heartbeat every ``heartbeat_ms`` and watch the self-fence deadlines, forever (cancel to stop).

        The watchdog runs apart from the heartbeats so that a renewal call stuck
        on a dead connection cannot delay the self-fence past its deadline.
        """
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watchdog)
            while True:
                started_ms = self.clock.now_ms()
                await self.heartbeat()
                # A steady cadence: a heartbeat that waited on a silent node (up to its timeout)
                # does not push the next one back by as much. Slept after it, the next try came
                # up to two heartbeats later, and leases granted just before a primary was killed
                # self-fenced with one renewal tried in their ttl (seen on a 3-primary cluster).
                elapsed_ms = self.clock.now_ms() - started_ms
                await anyio.sleep(max(0.0, self.config.heartbeat_ms - elapsed_ms) / 1000)

    async def _watchdog(self) -> None:
        while True:
            await anyio.sleep(self.until_next_fence_ms() / 1000)
            self.check_self_fence()

    def until_next_fence_ms(self) -> float:
        """Time until the earliest self-fence deadline (at most one heartbeat, at least 1 ms)."""
        live = [h.last_ok_send_ms for h in self.held.values() if h.fenced is None]
        if not live:
            return self.config.heartbeat_ms
        due = min(live) + self.config.self_fence_after_ms - self.clock.now_ms()
        return min(max(due, 1.0), self.config.heartbeat_ms)

    def statistics(self) -> KeeperStatistics:
        return KeeperStatistics(held=len(self.held), fenced=dict(self._fenced_counts), **self._stats)
