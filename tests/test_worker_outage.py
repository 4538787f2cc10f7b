"""A worker's reports across a real server restart: retried with the same token, never made up.

Before: a completion that failed with "Connection refused" was taken for an
unknown action, dropped, counted as succeeded, and the action ran again after
its lease expired. Now it is retried until the lease's self-fence deadline.
"""

from __future__ import annotations

import anyio
import pytest

from lessor.core import events as ev
from lessor.leasing.config import LeaseConfig
from lessor.leasing.eventlog import EventLog
from lessor.scheduler.query import get_action
from lessor.scheduler.registry import Registry
from lessor.scheduler.submit import submit_run
from lessor.scheduler.worker import Worker, WorkerConfig
from lessor.server import EmbeddedServer
from tests.conftest import make_backend

pytestmark = pytest.mark.anyio
NS, QUEUE = "proj/development", "outage"


def gated_registry(runs: list[str], returned: anyio.Event, gate: anyio.Event) -> Registry:
    registry = Registry()

    @registry.task
    async def gated(ctx) -> str:
        runs.append(ctx.token)
        await gate.wait()
        returned.set()
        return "done"

    return registry


async def wait_until(predicate, timeout_s: float = 30.0) -> None:
    with anyio.fail_after(timeout_s):
        while not await predicate():
            await anyio.sleep(0.05)


async def run_through_outage(lease: LeaseConfig, outage_s: float, report_timeout_s: float = 60.0
                             ) -> tuple[Worker, list, list]:
    """One action; the server is killed while it runs and restarted ``outage_s`` after it returned."""
    runs: list = []
    returned, gate = anyio.Event(), anyio.Event()
    with EmbeddedServer(appendfsync="always") as server:
        backend = await make_backend(server.url)
        try:
            worker = Worker(backend, gated_registry(runs, returned, gate),
                            WorkerConfig(queue=QUEUE, namespace=NS, worker_id="w1", lease=lease, reap_interval_ms=100,
                                         report_timeout_s=report_timeout_s))
            run = await submit_run(backend, "gated", namespace=NS, queue=QUEUE)

            async def done() -> bool:
                return (await get_action(backend, NS, run.run_id, "a0")).phase.value == "succeeded"

            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                await wait_until(lambda: _true(runs))
                server.crash()                      # kill -9 while the task runs
                gate.set()
                await returned.wait()               # the completion now meets a dead server
                await anyio.sleep(outage_s)         # the outage lasts this long after it
                server.start()                      # same socket, AOF reloaded
                await wait_until(done)
                worker.stop()
            entries = await EventLog(backend).read_all()
        finally:
            await backend.redis.aclose()
    return worker, runs, entries


async def _true(items) -> bool:
    return bool(items)


async def test_a_completion_that_meets_a_restart_is_retried_with_its_token_not_rerun():
    worker, runs, entries = await run_through_outage(LeaseConfig(ttl_ms=4000, grace_ms=3000), outage_s=0.5)
    stats = worker.statistics()
    assert len(runs) == 1                                   # ran once
    assert stats.succeeded == 1 and stats.unconfirmed == 0 and stats.refused == 0
    leased = [e.event for e in entries if isinstance(e.event, ev.ActionLeased)]
    assert len(leased) == 1 and not any(isinstance(e.event, ev.LeaseExpired) for e in entries)
    assert worker.outage.outages >= 1 and worker.outage.longest_ms > 0


async def test_an_outage_longer_than_the_lease_still_commits_the_finished_work():
    """The worker stops renewing (self-fenced) during the outage, but its completion is retried: the
    server comes back on a new epoch, which gives every live lease its ttl back, so it commits."""
    worker, runs, entries = await run_through_outage(LeaseConfig(ttl_ms=1500, grace_ms=500), outage_s=3.0)
    stats = worker.statistics()
    assert worker.keeper.statistics().fenced.get("self_fenced") == 1   # the outage outlasted the lease
    assert len(runs) == 1 and stats.succeeded == 1 and stats.unconfirmed == 0
    assert not any(isinstance(e.event, ev.LeaseExpired) for e in entries)


async def test_past_the_report_timeout_a_report_is_counted_unconfirmed_and_the_action_runs_again():
    worker, runs, entries = await run_through_outage(LeaseConfig(ttl_ms=600, grace_ms=300), outage_s=2.0,
                                                     report_timeout_s=0.5)
    stats = worker.statistics()
    assert stats.unconfirmed == 1                           # not "succeeded", not "no such action"
    assert len(runs) == 2 and runs[0] < runs[1]             # it ran again, under a newer token
    assert stats.succeeded == 1
