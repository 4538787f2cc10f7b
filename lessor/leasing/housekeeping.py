"""Housekeeping: retention and compaction, run by every reaper in small bounded steps.

Every process that reaps (workers, ``lessor reaper``) also runs a
``Housekeeper``. A fleet-wide throttle (one ``SET NX PX`` key) makes the whole
fleet cost one housekeeping pass per interval:

* **retention** (``leasing/retention.py``): finished runs retired by each
  namespace's policy, in calls of at most ``limit`` runs;
* **compaction** (``leasing/compaction.py``), only where an archive is
  configured (``lessor reaper --archive DIR``): archive, snapshot, trim, in
  steps of at most ``batch`` events per partition.

Store faults never end it: they are waited out like the reaper's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import anyio

from lessor.leasing.archive import Archive
from lessor.leasing.backend import Backend
from lessor.leasing.compaction import CompactionResult, SnapshotCache, compact
from lessor.leasing.outage import Outage, keep_running
from lessor.leasing.retention import RetentionResult, retire_once

log = logging.getLogger("lessor.housekeeping")

#: The fleet-wide throttle: whoever sets it runs the pass; the others skip until it expires.
DUE_KEY = "lessor:housekeeping:due"


@dataclass
class HousekeepingResult:
    """One pass: skipped (another process ran one within the interval), or what it did."""

    skipped: bool = False
    retention: RetentionResult = field(default_factory=RetentionResult)
    compaction: list[CompactionResult] = field(default_factory=list)
    took_ms: float = 0.0


class Housekeeper:
    """Retention (and compaction, with an archive) every ``interval_ms``, once for the whole fleet."""

    def __init__(self, backend: Backend, archive: Archive | None = None, *, interval_ms: int = 5_000,
                 limit: int = 100, batch: int = 10_000, keep_window_ms: int = 60_000,
                 outage: Outage | None = None, partitions: list[int] | None = None) -> None:
        """``partitions``: the ones this process compacts (default all; compactors in several
        processes each take their own)."""
        if interval_ms <= 0 or limit <= 0 or batch <= 0 or keep_window_ms < 0:
            raise ValueError("interval_ms, limit and batch must be > 0, keep_window_ms >= 0")
        self.backend, self.archive, self.partitions = backend, archive, partitions
        self._snapshots = SnapshotCache()   # this process's last snapshots: not re-read and re-decoded
        self.interval_ms, self.limit, self.batch, self.keep_window_ms = interval_ms, limit, batch, keep_window_ms
        self.outage = outage or Outage("housekeeper", backend.url, log=log)

    async def run_once(self, force: bool = False) -> HousekeepingResult:
        """One pass, unless another process ran one within the interval (``force``: run anyway)."""
        started = time.perf_counter()   # measures the pass; nothing is judged on it
        if not force and not await self.backend.redis.set(DUE_KEY, 1, nx=True, px=self.interval_ms):
            return HousekeepingResult(skipped=True)
        result = HousekeepingResult(retention=await self.retire())
        if self.archive is not None:
            result.compaction = await self.compact()
        result.took_ms = (time.perf_counter() - started) * 1000
        return result

    async def retire(self) -> RetentionResult:
        """Retention, every namespace with a policy, every partition (bounded script calls)."""
        result = await retire_once(self.backend, self.limit)
        if result.retired:
            log.info("retention: %d runs retired (longest call %.1f ms)", result.retired, result.max_call_ms)
        return result

    async def compact(self) -> list[CompactionResult]:
        """One compaction step of every partition (needs the archive)."""
        assert self.archive is not None, "compaction needs an archive"
        results = await compact(self.backend, self.archive, self.partitions, batch=self.batch,
                                keep_window_ms=self.keep_window_ms, cache=self._snapshots)
        for c in results:
            if c.fell_back:
                log.warning("compaction of partition %d: %s", c.partition, c.fell_back)
        if any(c.trimmed for c in results):
            log.info("compaction: %d events archived, %d trimmed", sum(c.archived for c in results),
                     sum(c.trimmed for c in results))
        return results

    async def run(self) -> None:
        """Retention every interval (once for the fleet) and, with an archive, compaction
        steps back to back, forever; store faults are waited out (one log line each way).
        They run apart, so a long compaction step never holds up retention."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_running, self._retention_pass, self.interval_ms, self.outage)
            if self.archive is not None:
                tg.start_soon(keep_running, self._compaction_step, self.interval_ms, self.outage)

    async def _retention_pass(self) -> bool:
        if await self.backend.redis.set(DUE_KEY, 1, nx=True, px=self.interval_ms):
            result = await self.retire()
            return result.retired >= self.limit   # more may be due: go on at once
        return False

    async def _compaction_step(self) -> bool:
        """One step; True while a backlog is left (a partition filled its batch)."""
        return any(c.archived >= self.batch for c in await self.compact())
