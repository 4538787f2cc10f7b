"""The reaper: expires leases past deadline + grace, times out attempts, promotes backoffs.

Each pass calls reap.lua on every partition, all partitions concurrently, in
bounded batches (``limit`` items per call, and ``budget_ms`` of server time per
call), and repeats a partition at once while the script says there is more, up
to ``max_batches`` per pass so one busy partition cannot starve the others. A
partition whose call fails (its node is down, failing over) is skipped for this
pass; the others go on.

The budget is what keeps a storm of expired leases (a fleet lost at once) from
stalling the server: the server serves nobody else while a script runs, and
500 expiries took 34 ms (p50) in one call. With a budget each call stops after
about ``budget_ms`` of server CPU time and says there is more; every other
client then waits at most one short call per reaper in flight
(``max_in_flight``). Each call's server CPU time (the script's own report,
see reap.lua) is recorded as ``lessor.reaper.call`` and kept in
``PassResult.call_ms``; ``lessor bench reap-storm`` measures the storm.

Any number of reapers may run at once: each script call is atomic, so a lease
is never expired twice, and with ``shared=True`` the script's pass throttle
keeps the whole fleet to one pass per partition per interval. That is how
every worker reaps by default (``Worker``), so reaping never depends on one
process; ``lessor reaper`` remains for deployments that want it apart.

``run()`` loops in real time and outlives store outages (one log line when the
server is lost, one when it is back); a simulation calls ``reap_once()``
itself after moving the virtual clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

import anyio

from lessor import telemetry
from lessor.core.clock import MonotonicClock
from lessor.errors import LessorError, NotDurable
from lessor.leasing.backend import Backend
from lessor.leasing.outage import Outage, is_transient
from lessor.leasing.scripts import ClockMode

log = logging.getLogger("lessor.reaper")


@dataclass(frozen=True)
class ReaperStatistics:
    """Totals since the reaper started."""

    passes: int
    expired: int
    timed_out: int
    promoted: int
    max_lag_ms: int
    last_lag_ms: int
    failed_calls: int
    outages: int
    longest_outage_ms: float
    calls: int = 0               # reap.lua calls that answered
    max_call_ms: float = 0.0     # the longest one (server CPU time, as the script timed it)
    call_ms_p99: float = 0.0     # p99 over the last CALL_WINDOW calls


@dataclass(frozen=True)
class PassResult:
    """What one pass over all partitions did."""

    expired: int = 0
    timed_out: int = 0
    promoted: int = 0
    lag_ms: int = 0
    more: bool = False
    failovers: int = 0
    failed: int = 0       # partitions whose call failed in this pass (skipped until the next)
    call_ms: tuple[float, ...] = ()   # server CPU ms of each reap.lua call of the pass, as the script timed it
    # In how many ms (server clock) the earliest item left in the partitions' indexes falls
    # due; None if they are all empty (or no call answered).
    next_due_ms: int | None = None

    def __add__(self, r: "PassResult") -> "PassResult":
        due = [d for d in (self.next_due_ms, r.next_due_ms) if d is not None]
        return PassResult(self.expired + r.expired, self.timed_out + r.timed_out, self.promoted + r.promoted,
                          max(self.lag_ms, r.lag_ms), self.more or r.more, self.failovers + r.failovers,
                          self.failed + r.failed, self.call_ms + r.call_ms, min(due, default=None))

    @property
    def max_call_ms(self) -> float:
        """The longest reap.lua call of the pass (0 if none answered)."""
        return max(self.call_ms, default=0.0)

    @property
    def call_ms_p99(self) -> float:
        """p99 (nearest rank) of the pass's reap.lua call times (0 if none answered)."""
        return p99(self.call_ms)


def p99(values) -> float:
    """The 0.99 quantile, nearest rank, of ``values`` (0.0 if empty)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


CALL_WINDOW = 4096  # calls the statistics' p99 looks back over


class Reaper:
    """Expire and fail over leases of one backend.

    ``shared``: reap through the partitions' pass throttle (at most one pass per
    partition per ``interval_ms`` across every process that reaps); a
    simulation that drives passes itself leaves it off.

    ``budget_ms``: server CPU time after which one reap.lua call stops and says
    there is more (None: only ``limit`` bounds a call). The script measures it
    with os.clock (TIME is frozen inside a script), real time that a simulation
    cannot replay, so it is sent with the server clock only: on a virtual clock
    calls are bounded by ``limit`` alone and replay alike.

    ``max_in_flight``: reap.lua calls this reaper has outstanding at once
    (None: one per partition, as before budgets). Each call queued at the server
    is one more budget that a renewal arriving behind it may wait out; one keeps
    the server nearly as busy reaping (the reply's round trip is its only gap).
    Measured (`lessor bench reap-storm`, 20k leases, medians of two rounds in one
    run): one in flight cleared the storm in 0.84 s, one per partition in 1.07 s;
    PING p99 rose ×1.2 against ×2.7. On a Cluster, raise it towards the number of
    primaries so that nodes reap in parallel.

    ``max_sleep_ms``: how long ``run()`` may sleep between passes when nothing is
    due sooner (None: ``interval_ms``, a pass every interval). Each pass learns
    from reap.lua when the partitions' earliest item (a lease's expiry, an
    attempt's timeout, a backoff's end) falls due, and the reaper sleeps until
    then, at least ``interval_ms`` and at most ``max_sleep_ms``. That is what
    makes an idle worker's reaper cheap. It stays on time as long as
    ``max_sleep_ms`` <= the ttl + grace of any lease granted while it sleeps (such
    a lease falls due no sooner than the next pass, which then sees it) and
    ``poke()`` is called when something may fall due sooner: a worker pokes its
    own reaper when it is granted leases (their timeouts) and when an attempt
    ends (a backoff).
    """

    def __init__(self, backend: Backend, *, limit: int = 500, interval_ms: int = 200, max_batches: int = 20,
                 shared: bool = False, name: str = "reaper", clock: MonotonicClock | None = None,
                 budget_ms: float | None = 2.0, max_in_flight: int | None = 1,
                 max_sleep_ms: int | None = None) -> None:
        if limit < 1 or interval_ms <= 0 or max_batches < 1:
            raise ValueError("reaper needs limit >= 1, interval_ms > 0, max_batches >= 1")
        if max_sleep_ms is not None and max_sleep_ms < interval_ms:
            raise ValueError(f"reaper needs max_sleep_ms >= interval_ms ({interval_ms}), got {max_sleep_ms}")
        if (budget_ms is not None and not 0 < budget_ms <= 60_000) or (max_in_flight is not None
                                                                       and max_in_flight < 1):
            raise ValueError("reaper needs 0 < budget_ms <= 60000 (or None), max_in_flight >= 1 (or None)")
        self.backend = backend
        self.limit = limit
        self.interval_ms = interval_ms
        self.max_batches = max_batches
        self.shared = shared
        self.budget_ms = budget_ms
        self._budget_us = (max(1, round(budget_ms * 1000)) if budget_ms is not None
                           and backend.clock is ClockMode.SERVER else 0)   # 0: no budget
        self._in_flight = anyio.CapacityLimiter(max_in_flight) if max_in_flight else None
        self._call_ms: deque[float] = deque(maxlen=CALL_WINDOW)
        self.outage = Outage(name, backend.url, clock=clock, log=log)
        self.durability_outage = Outage(f"{name} (durability {backend.durability})", backend.url, clock=clock,
                                        log=log)
        self._totals = dict(passes=0, expired=0, timed_out=0, promoted=0, max_lag_ms=0, last_lag_ms=0,
                            failed_calls=0, calls=0, max_call_ms=0.0)
        self._last_error: Exception | None = None
        self.max_sleep_ms = interval_ms if max_sleep_ms is None else max_sleep_ms
        self._poked = asyncio.Event()   # plain asyncio: made outside a running loop, cleared after each sleep

    async def reap_partition(self, partition: int) -> PassResult:
        """One reap.lua call on one partition (StoreUnavailable, NotDurable, ServerRefused pass through)."""
        keys = self.backend.keys(partition)
        args = [self.limit, self.interval_ms if self.shared else 0, self._budget_us]
        try:
            if self._in_flight is None:
                reply = await self.backend.call("reap", [keys.prefix], args)
            else:
                async with self._in_flight:
                    reply = await self.backend.call("reap", [keys.prefix], args)
        except NotDurable as exc:  # it ran: count what it did; say once (per episode) it may not last
            self.durability_outage.failed(exc)
            reply = exc.reply
        else:
            self.durability_outage.ok()
        expired, timed_out, promoted, lag, more, failovers = (int(x) for x in reply[:6])
        call_ms = int(reply[7]) / 1000
        next_due = int(reply[8])
        telemetry.instruments().reap_call_ms.record(call_ms)
        return PassResult(expired, timed_out, promoted, lag, bool(more), failovers, call_ms=(call_ms,),
                          next_due_ms=None if next_due < 0 else next_due)

    async def _reap_partition_batches(self, partition: int) -> PassResult:
        total = PassResult()
        for _ in range(self.max_batches):
            try:
                r = await self.reap_partition(partition)
            except Exception as exc:  # store faults (typed or raw from redis-py) skip this partition
                if not isinstance(exc, LessorError) and not is_transient(exc):
                    raise
                self._last_error = exc
                if not is_transient(exc):
                    log.error("reap of partition %d failed: %s", partition, exc)
                return total + PassResult(failed=1)
            total = total + r
            if not r.more:
                break
        return total

    async def reap_once(self) -> PassResult:
        """One pass over every partition, concurrently; returns what it did (and whether work is left).

        A partition whose call failed is counted in ``failed`` and skipped; the
        pass never raises for a store fault.
        """
        results: list[PassResult] = []

        async def one(p: int) -> None:
            results.append(await self._reap_partition_batches(p))

        async with anyio.create_task_group() as tg:
            for p in range(self.backend.partitions):
                tg.start_soon(one, p)
        total = sum(results, PassResult())
        self._record(total)
        return total

    def _record(self, r: PassResult) -> None:
        meters = telemetry.instruments()
        if r.expired:
            meters.lease_expirations.add(r.expired)
            meters.failovers.add(r.failovers)
            meters.reaper_lag_ms.record(r.lag_ms)
        if r.failovers or r.promoted:  # back on a queue
            meters.queue_depth.add(r.failovers + r.promoted)
        t = self._totals
        t["passes"] += 1
        t["expired"] += r.expired
        t["timed_out"] += r.timed_out
        t["promoted"] += r.promoted
        t["last_lag_ms"] = r.lag_ms
        t["max_lag_ms"] = max(t["max_lag_ms"], r.lag_ms)
        t["failed_calls"] += r.failed
        t["calls"] += len(r.call_ms)
        t["max_call_ms"] = max(t["max_call_ms"], r.max_call_ms)
        self._call_ms.extend(r.call_ms)

    async def run(self, *, on_pass=None) -> None:
        """Reap forever: a pass, then sleep until the next item falls due (at least
        ``interval_ms``, at most ``max_sleep_ms``; at once while work is left; sooner
        if poked). Cancel to stop.

        Never returns on a store fault: a pass in which every partition failed
        counts as an outage (logged once, with its length when it ends) and the
        next pass waits a capped, jittered backoff instead of the interval.
        """
        while True:
            mark = self.outage.mark()
            result = await self.reap_once()
            if on_pass is not None:
                on_pass(result)
            if result.failed and result.failed >= self.backend.partitions:
                delay_ms = self.outage.failed(self._last_error or Exception("every partition failed"))
                await anyio.sleep(max(delay_ms, self.interval_ms) / 1000)
                continue
            self.outage.ok(mark)
            if not result.more:
                await self._sleep_ms(self.sleep_ms(result))

    def sleep_ms(self, result: PassResult) -> int:
        """How long to sleep after ``result`` (its work done): until its next due item,
        within [interval_ms, max_sleep_ms]; a partition that failed is retried in an interval."""
        if result.failed:
            return self.interval_ms
        due = self.max_sleep_ms if result.next_due_ms is None else result.next_due_ms
        return max(self.interval_ms, min(due, self.max_sleep_ms))

    async def _sleep_ms(self, ms: int) -> None:
        # Always a full interval (the throttle's spacing, however often poked); the rest only
        # until poked.
        await anyio.sleep(self.interval_ms / 1000)
        if ms > self.interval_ms and not self._poked.is_set():
            with anyio.move_on_after((ms - self.interval_ms) / 1000):
                await self._poked.wait()
        self._poked.clear()

    def poke(self) -> None:
        """Something may fall due before the reaper's planned wake-up: make the next pass
        come an interval after the last one at the latest."""
        self._poked.set()

    def statistics(self) -> ReaperStatistics:
        """Totals since start."""
        return ReaperStatistics(outages=self.outage.outages, longest_outage_ms=self.outage.longest_ms,
                                call_ms_p99=p99(self._call_ms), **self._totals)
