"""The reaper: expires leases past deadline + grace, times out attempts, promotes backoffs.

Each pass calls reap.lua on every partition, all partitions concurrently, in
bounded batches (``limit`` per call), and repeats a partition at once while the
script says there is more, up to ``max_batches`` per pass so one busy
partition cannot starve the others. A partition whose call fails (its node is
down, failing over) is skipped for this pass; the others go on.

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

import logging
from dataclasses import dataclass

import anyio

from lessor import telemetry
from lessor.core.clock import MonotonicClock
from lessor.errors import LessorError, NotDurable
from lessor.leasing.backend import Backend
from lessor.leasing.outage import Outage, is_transient

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

    def __add__(self, r: "PassResult") -> "PassResult":
        return PassResult(self.expired + r.expired, self.timed_out + r.timed_out, self.promoted + r.promoted,
                          max(self.lag_ms, r.lag_ms), self.more or r.more, self.failovers + r.failovers,
                          self.failed + r.failed)


class Reaper:
    """Expire and fail over leases of one backend.

    ``shared``: reap through the partitions' pass throttle (at most one pass per
    partition per ``interval_ms`` across every process that reaps); a
    simulation that drives passes itself leaves it off.
    """

    def __init__(self, backend: Backend, *, limit: int = 500, interval_ms: int = 200, max_batches: int = 20,
                 shared: bool = False, name: str = "reaper", clock: MonotonicClock | None = None) -> None:
        if limit < 1 or interval_ms <= 0 or max_batches < 1:
            raise ValueError("reaper needs limit >= 1, interval_ms > 0, max_batches >= 1")
        self.backend = backend
        self.limit = limit
        self.interval_ms = interval_ms
        self.max_batches = max_batches
        self.shared = shared
        self.outage = Outage(name, backend.url, clock=clock, log=log)
        self.durability_outage = Outage(f"{name} (durability {backend.durability})", backend.url, clock=clock,
                                        log=log)
        self._totals = dict(passes=0, expired=0, timed_out=0, promoted=0, max_lag_ms=0, last_lag_ms=0,
                            failed_calls=0)
        self._last_error: Exception | None = None

    async def reap_partition(self, partition: int) -> PassResult:
        """One reap.lua call on one partition (StoreUnavailable, NotDurable, ServerRefused pass through)."""
        keys = self.backend.keys(partition)
        args = [self.limit, self.interval_ms if self.shared else 0]
        try:
            reply = await self.backend.call("reap", [keys.prefix], args)
        except NotDurable as exc:  # it ran: count what it did; say once (per episode) it may not last
            self.durability_outage.failed(exc)
            reply = exc.reply
        else:
            self.durability_outage.ok()
        expired, timed_out, promoted, lag, more, failovers = (int(x) for x in reply[:6])
        return PassResult(expired, timed_out, promoted, lag, bool(more), failovers)

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

    async def run(self, *, on_pass=None) -> None:
        """Reap forever, every ``interval_ms`` (sooner while work is left). Cancel to stop.

        Never returns on a store fault: a pass in which every partition failed
        counts as an outage (logged once, with its length when it ends) and the
        next pass waits a capped, jittered backoff instead of the interval.
        """
        while True:
            result = await self.reap_once()
            if on_pass is not None:
                on_pass(result)
            if result.failed and result.failed >= self.backend.partitions:
                delay_ms = self.outage.failed(self._last_error or Exception("every partition failed"))
                await anyio.sleep(max(delay_ms, self.interval_ms) / 1000)
                continue
            self.outage.ok()
            if not result.more:
                await anyio.sleep(self.interval_ms / 1000)

    def statistics(self) -> ReaperStatistics:
        """Totals since start."""
        return ReaperStatistics(outages=self.outage.outages, longest_outage_ms=self.outage.longest_ms,
                                **self._totals)
