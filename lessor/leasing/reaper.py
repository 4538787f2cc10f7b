"""The reaper: expires leases past deadline + grace, times out attempts, promotes backoffs.

Each pass calls reap.lua on every partition in bounded batches (``limit`` per
call) and repeats a partition at once while the script says there is more, up
to ``max_batches`` per pass so one busy partition cannot starve the others.
Several reapers may run at once: each script call is atomic, so a lease is
never expired twice. ``run()`` loops in real time; a simulation calls
``reap_once()`` itself after moving the virtual clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from lessor import telemetry
from lessor.leasing.backend import Backend


@dataclass(frozen=True)
class ReaperStatistics:
    """Totals since the reaper started."""

    passes: int
    expired: int
    timed_out: int
    promoted: int
    max_lag_ms: int
    last_lag_ms: int


@dataclass(frozen=True)
class PassResult:
    """What one pass over all partitions did."""

    expired: int = 0
    timed_out: int = 0
    promoted: int = 0
    lag_ms: int = 0
    more: bool = False
    failovers: int = 0


class Reaper:
    """Expire and fail over leases of one backend."""

    def __init__(self, backend: Backend, *, limit: int = 500, interval_ms: int = 200, max_batches: int = 20) -> None:
        if limit < 1 or interval_ms <= 0 or max_batches < 1:
            raise ValueError("reaper needs limit >= 1, interval_ms > 0, max_batches >= 1")
        self.backend = backend
        self.limit = limit
        self.interval_ms = interval_ms
        self.max_batches = max_batches
        self._totals = dict(passes=0, expired=0, timed_out=0, promoted=0, max_lag_ms=0, last_lag_ms=0)

    async def reap_partition(self, partition: int) -> PassResult:
        """One reap.lua call on one partition."""
        keys = self.backend.keys(partition)
        expired, timed_out, promoted, lag, more, failovers = await self.backend.scripts.reap(
            keys=[keys.prefix], args=[self.limit]
        )
        return PassResult(int(expired), int(timed_out), int(promoted), int(lag), bool(more), int(failovers))

    async def reap_once(self) -> PassResult:
        """One pass over every partition; returns what it did (and whether work is left)."""
        total = PassResult()
        for p in range(self.backend.partitions):
            for _ in range(self.max_batches):
                r = await self.reap_partition(p)
                total = PassResult(total.expired + r.expired, total.timed_out + r.timed_out,
                                   total.promoted + r.promoted, max(total.lag_ms, r.lag_ms),
                                   total.more or r.more, total.failovers + r.failovers)
                if not r.more:
                    break
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

    async def run(self, *, on_pass=None) -> None:
        """Reap forever, every ``interval_ms`` (sooner while work is left). Cancel to stop."""
        while True:
            result = await self.reap_once()
            if on_pass is not None:
                on_pass(result)
            if not result.more:
                await anyio.sleep(self.interval_ms / 1000)

    def statistics(self) -> ReaperStatistics:
        """Totals since start."""
        return ReaperStatistics(**self._totals)
