"""A schedule pass in its own process, for tests/test_schedule_faults.py, on the virtual clock.

    python -m tests.ticking_process URL ID worker|reaper TTL_MS GRACE_MS

``worker``: a real ``Worker`` (its reaper, housekeeper and Ticker; it idles on a queue nobody
submits to). ``reaper``: what ``lessor reaper`` runs (Reaper, Housekeeper, Ticker). Both judge
time by the server's virtual clock, which the test moves; the ticker lease's ttl and grace are
given in virtual ms. Passes run every 20 ms of wall time, so 10 virtual days take seconds.
"""

from __future__ import annotations

import sys

import anyio

from lessor.leasing.backend import open_backend
from lessor.leasing.housekeeping import Housekeeper
from lessor.leasing.reaper import Reaper
from lessor.leasing.scripts import ClockMode
from lessor.scheduler.registry import Registry
from lessor.scheduler.schedules import Ticker
from lessor.scheduler.worker import Worker, WorkerConfig

PASS_MS = 20


async def main(url: str, worker_id: str, kind: str, ttl_ms: int, grace_ms: int) -> None:
    async with open_backend(url, clock=ClockMode.VIRTUAL, wait_for_server=True) as backend:
        if kind == "worker":
            worker = Worker(backend, Registry(), WorkerConfig(queue="nothing-here", worker_id=worker_id,
                                                              tick_interval_ms=PASS_MS, tune_gc=False))
            worker.ticker.ttl_ms, worker.ticker.grace_ms = ttl_ms, grace_ms
            print(f"{worker_id}: worker ticking", flush=True)
            await worker.run()
            return
        ticker = Ticker(backend, worker_id, ttl_ms=ttl_ms, grace_ms=grace_ms)
        print(f"{worker_id}: reaper ticking", flush=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(Housekeeper(backend).run)
            tg.start_soon(ticker.run, PASS_MS)
            await Reaper(backend, interval_ms=100, shared=True).run()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
