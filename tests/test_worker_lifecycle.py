"""How a Worker ends: each attempt is a plain asyncio task, so run() itself stops them.

A graceful stop drains and then releases; a worker cancelled from outside
releases what still runs (bounded); an error in the worker itself (not in a
task) stops the others the same way and is raised. Waits are on the log or on
events, with generous timeouts; nothing is timed.
"""

from __future__ import annotations

import anyio
import pytest

from lessor.core import events as ev
from lessor.leasing.eventlog import EventLog
from lessor.scheduler.query import get_action
from lessor.scheduler.registry import Registry
from lessor.scheduler.submit import submit_run
from lessor.scheduler.worker import Worker, WorkerConfig
from tests.waiting import until_logged

pytestmark = pytest.mark.anyio
NS, QUEUE = "proj/development", "life"


def sleeper(started: anyio.Event) -> Registry:
    r = Registry()

    @r.task
    async def sleep(ctx) -> None:
        started.set()
        await anyio.sleep(3600)

    return r


def config(**kw) -> WorkerConfig:
    return WorkerConfig(queue=QUEUE, namespace=NS, worker_id="w-life", concurrency=2, reap=False, **kw)


async def released(backend, run_id: str) -> bool:
    events = [e.event for e in await EventLog(backend).read_all()]
    return any(isinstance(e, ev.ActionRequeued) and e.reason == "released" and e.run == run_id for e in events)


async def test_a_graceful_stop_drains_then_releases_what_still_runs(backend):
    started = anyio.Event()
    worker = Worker(backend, sleeper(started), config(drain_s=0.2))
    await submit_run(backend, "sleep", namespace=NS, queue=QUEUE, run_id="r-drain")
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await started.wait()
            worker.stop()
    assert (await get_action(backend, NS, "r-drain", "a0")).phase.value == "queued"   # back, not lost
    assert await released(backend, "r-drain")
    assert worker.statistics().released == 1 and worker.statistics().running == 0


async def test_a_worker_cancelled_from_outside_releases_what_still_runs(backend):
    started = anyio.Event()
    worker = Worker(backend, sleeper(started), config())
    await submit_run(backend, "sleep", namespace=NS, queue=QUEUE, run_id="r-cancel")
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await started.wait()
            tg.cancel_scope.cancel()    # not stop(): the worker is torn down
    await until_logged(backend, lambda: released(backend, "r-cancel"), "the lease to be released", 15)
    assert (await get_action(backend, NS, "r-cancel", "a0")).phase.value == "queued"


async def test_an_error_in_the_worker_itself_stops_it_and_is_raised(backend):
    ran: list = []
    r = Registry()

    @r.task
    async def note(ctx) -> None:
        ran.append(ctx.run_id)

    def broken_evidence(record: dict) -> None:
        if record["event"] == "end":
            raise RuntimeError("the evidence hook broke")

    worker = Worker(backend, r, config(), on_attempt=broken_evidence)
    await submit_run(backend, "note", namespace=NS, queue=QUEUE, run_id="r-crash")
    with anyio.fail_after(30), pytest.raises(RuntimeError, match="evidence hook broke"):
        await worker.run()
    assert ran == ["r-crash"] and worker.statistics().running == 0


async def test_a_renewal_racing_its_attempt_s_own_report_is_not_sent_and_fences_nothing(backend):
    """Once an attempt's work is over its report is on the way: a renewal sent then would be
    refused as soon as the report lands. It is left out while the report is young, and if it
    goes out later anyway (a slow report), a refusal fences nothing: the report tells."""
    from lessor.core.clock import ManualClock
    from lessor.leasing.client import LeaseClient
    from lessor.leasing.config import LeaseConfig
    from lessor.leasing.keeper import LeaseKeeper

    await submit_run(backend, "t", namespace=NS, queue=QUEUE, run_id="r-race")
    client = LeaseClient(backend, "w-race", LeaseConfig(ttl_ms=3000, grace_ms=1000))
    (lease,) = await client.acquire(NS, QUEUE, 1)
    clock = ManualClock()
    keeper = LeaseKeeper(client, clock)
    held = keeper.hold(lease, None, clock.now_ms())
    keeper.work_ended(held)
    await client.complete(lease, b"")              # the report lands first
    assert keeper.begin_heartbeat()[0] == []        # a young report: no renewal
    clock.advance(client.config.heartbeat_ms)
    await keeper.heartbeat()                        # a report that old: renewed, and refused
    assert keeper.statistics().renew_calls == 1 and held.fenced is None and keeper.statistics().fenced == {}
