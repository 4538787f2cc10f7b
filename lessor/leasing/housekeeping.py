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
from lessor.leasing.compaction import CompactionResult, compact
from lessor.leasing.outage import Outage, is_transient
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
                 outage: Outage | None = None) -> None:
        if interval_ms <= 0 or limit <= 0 or batch <= 0 or keep_window_ms < 0:
            raise ValueError("interval_ms, limit and batch must be > 0, keep_window_ms >= 0")
        self.backend, self.archive = backend, archive
        self.interval_ms, self.limit, self.batch, self.keep_window_ms = interval_ms, limit, batch, keep_window_ms
        self.outage = outage or Outage("housekeeper", backend.url, log=log)

    async def run_once(self, force: bool = False) -> HousekeepingResult:
        """One pass, unless another process ran one within the interval (``force``: run anyway)."""
        started = time.perf_counter()   # measures the pass; nothing is judged on it
        if not force and not await self.backend.redis.set(DUE_KEY, 1, nx=True, px=self.interval_ms):
            return HousekeepingResult(skipped=True)
        result = HousekeepingResult(retention=await retire_once(self.backend, self.limit))
        if self.archive is not None:
            result.compaction = await compact(self.backend, self.archive, batch=self.batch,
                                              keep_window_ms=self.keep_window_ms)
        result.took_ms = (time.perf_counter() - started) * 1000
        if result.retention.retired or any(c.trimmed for c in result.compaction):
            log.info("housekeeping: %d runs retired, %d events archived, %d trimmed (%.0f ms)",
                     result.retention.retired, sum(c.archived for c in result.compaction),
                     sum(c.trimmed for c in result.compaction), result.took_ms)
        return result

    async def run(self) -> None:
        """Pass after pass, forever; store faults are waited out (one log line each way)."""
        while True:
            try:
                await self.run_once()
                self.outage.ok()
                delay_ms = self.interval_ms
            except Exception as exc:  # transient store faults are waited out; the rest are bugs to see
                if not is_transient(exc):
                    raise
                delay_ms = self.outage.failed(exc)
            await anyio.sleep(delay_ms / 1000)
