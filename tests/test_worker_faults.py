"""Worker and keeper under the faults a review found: partial renewal failures, refused child
submissions, aborts racing a parent's child submissions."""

from __future__ import annotations

import anyio
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

import lessor
from lessor.core import events as ev
from lessor.core.clock import ManualClock
from lessor.leasing.client import LeaseClient
from lessor.leasing.codes import Code
from lessor.leasing.config import LeaseConfig
from lessor.leasing.eventlog import EventLog
from lessor.leasing.keeper import LeaseKeeper
from lessor.leasing.reaper import Reaper
from lessor.scheduler.control import abort_run
from lessor.scheduler.registry import Registry
from lessor.scheduler.submit import submit_run
from lessor.scheduler.worker import Worker, WorkerConfig

pytestmark = pytest.mark.anyio
NS = "proj/development"
CFG = LeaseConfig(ttl_ms=1000, grace_ms=500)


class OnePartitionDown(LeaseClient):
    """A client whose calls to one partition fail on the wire (a fault, not a mock of Redis)."""

    down = 0

    async def renew_partition(self, partition, leases):
        if partition == self.down:
            raise RedisConnectionError("connection reset by peer")
        return await super().renew_partition(partition, leases)


async def test_a_failed_partition_does_not_kill_the_heartbeat_of_the_others(backend):
    for i in range(12):
        await submit_run(backend, "t", namespace=NS, run_id=f"p{i}")
    client = OnePartitionDown(backend, "w1", CFG)
    leases = []
    while len(leases) < 12:
        leases += await client.acquire(NS, "default", 12)
    client.down = leases[0].partition
    codes = await client.renew(leases)
    assert {lease.ref for lease in leases if lease.partition != client.down} == set(codes)
    assert all(code is Code.OK for code in codes.values())
    keeper = LeaseKeeper(client, ManualClock())
    for lease in leases:
        keeper.hold(lease, None, 0)
    await keeper.heartbeat()  # must not raise
    assert keeper.statistics().renewed == len(codes)


async def test_a_parent_being_aborted_spawns_no_children(vbackend):
    await submit_run(vbackend, "parent", namespace=NS, run_id="rab")
    (lease,) = await LeaseClient(vbackend, "w1", CFG).acquire(NS, "default", 1)
    await abort_run(vbackend, NS, "rab")
    keys = [vbackend.keys(lease.partition).prefix]
    args = [lease.ref, lease.token, "w1", "a0.1", "child", b"", "default", 3, 0, 1000, 0, 0, ""]
    code, _ = await vbackend.scripts.submit_child(keys=keys, args=args)
    assert Code(code) is Code.ABORTED
    created = [e.event for e in await EventLog(vbackend).read_all() if isinstance(e.event, ev.ActionCreated)]
    assert [e.action for e in created] == ["a0"]


async def test_a_refused_child_submission_stops_that_attempt_not_the_worker(flushed):
    registry = Registry()

    clients = []

    @registry.task
    async def late_parent(ctx):
        # Wait until the reaper has timed this attempt out (well before the first heartbeat)...
        while (await clients[0].get_run(ctx.run_id)).root.phase.value == "running":
            await anyio.sleep(0.02)
        return await ctx.call("child")    # ...then spawn: refused, this attempt no longer owns the action

    @registry.task
    async def child(ctx):
        return "never"

    @registry.task
    async def quick(ctx):
        return "ok"

    async with lessor.connect(flushed) as client:
        clients.append(client)
        slow_heartbeat = LeaseConfig(ttl_ms=30_000, grace_ms=500)  # heartbeats every 10 s
        worker = Worker(client.backend, registry, WorkerConfig(worker_id="w-faults", lease=slow_heartbeat))
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            tg.start_soon(Reaper(client.backend, interval_ms=20).run)
            doomed = await client.submit_run("late_parent", timeout_s=0.1)
            assert (await doomed.wait(timeout_s=30)).phase.value == "timed_out"
            with anyio.fail_after(30):
                while worker.counts.get("dropped", 0) + worker.counts.get("refused", 0) == 0:
                    await anyio.sleep(0.05)
            after = await client.submit_run("quick")
            assert (await after.wait(timeout_s=30)).result == "ok"  # the worker is still serving
            refused = [e.event for e in await EventLog(client.backend).read_all()
                       if isinstance(e.event, ev.ReportRejected)]
            assert [r.kind for r in refused] == ["submit"]  # the late child submission, recorded
            worker.stop()
            tg.cancel_scope.cancel()
